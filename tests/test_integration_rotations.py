"""SpinQuant's and QuaRot's rotations on the real architectures (issues 6 and 22): with R1, R2, R4 and R3
applied (and QuaRot's full-width o_proj transform: 9 and 14 heads have no Hadamard matrix) and nothing
quantized, the float32 model equals the original (relative difference of logits <= 1e-4) on the
embedded SmolLM2-135M-Instruct and on the random Qwen2.5-0.5B architecture (hidden 896, ffn 4864 =
64 * 76: the Hadamard sizes the original SpinQuant cannot build)."""

import pytest
import torch

from llmc.config import load_config
from llmc.models.loading import load_model, resolve_model_source
from llmc.quant.kvcache import enable_kv_quant
from llmc.quant.transforms import OnlineHadamard
from llmc.registry import ALGO_REGISTRY


@pytest.mark.parametrize("method", ["SpinQuant", "QuaRot"])
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-0.5b-random"])
def test_rotated_model_equals_original(name, method):
    adapter = load_model(resolve_model_source(name), dtype=torch.float32)
    ids = torch.randint(0, 49152, (1, 96), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = adapter.model(input_ids=ids).logits
    extra = ["--quant.special.learn_rotations", "false"] if method == "SpinQuant" else []
    cfg = load_config(None, ["--quant.method", method, "--quant.weight.bit", "4", "--quant.act.bit", "8",
                             "--quant.act.granularity", "per_token", *extra,
                             "--quant.special.r3", "true", "--calib.n_samples", "1"])
    algo = ALGO_REGISTRY[method](adapter, cfg)
    algo.prepare(None)                      # fold norms, untie, R4 (offline + online), random-Hadamard R1 and R2
    enable_kv_quant(adapter, None, None, OnlineHadamard(adapter.head_dim))   # R3 on Q and K after RoPE
    assert algo.input_transforms and not adapter.tied_embeddings
    with torch.no_grad():
        after = adapter.model(input_ids=ids).logits
    rel = ((after - before).abs().max() / before.abs().max()).item()
    if method == "QuaRot":
        assert algo.rotation_log["o_proj_online"] == "full"
    print(f"{name} {method}: rotated vs original, max rel logit difference {rel:.2e}")
    assert rel <= 1e-4
