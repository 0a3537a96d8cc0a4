"""The slmquant loglikelihood backend (llmc_slm.backend) against lm-eval's HFLM, request by request.

A tiny random Llama with the embedded SmolLM2 tokenizer, float32: every log-likelihood within 1e-4 of
HFLM's and every is_greedy the same, for shared contexts, contexts of different lengths, single- and
multi-token continuations, a context ending with a space and an empty context; the same through the
whole-sequence fallback (a per-tensor dynamic activation quantizer); and a HarnessTask run on PIQA with
eval.backend slmquant and hf giving the same per-item accuracy.
"""

from __future__ import annotations

import os
import types

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from llmc.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


def tiny_model(tok, dtype=torch.float32, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(dtype).eval()
    return model


def requests(pairs):
    from lm_eval.api.instance import Instance
    return [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]


PAIRS = [
    # a multiple-choice item: one context, choices of 1 and several tokens
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("Question: What is the capital of France?\nAnswer:", " London"),
    ("Question: What is the capital of France?\nAnswer:", " the city of lights on the Seine"),
    ("Question: What is the capital of France?\nAnswer:", " Paris"),          # a duplicate request
    # another context, of a different length
    ("The cat sat on the", " mat"),
    ("The cat sat on the", " hat and then went to sleep for a long while"),
    # a context ending with a space (moved onto the continuation by HFLM's _encode_pair)
    ("Goal: boil water. Solution: ", "use a kettle"),
    ("Goal: boil water. Solution: ", "use a fridge"),
    # single-token continuations only (MMLU letters)
    ("A. one\nB. two\nC. three\nD. four\nAnswer:", " A"),
    ("A. one\nB. two\nC. three\nD. four\nAnswer:", " B"),
    ("A. one\nB. two\nC. three\nD. four\nAnswer:", " C"),
    ("A. one\nB. two\nC. three\nD. four\nAnswer:", " D"),
    # an empty context (the prefix token)
    ("", "Hello world"),
    # a long context
    (" ".join(["word"] * 300) + ".", " The end"),
    # contexts of different items sharing a prefix (one token tree), one a prefix of another
    ("Question: What is the capital of Italy?\nAnswer:", " Rome"),
    ("Question: What is the capital of Italy?\nAnswer:", " Milan, in the north"),
    ("Question: What is the capital of Spain?\nAnswer:", " Madrid"),
    ("The cat sat on the mat", ", purring"),
    ("The cat sat on the mat and slept", " well"),
]


def hf_scores(model, tok, pairs, bs=1):
    from llmc_slm.harness import make_lm
    return make_lm(types.SimpleNamespace(model=model, tokenizer=tok), bs, backend="hf").loglikelihood(
        requests(pairs), disable_tqdm=True)


def assert_same(ours, ref, tol=1e-4):
    assert len(ours) == len(ref)
    for (a, ga), (b, gb) in zip(ours, ref):
        assert abs(a - b) < tol, (a, b)
        assert ga == gb


def greedy_pairs(model, tok, context="The cat sat on the", steps=3):
    """(context, the model's greedy continuation of 1 and of ``steps`` tokens), kept where the text
    re-encodes to the same tokens: requests whose is_greedy is True."""
    ids = tok.encode(context)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    n = len(tok.encode(context))
    out = []
    for k in (1, steps):
        cont = tok.decode(ids[n:n + k])
        if tok.encode(context + cont)[n:] == ids[n:n + k]:
            out.append((context, cont))
    return out


@pytest.mark.parametrize("segments", [True, False], ids=["segments", "rows"])
@pytest.mark.parametrize("batch_size,max_batch_tokens,row_tokens,share", [
    (8, 2048, 256, True), (2, 64, 1, True), (1, 1, 1, True), (4, 4096, 4096, True), (8, 2048, 256, False)])
def test_packed_equals_hflm_float32(tokenizer, batch_size, max_batch_tokens, row_tokens, share, segments):
    from llmc_slm.backend import PrefixSharingLM
    model = tiny_model(tokenizer)
    pairs = PAIRS + greedy_pairs(model, tokenizer)
    lm = PrefixSharingLM(model, tokenizer, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                         row_tokens=row_tokens, share_prefixes=share, segments=segments)
    assert lm.whole_reason is None and lm.backend_name == "slmquant"
    assert lm._segmented() is segments
    ours = lm.loglikelihood(requests(pairs), disable_tqdm=True)
    ref = hf_scores(model, tokenizer, pairs, bs=4)
    assert_same(ours, ref)
    assert any(g for _, g in ref)      # the greedy flag is exercised both ways
    assert not all(g for _, g in ref)


def test_shared_prefixes_are_computed_once(tokenizer):
    """Contexts sharing a prefix become one token tree: every shared token is laid out once (the packed
    length is the radix tree's token count plus the continuations' input tokens), a context that is a
    prefix of another is a node with its own continuations, and the scores do not change."""
    from llmc_slm.backend import PrefixSharingLM, _Group, _tree, _units
    ctxs = [[5, 6, 7, 8], [5, 6, 7, 9, 10], [5, 6], [5, 6, 7, 9, 11, 12], [20, 21]]
    groups = [_Group(c, [[1, 2]], [[i]]) for i, c in enumerate(ctxs)]
    units = _units(groups, 1000, share=True)
    assert [len(u.groups) for u in units] == [4, 1]
    tree = units[0].tree()
    assert tree.tokens == [5, 6] and [g.ctx for g in tree.ends] == [[5, 6]]
    assert [c.tokens for c in tree.children] == [[7]]
    assert [c.tokens for c in tree.children[0].children] == [[8], [9]]
    assert [c.tokens for c in tree.children[0].children[1].children] == [[10], [11, 12]]

    def tree_tokens(node):
        return len(node.tokens) + sum(tree_tokens(c) for c in node.children)
    assert units[0].length == tree_tokens(tree) + 4 == 8 + 4   # 4 continuations of one input token each
    assert [u.length for u in _units(groups, 1000, share=False)] == [len(c) + 1 for c in sorted(ctxs)]
    assert [len(u.groups) for u in _units(groups, 9, share=True)] == [3, 1, 1]   # a row's worth
    # a long shared prefix (a few-shot block) is shared beyond a row, up to twice its length; a short one not
    long = [_Group(list(range(100, 110)) + [k], [[1, 2]], [[k]]) for k in range(3)]
    short = [_Group([100, k], [[1, 2]], [[k]]) for k in range(3)]
    assert [len(u.groups) for u in _units(long, 4, share=True)] == [3]
    assert [len(u.groups) for u in _units(short, 4, share=True)] == [1, 1, 1]

    model = tiny_model(tokenizer)
    lm = PrefixSharingLM(model, tokenizer)
    flat = PrefixSharingLM(model, tokenizer, share_prefixes=False)
    enc = [((c, k), *lm._encode_pair(c, k)) for c, k in PAIRS[-5:]]
    packed = sum(sum(u.length for u in row) for row in lm._rows(lm_groups(lm, enc), 256))
    unshared = sum(sum(u.length for u in row) for row in flat._rows(lm_groups(flat, enc), 256))
    assert packed < unshared
    assert_same(lm._loglikelihood_tokens(enc), flat._loglikelihood_tokens(enc))


def lm_groups(lm, enc):
    """The backend's groups of encoded requests (as ``_loglikelihood_tokens`` builds them)."""
    from llmc_slm.backend import _Group
    groups = {}
    for i, (_, ctx, cont) in enumerate(enc):
        g = groups.setdefault(tuple(ctx), _Group(list(ctx)))
        g.conts.append(list(cont))
        g.owners.append([i])
    return list(groups.values())


def test_tokenization_is_hflms(tokenizer):
    from lm_eval.models.huggingface import HFLM

    from llmc_slm.backend import PrefixSharingLM
    model = tiny_model(tokenizer)
    ours = PrefixSharingLM(model, tokenizer)
    ref = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=1)
    for ctx, cont in PAIRS:
        if ctx:
            assert ours._encode_pair(ctx, cont) == ref._encode_pair(ctx, cont)
    assert ours.prefix_token_id == ref.prefix_token_id and ours.max_length == ref.max_length


def test_eager_attention_too(tokenizer):
    from llmc_slm.backend import PrefixSharingLM
    model = tiny_model(tokenizer)
    model.set_attn_implementation("eager")
    lm = PrefixSharingLM(model, tokenizer)
    assert not lm._segmented()           # eager is not in the attention registry: padded rows under one mask
    ours = lm.loglikelihood(requests(PAIRS), disable_tqdm=True)
    assert_same(ours, hf_scores(model, tokenizer, PAIRS))


def _fake_quant(model, granularity, static=False):
    from llmc.quant.fake_linear import replace_linears
    from llmc.quant.quantizer import Quantizer
    aq = Quantizer(bit=8, symmetric=True, granularity=granularity, static=static)
    names = [n for n, m in model.model.named_modules() if isinstance(m, torch.nn.Linear)]
    replace_linears(model.model, {n: (Quantizer(bit=8, granularity="per_channel"), aq) for n in names})
    return model


def test_per_token_fake_quant_is_packed(tokenizer):
    from llmc_slm.backend import PrefixSharingLM
    model = _fake_quant(tiny_model(tokenizer), "per_token")
    lm = PrefixSharingLM(model, tokenizer, batch_size=4)
    assert lm.whole_reason is None
    assert_same(lm.loglikelihood(requests(PAIRS), disable_tqdm=True), hf_scores(model, tokenizer, PAIRS))


def test_per_tensor_dynamic_falls_back_to_whole_sequences(tokenizer):
    from llmc_slm.backend import PrefixSharingLM, sequence_dependent_quantizers
    model = _fake_quant(tiny_model(tokenizer), "per_tensor")
    assert sequence_dependent_quantizers(model)
    lm = PrefixSharingLM(model, tokenizer)
    assert lm.backend_name == "slmquant (whole sequences: per-tensor dynamic activations)"
    # HFLM at batch size 1: no padding enters the per-tensor ranges either
    assert_same(lm.loglikelihood(requests(PAIRS), disable_tqdm=True), hf_scores(model, tokenizer, PAIRS, bs=1))
    # packing would have changed the numbers: the fallback is needed
    forced = PrefixSharingLM(model, tokenizer, whole_sequences=False).loglikelihood(requests(PAIRS),
                                                                                      disable_tqdm=True)
    ref = hf_scores(model, tokenizer, PAIRS, bs=1)
    assert max(abs(a - b) for (a, _), (b, _) in zip(forced, ref)) > 1e-4


def test_static_per_tensor_is_packed(tokenizer):
    from llmc_slm.backend import whole_sequence_reason
    model = _fake_quant(tiny_model(tokenizer), "per_token")
    assert whole_sequence_reason(model) is None
    for m in model.modules():
        if hasattr(m, "act_quantizer") and m.act_quantizer is not None:
            m.act_quantizer.granularity, m.act_quantizer.static = "per_tensor", True
    assert whole_sequence_reason(model) is None


def test_harness_task_same_items_with_both_backends(tokenizer):
    from llmc.config import Config
    from llmc.data.sources import find_dataset
    from llmc_slm.harness import HarnessTask, make_lm
    from llmc_slm.tasks import lmeval
    try:
        find_dataset("piqa")
    except UserError:
        pytest.skip("no piqa data found")
    adapter = types.SimpleNamespace(model=tiny_model(tokenizer), tokenizer=tokenizer)
    outs, items = {}, {}
    for backend in ("slmquant", "hf"):
        cfg = Config()
        cfg.eval.limit, cfg.eval.bs, cfg.eval.backend = 8, 4, backend
        task = HarnessTask("piqa", cfg)
        outs[backend] = task.run(adapter)
        assert outs[backend]["backend"] == backend
        # per item: the harness's logged samples
        res = lmeval.run(make_lm(adapter, 4, backend), lmeval.build_task_set("piqa", task.data).task_dict(),
                         limit=8, log_samples=True)
        items[backend] = [(s["doc_id"], s["acc"], s["acc_norm"]) for s in res["samples"]["piqa"]]
    a, b = outs["slmquant"], outs["hf"]
    assert a["n"] == b["n"] == 8
    assert a["acc"] == b["acc"] and a["acc_norm"] == b["acc_norm"]
    assert items["slmquant"] == items["hf"] and len(items["hf"]) == 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_flag_is_hflms_argmax_with_ties(tokenizer, dtype):
    """is_greedy per token is HFLM's ``log_softmax(logits).argmax(-1) == target`` (argmax: the first
    maximum), ties included: the amax shortcut must not call a target greedy when an earlier token ties."""
    from llmc_slm.backend import PrefixSharingLM
    lm = PrefixSharingLM(tiny_model(tokenizer), tokenizer)
    torch.manual_seed(0)
    logits = torch.randn(6, 50).to(dtype)
    logits[1, 7] = logits[1, 30] = 9.0        # a tie: token 7 comes first
    logits[2, 3] = logits[2, 4] = 9.0
    logits[3, 0] = 9.0
    targets = [int(logits[0].argmax()), 30, 3, 0, 11, 7]
    logits[5, 7] = logits[5, 2] = 9.0         # target 7 ties with the earlier token 2
    logp, hit = lm._token_scores(logits, targets)
    ref = torch.log_softmax(logits, dim=-1).argmax(dim=-1) == torch.tensor(targets)
    assert hit.tolist() == ref.tolist() == [True, False, True, True, False, False]
    assert torch.equal(logp, torch.log_softmax(logits, dim=-1)[torch.arange(6), torch.tensor(targets)])


def test_check_tasks_backends_cli(tiny_model_dir, tmp_path):
    """``tools/check_tasks.py --backends`` on a tiny model: float32 passes with every request the same, and
    HFLM at another batch size (``--hf-control-bs``) gives its own answers again; bfloat16 with ``--fp32-reference`` also counts each backend's answers that differ from float32's."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from llmc.data.sources import find_dataset
    try:
        find_dataset("piqa")
    except UserError:
        pytest.skip("no piqa data found")
    tool = Path(__file__).resolve().parents[1] / "tools" / "check_tasks.py"
    base = [sys.executable, str(tool), "--backends", "--limit", "6", "--tasks", "piqa", "--model", str(tiny_model_dir)]
    out32 = tmp_path / "fp32.json"
    proc = subprocess.run(base + ["--dtype", "float32", "--hf-control-bs", "1", "--json", str(out32)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out32.read_text())
    piqa = report["tasks"]["piqa"]
    assert piqa["ok"] and piqa["items"] == piqa["same_requests"] == 6 and piqa["max_abs_loglik_diff"] < 1e-4
    assert "vs_fp32" not in piqa
    # HFLM against itself at another batch size: the same answers in float32
    assert report["hf_control_batch_size"] == 1 and "HFLM batch 16 vs 1" in proc.stdout
    control = piqa["hf_control"]
    assert control["items"] == 6 and control["max_abs_loglik_diff"] < 1e-4 and control["disagree_acc"] == 0
    out16 = tmp_path / "bf16.json"
    proc = subprocess.run(base + ["--dtype", "bfloat16", "--fp32-reference", "--json", str(out16)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out16.read_text())
    assert report["dtype"] == "bfloat16" and report["softmax_dtype"] is None
    ref = report["tasks"]["piqa"]["vs_fp32"]
    assert set(ref) == {"slmquant", "hf"} and all(v["items"] == 6 for v in ref.values())
    assert "answers differ from float32" in proc.stdout


def test_kv_quant_attention_is_segmented_too(tokenizer):
    """A model on the ``llmc_kvquant`` attention (per-token K/V fake-quant, an online Hadamard on Q and K)
    is scored per segment, with HFLM's numbers, and keeps its attention implementation afterwards."""
    import llmc.quant.kvcache  # noqa: F401  (registers llmc_kvquant)
    from llmc.quant.quantizer import Quantizer
    from llmc_slm.backend import PrefixSharingLM
    model = tiny_model(tokenizer)
    for layer in model.model.layers:
        layer.self_attn.k_quantizer = Quantizer(bit=4, symmetric=False, granularity="per_token")
        layer.self_attn.v_quantizer = Quantizer(bit=4, symmetric=False, granularity="per_token")
        layer.self_attn.query_key_transform = lambda x: torch.flip(x, dims=(-1,))
    model.set_attn_implementation("llmc_kvquant")
    lm = PrefixSharingLM(model, tokenizer)
    assert lm.whole_reason is None and lm._segmented()
    ours = lm.loglikelihood(requests(PAIRS), disable_tqdm=True)
    assert model.config._attn_implementation == "llmc_kvquant"
    ref = hf_scores(model, tokenizer, PAIRS)
    assert_same(ours, ref)
    plain = hf_scores(tiny_model(tokenizer), tokenizer, PAIRS)       # the quantizers do change the numbers
    assert max(abs(a - b) for (a, _), (b, _) in zip(ref, plain)) > 1e-3


@pytest.mark.parametrize("segments", [True, False], ids=["segments", "rows"])
def test_sliding_window_model_equals_hflm(tokenizer, segments):
    """Gemma-3's sliding-window layers (a window of 8 tokens here, shorter than most requests): requests
    longer than the window are scored whole, the others packed; every score is HFLM's. Without the rule the
    tree mask would let the sliding layers see keys beyond their window."""
    from transformers import Gemma3TextConfig, Gemma3ForCausalLM
    from llmc_slm.backend import PrefixSharingLM
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                              sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                              max_position_embeddings=2048)
    model = Gemma3ForCausalLM(config).eval()
    lm = PrefixSharingLM(model, tokenizer, batch_size=8, segments=segments)
    assert lm.window == 8 and lm.whole_reason is None
    ref = hf_scores(model, tokenizer, PAIRS, bs=1)
    assert_same(lm.loglikelihood(requests(PAIRS), disable_tqdm=True), ref)
    lm.window = None                                             # packing everything is not exact here
    ours = lm.loglikelihood(requests(PAIRS), disable_tqdm=True)
    assert max(abs(a - b) for (a, _), (b, _) in zip(ours, ref)) > 1e-3
