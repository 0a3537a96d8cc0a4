"""Tests for llmc.quant.fake_linear (FakeQuantLinear, replace_linears) against plain references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmc.quant.fake_linear import FakeQuantLinear, replace_linears
from llmc.quant.quantizer import Quantizer


def ref_fq_rows(x2d, bit, sym):
    """Fake-quantize each row of a 2-D float32 array with its own min/max range (numpy loops)."""
    x2d = np.asarray(x2d, dtype=np.float32)
    out = np.empty_like(x2d)
    for r, row in enumerate(x2d):
        lo, hi = min(float(row.min()), 0.0), max(float(row.max()), 0.0)
        if sym:
            qmin, qmax = -(2 ** (bit - 1)), 2 ** (bit - 1) - 1
            s, z = max(np.float32(max(-lo, hi)) / np.float32(qmax), np.float32(1e-8)), np.float32(0)
        else:
            qmin, qmax = 0, 2 ** bit - 1
            s = max(np.float32(np.float32(hi) - np.float32(lo)) / np.float32(qmax), np.float32(1e-8))
            z = np.float32(min(max(np.round(np.float32(-lo) / s), qmin), qmax))
        for i, v in enumerate(row):
            q = min(max(np.round(np.float32(v) / s) + z, qmin), qmax)
            out[r, i] = (np.float32(q) - z) * s
    return out


def make_linear(inp, out, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(inp, out, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, inp ** -0.5)
        if bias:
            lin.bias.normal_(0, 0.1)
    return lin


def rel_err(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("wsym,asym", [(True, True), (False, True), (False, False)])
def test_matches_reference(wsym, asym):
    lin = make_linear(32, 12)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    wq = Quantizer(bit=4, symmetric=wsym, granularity="per_channel")
    aq = Quantizer(bit=8, symmetric=asym, granularity="per_token")
    layer = FakeQuantLinear.from_linear(lin, wq, aq)
    w_ref = torch.from_numpy(ref_fq_rows(lin.weight.detach().numpy(), 4, wsym))
    x_ref = torch.from_numpy(ref_fq_rows(x.reshape(-1, 32).numpy(), 8, asym)).reshape(x.shape)
    assert torch.equal(layer.weight, w_ref)
    y_ref = F.linear(x_ref, w_ref, lin.bias)
    torch.testing.assert_close(layer(x), y_ref, rtol=1e-5, atol=1e-6)


def test_per_group_weights_match_reference():
    lin = make_linear(32, 6, seed=2)
    wq = Quantizer(bit=3, symmetric=False, granularity="per_group", group_size=8)
    layer = FakeQuantLinear(lin, wq, None)
    w = lin.weight.detach().numpy()
    ref = np.concatenate([ref_fq_rows(w[:, k:k + 8], 3, False) for k in range(0, 32, 8)], axis=1)
    assert torch.equal(layer.weight, torch.from_numpy(ref))
    codes, scale, zero = layer.export_int()
    assert codes.shape == (6, 32) and scale.shape == (6, 4, 1) and zero.shape == (6, 4, 1)


def test_error_small_at_8bit_larger_at_4bit():
    lin = make_linear(256, 128, seed=3)
    x = torch.randn(4, 16, 256, generator=torch.Generator().manual_seed(4))
    ref = lin(x).detach()
    errs = {}
    for bit in (8, 4):
        layer = FakeQuantLinear(lin, Quantizer(bit=bit, symmetric=True, granularity="per_channel"),
                                Quantizer(bit=bit, symmetric=True, granularity="per_token"))
        errs[bit] = rel_err(layer(x).detach(), ref)
    assert errs[8] < 0.02
    assert 3 * errs[8] < errs[4] < 0.35


def test_identity_without_quantizers_and_bias_kept():
    lin = make_linear(16, 8)
    x = torch.randn(3, 16)
    layer = FakeQuantLinear(lin)
    assert torch.equal(layer(x), lin(x))
    assert layer.bias is lin.bias
    with pytest.raises(RuntimeError, match="no weight quantizer"):
        layer.export_int()
    nobias = FakeQuantLinear(make_linear(16, 8, bias=False), Quantizer(bit=8))
    assert nobias.bias is None and nobias(x).shape == (3, 8)
    # the state_dict keys are those of nn.Linear (a fake-quant model saves like the original)
    q = FakeQuantLinear(lin, Quantizer(bit=4), Quantizer(bit=8, granularity="per_token"))
    assert set(q.state_dict()) == {"weight", "bias"}


def test_export_int_roundtrip_and_dtype():
    lin = make_linear(32, 8).to(torch.bfloat16)
    wq = Quantizer(bit=4, symmetric=False, granularity="per_channel")
    layer = FakeQuantLinear(lin, wq, Quantizer(bit=8, granularity="per_token"))
    assert layer.weight.dtype == torch.bfloat16 and not layer.weight.requires_grad
    codes, scale, zero = layer.export_int()
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15 and scale.shape == (8, 1)
    assert torch.equal(wq.dequantize(codes, scale, zero, dtype=torch.bfloat16), layer.weight)
    x = torch.randn(2, 32).to(torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16


def test_weight_params_reproduce_grid():
    lin = make_linear(16, 4)
    wq = Quantizer(bit=4, symmetric=True, granularity="per_channel")
    first = FakeQuantLinear(lin, wq)
    # a layer built from an already-quantized weight and its params keeps the same codes
    lin2 = make_linear(16, 4)
    with torch.no_grad():
        lin2.weight.copy_(first.weight)
    second = FakeQuantLinear(lin2, wq, weight_params=(first.w_scale, first.w_zero))
    assert torch.equal(second.export_int()[0], first.export_int()[0])
    assert torch.equal(second.weight, first.weight)


def test_input_transform_before_act_quant():
    lin = make_linear(8, 4)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(5)))
    rotated = make_linear(8, 4)
    with torch.no_grad():
        rotated.weight.copy_(lin.weight @ q)  # W Q, with x -> x Q: (x Q)(W Q)^T = x W^T
        rotated.bias.copy_(lin.bias)
    x = torch.randn(5, 8)
    plain = FakeQuantLinear(rotated, input_transform=lambda t: t @ q)
    torch.testing.assert_close(plain(x), lin(x), rtol=1e-5, atol=1e-5)
    aq = Quantizer(bit=4, symmetric=True, granularity="per_token")
    layer = FakeQuantLinear(rotated, None, aq, input_transform=lambda t: t @ q)
    x_ref = torch.from_numpy(ref_fq_rows((x @ q).numpy(), 4, True))
    torch.testing.assert_close(layer(x), F.linear(x_ref, rotated.weight, rotated.bias))


def test_static_calibration_per_layer():
    aq = Quantizer(bit=8, symmetric=True, granularity="per_tensor", static=True)
    a = FakeQuantLinear(make_linear(8, 4), None, aq)
    b = FakeQuantLinear(make_linear(8, 4), None, aq)
    assert a.act_quantizer is not aq and a.act_quantizer is not b.act_quantizer
    a.calibrating = b.calibrating = True
    xa, xb = torch.randn(3, 8), 5 * torch.randn(3, 8)
    assert torch.equal(a(xa), F.linear(xa, a.weight, a.bias))  # calibration runs in float
    b(xb)
    a.calibrating = b.calibrating = False
    sa, _ = a.act_quantizer.freeze()
    sb, _ = b.act_quantizer.freeze()
    assert sa.item() == pytest.approx(xa.abs().max().item() / 127, rel=1e-6)
    assert sb.item() == pytest.approx(xb.abs().max().item() / 127, rel=1e-6)
    assert not torch.equal(a(xa), F.linear(xa, a.weight, a.bias))


def test_gradient_flows_to_input():
    layer = FakeQuantLinear(make_linear(16, 4), Quantizer(bit=4),
                            Quantizer(bit=8, granularity="per_token"))
    x = torch.randn(3, 16, requires_grad=True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({"q_proj": make_linear(8, 8), "o_proj": make_linear(8, 8)})
        self.mlp = nn.Sequential(make_linear(8, 16), nn.ReLU(), make_linear(16, 8))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = make_linear(8, 3)


def test_replace_linears():
    model = Tiny()
    x = torch.randn(2, 8)
    old_q = model.layers[1].attn["q_proj"]
    wq, aq = Quantizer(bit=4), Quantizer(bit=8, granularity="per_token")
    new = replace_linears(model, {
        "layers.1.attn.q_proj": (wq, aq),
        "layers.0.mlp.2": {"weight_quantizer": wq},
        "head": (None, None),
    })
    assert set(new) == {"layers.1.attn.q_proj", "layers.0.mlp.2", "head"}
    assert model.layers[1].attn["q_proj"] is new["layers.1.attn.q_proj"]
    assert isinstance(model.layers[0].mlp[2], FakeQuantLinear) and isinstance(model.head, FakeQuantLinear)
    assert isinstance(model.layers[0].attn["q_proj"], nn.Linear)
    assert torch.equal(model.head(x), F.linear(x, model.head.weight, model.head.bias))
    torch.testing.assert_close(new["layers.1.attn.q_proj"](x), old_q(x), rtol=0.3, atol=0.3)
    with pytest.raises(KeyError, match="layers.5.attn"):
        replace_linears(model, {"layers.5.attn.q_proj": (wq, None)})
    with pytest.raises(KeyError, match="nope"):
        replace_linears(model, {"layers.0.attn.nope": (wq, None)})
    with pytest.raises(TypeError, match="ReLU"):
        replace_linears(model, {"layers.0.mlp.1": (wq, None)})
    with pytest.raises(TypeError, match="FakeQuantLinear"):
        replace_linears(model, {"head": (wq, None)})
