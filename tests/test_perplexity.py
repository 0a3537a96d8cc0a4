"""WikiText-2 perplexity: the windowing convention and the value, against hand computations."""

import math

import pytest

import torch
from torch import nn
import torch.nn.functional as F

from conftest import tiny_hf_model
from llmc.data.wikitext2 import read_rows
from llmc.eval.perplexity import perplexity, window_ids


class FixedDistribution(nn.Module):
    """A 'model' whose next-token distribution is always the same: its perplexity is known in closed form."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, input_ids, use_cache=False):
        class Out:
            pass
        out = Out()
        out.logits = self.logits.expand(*input_ids.shape, -1)
        return out


def test_windows_drop_the_tail():
    w = window_ids(torch.arange(10), 3)
    assert w.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_uniform_model_has_perplexity_vocab_size():
    windows = window_ids(torch.randint(0, 50, (1000,)), 100)
    result = perplexity(FixedDistribution(torch.zeros(50)), windows, progress=False)
    assert abs(result["ppl"] - 50.0) < 1e-3
    assert result["tokens"] == 10 * 99 and result["windows"] == 10


def test_fixed_distribution_by_hand():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    ids = torch.tensor([0, 0, 1, 3, 2, 0, 1, 1, 0])          # 3 windows of 3; targets are positions 1, 2
    windows = window_ids(ids, 3)
    targets = [0, 1, 2, 0, 1, 0]                             # the second and third token of each window
    by_hand = math.exp(-sum(math.log(probs[t]) for t in targets) / len(targets))
    result = perplexity(FixedDistribution(probs.log()), windows, bs=2, progress=False)
    assert abs(result["ppl"] - by_hand) < 1e-4


def test_tiny_model_against_token_by_token_prefix_scoring():
    """Independent computation: each token scored from a fresh forward pass over its prefix only."""
    model = tiny_hf_model("llama")
    ids = torch.randint(0, 256, (3 * 8 + 5,), generator=torch.Generator().manual_seed(1))
    windows = window_ids(ids, 8)
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            for t in range(1, 8):
                logits = model(input_ids=w[:t].unsqueeze(0)).logits[0, -1]
                nll -= torch.log_softmax(logits.double(), -1)[w[t]].item()
                count += 1
    expected = math.exp(nll / count)
    result = perplexity(model, windows, bs=2, progress=False)
    assert abs(result["ppl"] - expected) / expected < 1e-4


def test_rows_keep_newlines_and_blank_lines_become_empty(tmp_path):
    f = tmp_path / "wiki.test.raw"
    f.write_text(" \n = Title = \n \n text one \n")
    rows = read_rows(f)
    assert rows == ["", " = Title = \n", "", " text one \n"]
    assert "\n\n".join(rows) == "\n\n = Title = \n" + "\n\n" + "\n\n" + " text one \n"



def test_logits_budget_splits_the_batch_without_changing_the_result():
    model = tiny_hf_model("llama")
    ids = torch.randint(0, 256, (6 * 16,), generator=torch.Generator().manual_seed(2))
    windows = window_ids(ids, 16)
    whole = perplexity(model, windows, bs=6, progress=False)
    per_window = 16 * model.config.vocab_size * (4 + 4)          # float32 logits + float32 log-softmax
    split = perplexity(model, windows, bs=6, progress=False, max_logits_bytes=2 * per_window)
    assert whole["micro_batch"] == 6 and split["micro_batch"] == 2
    assert split["ppl"] == pytest.approx(whole["ppl"], rel=1e-6)
    assert split["tokens"] == whole["tokens"] == 6 * 15
    tiny_budget = perplexity(model, windows, bs=6, progress=False, max_logits_bytes=1)
    assert tiny_budget["micro_batch"] == 1 and tiny_budget["ppl"] == pytest.approx(whole["ppl"], rel=1e-6)


def _whole_window_stats(logits, target, ref_logits):
    """The comparison as it was computed over whole windows (before token_stats): the oracle of the chunked one."""
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                          reduction="none").view(target.shape).sum(1)
    lp = F.log_softmax(logits.float(), dim=-1)
    ref = F.log_softmax(ref_logits.float(), dim=-1)
    return {"nll": nll.tolist(), "ref_nll": (-ref.gather(-1, target[..., None]).squeeze(-1)).sum(1).tolist(),
            "top1": (lp.argmax(-1) == ref.argmax(-1)).sum(1).tolist(),
            "kl": F.kl_div(lp, ref, reduction="none", log_target=True).sum(-1).sum(1).tolist()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T,vocab,chunk", [(300, 49152, 128), (77, 1000, 16), (5, 300, 128),
                                           (300, 49152, None), (23, 262144, None)])
def test_chunked_token_stats_are_bit_identical_to_whole_windows(dtype, threads, T, vocab, chunk):
    from llmc.eval.perplexity import token_stats
    g = torch.Generator().manual_seed(T)
    logits = (3 * torch.randn(2, T, vocab, generator=g)).to(dtype)
    ref_logits = (logits.float() + 0.3 * torch.randn(2, T, vocab, generator=g)).to(dtype)
    target = torch.randint(0, vocab, (2, T), generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = token_stats(logits, target, ref_logits, chunk=chunk)
        want = _whole_window_stats(logits, target, ref_logits)
    finally:
        torch.set_num_threads(before)
    assert {k: got[k].sum(1).tolist() for k in want} == want        # exactly, not approximately
    assert torch.equal(token_stats(logits, target, chunk=chunk)["nll"], got["nll"])
    assert 0 < sum(want["top1"]) < 2 * T and min(want["kl"]) > 0


def test_token_chunk_keeps_a_chunk_of_float32_log_probs_near_4_mib():
    from llmc.eval.perplexity import CHUNK_BYTES, TOKEN_CHUNK, token_chunk
    assert token_chunk(1, 49152) == 21                 # SmolLM2: 21 x 49,152 x 4 B <= 4 MiB
    assert token_chunk(2, 49152) == 10
    assert token_chunk(1, 262144) == 4                 # Gemma-3: the floor, exactly 4 MiB
    assert token_chunk(2, 262144) == 4                 # the floor holds where one token row is already over
    assert token_chunk(1, 300) == TOKEN_CHUNK          # small vocabularies keep the old 64
    for bs, vocab in [(1, 49152), (1, 151936), (3, 1000)]:
        c = token_chunk(bs, vocab)
        assert c == TOKEN_CHUNK or c * bs * vocab * 4 <= CHUNK_BYTES < (c + 1) * bs * vocab * 4
