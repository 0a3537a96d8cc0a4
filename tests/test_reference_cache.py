"""The float reference's cached final hidden states (llmc.eval.reference_cache): the paired WikiText-2 figures
are bit-identical with and without the cache, a key mismatch or a damaged file recomputes, and the wiring
through the evaluator (eval.reference_cache, <save.save_path>/.reference_cache)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import tiny_hf_model  # noqa: E402
from llmc.eval.perplexity import perplexity, window_ids  # noqa: E402
from llmc.eval.reference import FloatReference  # noqa: E402
from llmc.eval.reference_cache import ReferenceOutputs, model_digest  # noqa: E402


def _windows(n=5, seq=16, seed=3):
    return window_ids(torch.randint(0, 256, (n * seq,), generator=torch.Generator().manual_seed(seed)), seq)


def _pair(dtype=torch.float32, family="llama", **kw):
    """A float model and a perturbed copy of it (the 'quantized' model)."""
    ref_model = tiny_hf_model(family, **kw).to(dtype)
    model = tiny_hf_model(family, **kw).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return FloatReference(ref_model), model


def _run(model, ref, windows, cache, bs=2):
    with ref.on("cpu") as r:
        return perplexity(model, windows, bs=bs, progress=False, reference=r, reference_cache=cache)


@pytest.mark.parametrize("dtype,family", [(torch.float32, "llama"), (torch.bfloat16, "qwen2"),
                                          (torch.bfloat16, "gemma3_text")])
def test_cached_hidden_states_give_bit_identical_figures(tmp_path, dtype, family):
    ref, model = _pair(dtype, family)
    windows = _windows()
    plain = _run(model, ref, windows, None)
    first = _run(model, ref, windows, tmp_path)
    second = _run(model, ref, windows, tmp_path)
    assert "reference_cache" not in plain["vs_float"]
    assert first["vs_float"].pop("reference_cache")["status"] == "written"
    assert second["vs_float"].pop("reference_cache")["status"] == "hit"
    for out in (first, second):
        assert out["per_item"] == plain["per_item"]                 # every window's NLL, KL and top-1, exactly
        assert out["vs_float"] == plain["vs_float"] and out["ppl"] == plain["ppl"]
    files = list(tmp_path.glob("reference_hidden_*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp*"))


def test_a_hit_skips_the_reference_blocks(tmp_path):
    ref, model = _pair()
    windows = _windows()
    _run(model, ref, windows, tmp_path)
    calls = []
    handle = ref.model.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = _run(model, ref, windows, tmp_path)
    finally:
        handle.remove()
    assert out["vs_float"]["reference_cache"]["status"] == "hit" and calls == []


def test_anything_that_decides_the_bits_makes_a_new_file(tmp_path):
    ref, model = _pair()
    windows = _windows()
    _run(model, ref, windows, tmp_path)
    assert _run(model, ref, windows[:4], tmp_path)["vs_float"]["reference_cache"]["status"] == "written"   # limit
    assert _run(model, ref, windows, tmp_path, bs=1)["vs_float"]["reference_cache"]["status"] == "written"  # batch
    other, _ = _pair(seed=1)                                                                            # model
    assert _run(model, other, windows, tmp_path)["vs_float"]["reference_cache"]["status"] == "written"
    assert len(list(tmp_path.glob("reference_hidden_*.safetensors"))) == 4
    assert model_digest(ref.model) != model_digest(other.model)


def test_a_damaged_or_foreign_file_is_recomputed(tmp_path):
    ref, model = _pair()
    windows = _windows()
    plain = _run(model, ref, windows, None)
    _run(model, ref, windows, tmp_path)
    path = next(tmp_path.glob("reference_hidden_*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    out = _run(model, ref, windows, tmp_path)
    info = out["vs_float"].pop("reference_cache")
    assert info["status"] == "written" and "recomputed" in info["reason"]
    assert out["vs_float"] == plain["vs_float"]
    # a file whose stored key differs (copied from another setting) is not used either
    from safetensors.torch import save_file
    save_file({"hidden": torch.zeros(5, 16, 32)}, str(path), metadata={"key": "{}"})
    out = _run(model, ref, windows, tmp_path)
    assert out["vs_float"]["reference_cache"]["status"] == "written" and "key differs" in \
        out["vs_float"]["reference_cache"]["reason"]


def test_soft_capped_logits_are_not_cached(tmp_path):
    ref, _ = _pair()
    ref.model.config.final_logit_softcapping = 30.0
    outputs = ReferenceOutputs(ref.model, _windows(), 2, tmp_path)
    assert outputs.status == "computed" and "soft-caps" in outputs.reason and outputs.path is None


def test_evaluator_uses_the_save_path_and_can_be_turned_off(tmp_path, monkeypatch):
    from llmc import evaluators
    seen = []
    monkeypatch.setattr(evaluators, "perplexity", lambda *a, **kw: seen.append(
        (kw["reference_cache"], kw["reference_summary"])) or {"vs_float": {}, "ppl": 1.0})

    class Cfg:
        class eval:
            limit, bs, seq_len, reference_cache, reference_summary = None, 1, 16, True, True

        class save:
            save_path = str(tmp_path / "out")

    ev = object.__new__(evaluators.WikiText2Perplexity)
    ev.cfg, ev._windows = Cfg, _windows()
    ref, model = _pair()
    adapter = type("A", (), {"model": model})()
    ev.run(adapter, reference=ref)
    Cfg.eval.reference_cache = False
    ev.run(adapter, reference=ref)
    Cfg.eval.reference_cache, Cfg.eval.reference_summary = True, False
    ev.run(adapter, reference=ref)
    cache = tmp_path / "out" / evaluators.REFERENCE_CACHE
    assert seen == [(cache, True), (None, True), (cache, False)]
