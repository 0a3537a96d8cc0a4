"""The adapter's norm contract: a family whose norms compute ``(1 + w) * x / rms(x)`` (declared as
``norm_offset: 1`` in its layout) is smoothed, LET-folded and rotated correctly, and a family with norms
after its sub-blocks (``post_norms``) is refused where a residual rotation cannot pass through them."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from conftest import calib_ids, fold_let_blockwise, logits, rel_diff, tiny_hf_model
from llmc.config import load_config
from llmc.errors import ConfigError
from llmc.models.base import DecoderModel
from llmc.models.families import LLAMA
from llmc.registry import ALGO_REGISTRY


class OnePlusRMSNorm(nn.Module):
    """RMSNorm stored as ``1 + w`` (Gemma's convention)."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone() - 1.0)
        self.eps = eps

    def forward(self, x):
        h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return ((1.0 + self.weight.float()) * h).to(x.dtype)


def one_plus_adapter(offset: float = 1.0, post_norms=()):
    """A tiny Llama whose every RMSNorm is replaced by the equivalent (1 + w) norm, wrapped in an adapter
    whose layout declares ``norm_offset`` (1: correct; 0: a layout that lies about its norms)."""
    model = tiny_hf_model("llama")
    for name, module in list(model.named_modules()):
        if type(module).__name__ == "LlamaRMSNorm":
            model.set_submodule(name, OnePlusRMSNorm(module.weight, module.variance_epsilon))
    layout = dataclasses.replace(LLAMA, norm_offset=offset, post_norms=tuple(post_norms))
    return DecoderModel(model, layout=layout)


def cfg_for(method, *extra):
    return load_config(None, ["--quant.method", method, "--quant.weight.bit", "8", "--quant.act.bit", "8",
                              "--quant.act.granularity", "per_token", "--calib.n_samples", "4",
                              "--calib.seq_len", "16", "--calib.bs", "2", *extra])


def test_divide_and_fold_keep_the_function_with_one_plus_weights():
    a = one_plus_adapter()
    block = a.blocks[0]
    x = torch.randn(3, 64)
    norm, q = block.input_layernorm, block.self_attn.q_proj
    before = q(norm(x))
    s = torch.rand(64) + 0.5
    a.divide_norm(norm, s)                                       # X / s ...
    q.weight.data.mul_(s.view(1, -1))                            # ... (diag(s) W)
    torch.testing.assert_close(q(norm(x)), before, rtol=1e-5, atol=1e-5)
    a.fold_norm_into(norm, [q])                                  # gain into the columns, norm -> gain 1
    torch.testing.assert_close(norm.weight, torch.zeros(64))     # (1 + 0) = 1
    torch.testing.assert_close(q(norm(x)), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,extra", [("SmoothQuant", []),
                                          ("SpinQuant", ["--quant.special.learn_rotations", "false",
                                                         "--quant.special.weight_algo", "rtn"])])
def test_transforms_are_equivalences_on_one_plus_norms(method, extra):
    """The transform alone (before quantization) leaves the logits unchanged when the layout says how the
    norms compute, and does not when it says otherwise (the contract is what makes it right)."""
    ids = calib_ids(seed=3).input_ids
    diffs = {}
    for offset in (1.0, 0.0):
        a = one_plus_adapter(offset)
        before = logits(a, ids)
        algo = ALGO_REGISTRY[method](a, cfg_for(method, *extra))
        algo.quantize(calib_ids())                                # transform only, no fake quantization
        diffs[offset] = rel_diff(before, logits(a, ids))
    assert diffs[1.0] < 1e-4, diffs
    assert diffs[0.0] > 1e-2, diffs


def test_omniquant_let_fold_uses_the_contract():
    a = one_plus_adapter()
    algo = ALGO_REGISTRY["OmniQuant"](a, cfg_for("OmniQuant", "--quant.weight.symmetric", "false"))
    ids = calib_ids(seed=3).input_ids
    before = logits(a, ids)
    fold_let_blockwise(a, algo)
    assert rel_diff(before, logits(a, ids)) < 1e-4


def test_a_residual_rotation_is_refused_with_post_norms():
    a = one_plus_adapter(post_norms=("post_attention_layernorm",))
    algo = ALGO_REGISTRY["SpinQuant"](a, cfg_for("SpinQuant", "--quant.special.learn_rotations", "false",
                                                 "--quant.special.weight_algo", "rtn"))
    with pytest.raises(ConfigError, match=r"^quant.special.r1: SpinQuant's R1 .* cannot pass through the norms "
                                          r"after each sub-block"):
        algo.quantize(None)
    # without R1 the local rotations (R2, R4) apply
    b = one_plus_adapter(post_norms=("post_attention_layernorm",))
    ids = calib_ids(seed=3).input_ids
    before = logits(b, ids)
    ALGO_REGISTRY["SpinQuant"](b, cfg_for("SpinQuant", "--quant.special.learn_rotations", "false",
                                          "--quant.special.weight_algo", "rtn", "--quant.special.r1", "false")
                               ).quantize(None)
    assert rel_diff(before, logits(b, ids)) < 1e-4
