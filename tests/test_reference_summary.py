"""The summary of the float reference's distributions (llmc.eval.reference_summary): a run that reads it gives the
same NLLs, reference NLLs and top-1 agreement, bit for bit, and the same KL within float32 rounding, without the
reference's output layer; it is used only where its identity holds (float32, the reference's own output layer)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import tiny_hf_model  # noqa: E402
from llmc.eval.perplexity import perplexity, window_ids  # noqa: E402
from llmc.eval.reference import FloatReference  # noqa: E402

EXACT = ("window_nll", "ref_window_nll", "window_top1", "window_tokens")


def _windows(n=5, seq=16, seed=3):
    return window_ids(torch.randint(0, 256, (n * seq,), generator=torch.Generator().manual_seed(seed)), seq)


def _pair(family="llama", dtype=torch.float32, head_too=False, scale=0.05):
    """A float model and a copy whose transformer blocks (and, with ``head_too``, every parameter) are perturbed:
    a 'quantized' model that keeps the reference's output layer, as the methods without R1 rotation do."""
    ref_model = tiny_hf_model(family).to(dtype)
    model = tiny_hf_model(family).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if head_too or ".layers." in name:
                p.add_(scale * torch.randn_like(p))
    return FloatReference(ref_model), model


def _run(model, ref, windows, cache, summary=True):
    with ref.on("cpu") as r:
        return perplexity(model, windows, bs=2, progress=False, reference=r, reference_cache=cache,
                          reference_summary=summary)


def _summary(out):
    return out["vs_float"]["reference_cache"]["summary"]


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_a_read_summary_gives_the_same_figures_without_the_reference_head(tmp_path, family):
    ref, model = _pair(family)
    windows = _windows()
    plain = _run(model, ref, windows, None)
    first = _run(model, ref, windows, tmp_path)
    assert _summary(first)["status"] == "written"
    assert first["per_item"] == plain["per_item"]             # the building run computes the KL directly
    calls = []
    handle = ref.model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    try:
        second = _run(model, ref, windows, tmp_path)
    finally:
        handle.remove()
    info = _summary(second)
    assert info["status"] == "hit" and "LSE" in info["kl"] and calls == []
    for key in EXACT:
        assert second["per_item"][key] == plain["per_item"][key], key
    want, got = plain["per_item"]["window_kl"], second["per_item"]["window_kl"]
    assert min(want) > 1e-3                                    # a real distortion, not a trivially zero KL
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5 * 15)
    assert second["vs_float"]["kld"] == pytest.approx(plain["vs_float"]["kld"], rel=1e-4)
    assert second["vs_float"]["top1_agreement"] == plain["vs_float"]["top1_agreement"]
    assert second["ppl"] == plain["ppl"]
    assert len(list(tmp_path.glob("reference_summary_*.safetensors"))) == 1 and not list(tmp_path.glob("*.tmp*"))


def test_the_identity_gives_zero_for_the_reference_itself(tmp_path):
    ref, _ = _pair()
    model = tiny_hf_model("llama")
    windows = _windows()
    _run(model, ref, windows, tmp_path)
    out = _run(model, ref, windows, tmp_path)
    assert _summary(out)["status"] == "hit"
    assert out["per_item"]["window_kl"] == [0.0] * windows.shape[0]
    assert out["vs_float"]["top1_agreement"] == 1.0 and out["vs_float"]["delta_log_ppl"] == 0.0


@pytest.mark.parametrize("case,reason", [
    ("head", "differs from the reference's"),
    ("bfloat16", "bfloat16 logits"),
    ("subclass", "not a plain nn.Linear"),
])
def test_it_is_not_used_where_the_identity_does_not_hold(tmp_path, case, reason):
    ref, model = _pair(head_too=case == "head", dtype=torch.bfloat16 if case == "bfloat16" else torch.float32)
    if case == "subclass":      # a quantized output layer keeps its float weight but changes the logits
        class QuantizedHead(torch.nn.Linear):
            pass
        head = model.get_output_embeddings()
        q = QuantizedHead(head.in_features, head.out_features, bias=False)
        q.weight = head.weight
        model.set_output_embeddings(q)
    windows = _windows()
    plain = _run(model, ref, windows, None)
    for _ in range(2):
        out = _run(model, ref, windows, tmp_path)
        info = _summary(out)
        assert info["status"] == "unused" and reason in info["reason"]
        assert out["per_item"] == plain["per_item"]            # the direct computation, bit for bit
    assert not list(tmp_path.glob("reference_summary_*"))


def test_a_damaged_summary_is_rebuilt_and_it_can_be_turned_off(tmp_path):
    ref, model = _pair()
    windows = _windows()
    plain = _run(model, ref, windows, None)
    _run(model, ref, windows, tmp_path)
    path = next(tmp_path.glob("reference_summary_*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    out = _run(model, ref, windows, tmp_path)
    info = _summary(out)
    assert info["status"] == "written" and "rebuilt" in info["reason"]
    assert out["per_item"] == plain["per_item"]
    assert _summary(_run(model, ref, windows, tmp_path))["status"] == "hit"
    off = _run(model, ref, windows, tmp_path, summary=False)
    assert "summary" not in off["vs_float"]["reference_cache"] and off["per_item"] == plain["per_item"]


def test_a_summary_for_other_windows_is_not_used(tmp_path):
    ref, model = _pair()
    windows = _windows()
    _run(model, ref, windows, tmp_path)
    out = _run(model, ref, windows[:4], tmp_path)                 # another limit: its own hidden cache and summary
    assert out["vs_float"]["reference_cache"]["status"] == "written" and _summary(out)["status"] == "written"
    assert len(list(tmp_path.glob("reference_summary_*.safetensors"))) == 2
