"""Our GGUF files inside llama.cpp (llama-cpp-python): they load, a float GGUF computes the torch model's logits
(so names, Q/K permutation and hyper-parameters are right), our quantized Q8_0 / Q4_1 files compute the
fake-quant weights' logits up to llama.cpp's own activation quantization, and the measuring child keeps the
runtimes' contract. Skipped where llama-cpp-python is not installed (`make llamacpp`)."""

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llamacpp)")

from conftest import tiny_adapter  # noqa: E402
from llmc.config import load_config  # noqa: E402
from llmc.export.gguf import write_float_gguf, write_gguf  # noqa: E402
from llmc.pipeline import quantize_model  # noqa: E402
from llmc_slm.tracks.runtimes import CONTRACT_KEYS, measure_in_child  # noqa: E402
from llmc_slm.tracks.runtimes.llamacpp import _load  # noqa: E402

IDS = [3, 17, 101, 45, 9, 250, 77, 12, 5, 64, 128, 200, 31, 8, 99, 150]


def _logits(path, ids, extra_bufts=None):
    llm = _load(path, threads=1, n_ctx=64, n_batch=64, logits_all=True, extra_bufts=extra_bufts)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    del llm
    return out


def _torch_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_float_gguf_computes_the_torch_logits(tmp_path, family):
    adapter = tiny_adapter(family, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=128)
    write_float_gguf(adapter.model, tmp_path / "f32.gguf", dtype="F32")
    got, ref = _logits(tmp_path / "f32.gguf", IDS), _torch_logits(adapter.model, IDS)
    np.testing.assert_allclose(got, ref, atol=2e-3 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("overrides", [
    ["--quant.weight.bit", "8", "--quant.weight.granularity", "per_channel"],
    ["--quant.weight.bit", "4", "--quant.weight.symmetric", "false", "--quant.weight.granularity", "per_group",
     "--quant.weight.group_size", "32"],
])
@pytest.mark.parametrize("extra_bufts", [None, False])
def test_quantized_gguf_computes_the_fake_quant_logits(tmp_path, overrides, extra_bufts):
    adapter = tiny_adapter("llama", max_position_embeddings=128)
    cfg = load_config(None, ["--quant.method", "RTN", *overrides])     # weights only: no activation grid
    quantize_model(adapter, cfg, None)                 # RTN: no calibration
    write_gguf(adapter.model, tmp_path / "q.gguf", embed_type="F32", float_type="F32")
    got, ref = _logits(tmp_path / "q.gguf", IDS, extra_bufts), _torch_logits(adapter.model, IDS)
    # llama.cpp quantizes the activations to 8 bits per block of 32 for these dot products: close, not equal
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 3e-2
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_measuring_child_keeps_the_contract(tmp_path):
    adapter = tiny_adapter("llama", max_position_embeddings=256)
    write_float_gguf(adapter.model, tmp_path / "m.gguf", dtype="F16")
    windows = [IDS * 2, IDS[::-1] * 2]
    row = measure_in_child("llamacpp", tmp_path / "m.gguf", threads=1, prefill_ids=[IDS * 8], decode_tokens=4,
                           ppl_windows=windows, options={"warmup": 1, "runs": 2, "decode_runs": 1})
    assert "skipped" not in row, row.get("skipped")
    assert set(CONTRACT_KEYS) <= set(row)
    assert row["stored_bytes"] == (tmp_path / "m.gguf").stat().st_size
    assert row["peak_above_idle_bytes"] == row["peak_rss_bytes"] - row["idle_rss_bytes"] > 0
    assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0
    assert row["ppl_windows"] == 2 and row["ppl_tokens"] == 2 * (len(IDS) * 2 - 1)
    # the perplexity is the one of llama.cpp's logits, scored here: compare with a direct computation
    nll, n = 0.0, 0
    for w in windows:
        lg = _logits(tmp_path / "m.gguf", w).astype(np.float64)
        lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
        nll += float((lse[:-1] - lg[np.arange(len(w) - 1), w[1:]]).sum())
        n += len(w) - 1
    assert row["wikitext2_ppl"] == pytest.approx(np.exp(nll / n), rel=1e-4)
