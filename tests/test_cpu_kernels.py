"""The CPU speed paths of integer deployment: the fused per-token kernels (llmc.quant.cpu_kernels) give the
quantizer's codes and scales bit for bit and the same layer outputs as the PyTorch-op path; the pre-packed
float linear (llmc.quant.prepacked_linear) is bit-identical to F.linear."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_adapter
from llmc.quant import int_linear
from llmc.quant.cpu_kernels import fused_kernels, fused_kernels_status
from llmc.quant.fake_linear import FakeQuantLinear
from llmc.quant.int_linear import IntLinear, quantize_act_int8
from llmc.quant.prepacked_linear import PrepackedLinear, prepack_available, prepack_float_linears
from llmc.quant.quantizer import Quantizer

needs_kernels = pytest.mark.skipif(fused_kernels() is None, reason=f"fused kernels: {fused_kernels_status()}")
needs_prepack = pytest.mark.skipif(not prepack_available(), reason="oneDNN pre-packed linear unavailable")


def _activations(m, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 20   # rows of very different ranges
    x[1] = 0                                                                  # an all-zero token
    x[2] = -x[2].abs()                                                        # all negative: max|x| = -min
    x[3, 5] = 1e4                                                             # one outlier
    return x.to(dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k", [7, 64, 4864])
def test_fused_quantization_gives_the_quantizers_codes_and_scales(dtype, k):
    q = Quantizer(bit=8, granularity="per_token")
    x = _activations(9, k, dtype)
    codes, scale = fused_kernels().quantize_rows_sym(x, float(q.qmax), float(q.eps), False)
    want_codes, want_scale, _ = q.quantize_with_params(x)
    assert codes.dtype == torch.int8 and torch.equal(codes, want_codes.to(torch.int8))
    u8, u8_scale = fused_kernels().quantize_rows_sym(x, float(q.qmax), float(q.eps), True)
    assert u8.dtype == torch.uint8 and torch.equal(u8.to(torch.int32) - 128, codes.to(torch.int32))
    assert torch.equal(u8_scale, scale)
    assert torch.equal(scale, want_scale.float().reshape(9, 1))
    assert scale[1].item() == pytest.approx(q.eps)          # the zero row: eps, codes 0
    assert not codes[1].any()


@needs_kernels
def test_fused_quantization_is_what_int_linear_uses_and_matches_the_op_path(monkeypatch):
    q = Quantizer(bit=8, granularity="per_token")
    x = _activations(16, 96, torch.bfloat16)
    fused = quantize_act_int8(x, q)
    unsigned = quantize_act_int8(x, q, unsigned=True)
    monkeypatch.setattr(int_linear, "_fused", lambda: None)
    ops = quantize_act_int8(x, q)
    assert torch.equal(fused[0], ops[0]) and torch.equal(fused[1], ops[1])
    assert torch.equal(unsigned[0].to(torch.int32) - 128, ops[0].to(torch.int32))


@needs_kernels
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_fused_rescale(out_dtype):
    g = torch.Generator().manual_seed(0)
    acc = torch.randn(5, 33, generator=g) * 1000
    sx = torch.rand(5, 1, generator=g)
    bias = torch.randn(33, generator=g)
    k = fused_kernels()
    assert torch.equal(k.rescale_rows(acc, sx, None, out_dtype), (acc * sx).to(out_dtype))
    exact = acc.double() * sx.double() + bias.double()
    got = k.rescale_rows(acc, sx, bias, out_dtype).double()
    # one float32 fma (half an ulp), then for bf16 one more rounding (half a bf16 ulp)
    ulp = 2 ** -8 if out_dtype == torch.bfloat16 else 2 ** -23
    assert ((got - exact).abs() <= exact.abs() * ulp).all()
    assert not torch.equal(got, (acc * sx).to(out_dtype).double())   # the bias was added


@needs_kernels
@pytest.mark.parametrize("bias", [True, False])
def test_int_linear_outputs_with_and_without_the_fused_kernels(monkeypatch, bias):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 48, bias=bias).to(torch.bfloat16)
    fq = FakeQuantLinear(lin, Quantizer(bit=8, granularity="per_channel"), Quantizer(bit=8, granularity="per_token"))
    il = IntLinear.from_fake(fq, share_act_quant=False)
    x = (torch.randn(3, 20, 64, generator=g) * 2).to(torch.bfloat16)
    with torch.no_grad():
        fused = il(x)
        monkeypatch.setattr(int_linear, "_fused", lambda: None)
        ops = il(x)
        want = fq(x)
    assert fused.dtype == torch.bfloat16 and fused.shape == ops.shape
    # the same int32 sums and scales; the two paths round acc * s_x (+ bias) to bf16 the same way up to
    # the fma's single rounding: at most one bf16 ulp apart
    assert ((fused.float() - ops.float()).abs() <= ops.float().abs() * 2 ** -7 + 1e-6).all()
    err = ((fused.float() - want.float()).abs().max() / want.float().abs().max()).item()
    assert err < 2e-2      # against the fake-quant layer, which rounds s_x q_x and s_w q_w to bf16 first


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_asymmetric_quantization_matches_the_quantizer_and_the_op_path(monkeypatch, dtype):
    q = Quantizer(bit=8, symmetric=False, granularity="per_token")
    x = _activations(9, 77, dtype)
    x[4] = x[4].abs() + 0.5                         # all positive: the range still starts at 0
    a, s, z = quantize_act_int8(x, q)
    codes, scale, zero = q.quantize_with_params(x)
    assert a.dtype == torch.int8 and z.dtype == torch.int32
    assert torch.equal(a.to(torch.int32) + 128, codes.to(torch.int32))
    assert torch.equal(z + 128, zero.to(torch.int32).reshape(9, 1)) and torch.equal(s, scale.float().reshape(9, 1))
    monkeypatch.setattr(int_linear, "_fused", lambda: None)
    ops = quantize_act_int8(x, q)
    assert all(torch.equal(f, o) for f, o in zip((a, s, z), ops))


# (weight bits, weight symmetric, activations symmetric, static): every correction term of the _int_mm path
INT_MM_CASES = [(8, False, True, False), (8, True, False, False), (8, False, False, False), (4, False, False, False),
                (8, False, True, True)]


@needs_kernels
@pytest.mark.parametrize("wbit,wsym,act_sym,static", INT_MM_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int_mm_epilogue_is_bit_identical_to_the_op_path(monkeypatch, wbit, wsym, act_sym, static, dtype):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 40, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 64, generator=g) * 0.1 + 0.02)
    aq = Quantizer(bit=8, symmetric=act_sym, granularity="per_tensor" if static else "per_token", static=static)
    fq = FakeQuantLinear(lin, Quantizer(bit=wbit, symmetric=wsym, granularity="per_channel"), aq)
    if static:
        fq.calibrating = True
        fq(torch.randn(4, 8, 64, generator=g))
        fq.calibrating = False
        fq.act_quantizer.freeze()
    il = IntLinear.from_fake(fq, backend="int_mm", share_act_quant=False)
    x = (torch.randn(2, 9, 64, generator=g) * 3 + 0.5).to(dtype)
    with torch.no_grad():
        fused = il(x)
        monkeypatch.setattr(int_linear, "_fused", lambda: None)
        ops = il(x)
    assert fused.dtype == dtype and torch.equal(fused, ops)


def test_kernels_can_be_turned_off(monkeypatch):
    from llmc.quant import cpu_kernels
    monkeypatch.setattr(cpu_kernels, "_STATUS", None)
    monkeypatch.setattr(cpu_kernels, "_MODULE", None)
    monkeypatch.setenv("SLMQUANT_FUSED_KERNELS", "0")
    assert cpu_kernels.fused_kernels() is None
    assert "SLMQUANT_FUSED_KERNELS" in cpu_kernels.fused_kernels_status()


# ------------------------------------------------------------------------------- pre-packed float
@needs_prepack
@pytest.mark.parametrize("bias", [True, False])
def test_prepacked_linear_is_bit_identical_in_bfloat16(bias):
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16
    lin = nn.Linear(40, 24, bias=bias).to(dtype)
    packed = PrepackedLinear(lin, batch_hint=16)
    for shape in [(16, 40), (1, 40), (2, 7, 40)]:
        x = torch.randn(*shape, generator=g).to(dtype)
        with torch.no_grad():
            assert torch.equal(packed(x), F.linear(x, lin.weight, lin.bias))
    with pytest.raises(TypeError, match="bfloat16"):
        packed(torch.randn(2, 40))


@needs_prepack
def test_prepacking_a_whole_model_keeps_its_logits():
    adapter = tiny_adapter("qwen2")
    model = adapter.model.to(torch.bfloat16).eval()
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        n = prepack_float_linears(model, batch_hint=12)
        got = model(input_ids=ids).logits
    linears = 7 * model.config.num_hidden_layers + 1          # q k v o gate up down per layer + lm_head
    assert n == linears and sum(isinstance(m, PrepackedLinear) for m in model.modules()) == linears
    assert torch.equal(got, want)
    fp32 = tiny_adapter("qwen2").model
    assert prepack_float_linears(fp32) == 0          # float32 linears stay F.linear (not bit-identical there)


# ------------------------------------------------------------------------- fused fake quantization
from llmc.quant import quantizer as quantizer_module     # noqa: E402


def _bits(t):
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t.view(torch.int32)


def _op_path(monkeypatch, fn):
    """``fn()`` with the fused kernels off (the PyTorch-op path of Quantizer.fake_quant)."""
    with monkeypatch.context() as m:
        m.setattr(quantizer_module, "_fused_kernels", lambda: None)
        return fn()


FAKE_CASES = [dict(bit=8, symmetric=True, granularity="per_token"),
              dict(bit=8, symmetric=False, granularity="per_token"),
              dict(bit=4, symmetric=True, granularity="per_token"),
              dict(bit=4, symmetric=False, granularity="per_token"),
              dict(bit=8, symmetric=True, granularity="per_token", sym_grid="gptq"),
              dict(bit=3, symmetric=False, granularity="per_channel")]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k", [7, 64, 576, 4864])
@pytest.mark.parametrize("case", FAKE_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_fused_fake_quant_is_bit_identical_to_the_op_path(monkeypatch, dtype, k, case):
    q = Quantizer(**case)
    x = _activations(9, k, dtype)
    x[4] = x[4].abs() + 0.5                         # all positive: the asymmetric range still starts at 0
    x[5] = -x[5].abs() - 0.25                       # all negative and away from 0 (zero point at qmax)
    x[6, :3] = torch.tensor([1e-30, -1e-30, 0.0], dtype=dtype)    # tiny values beside the row's range
    calls = []
    real = fused_kernels().fake_quant_rows
    monkeypatch.setattr(quantizer_module, "_fused_kernels",
                        lambda: type("K", (), {"fake_quant_rows": staticmethod(
                            lambda *a: calls.append(1) or real(*a))})())
    with torch.no_grad():
        got = q.fake_quant(x)
    assert calls, "the fused kernel was not used"
    with torch.no_grad():
        want = _op_path(monkeypatch, lambda: q.fake_quant(x))
    want_grad_mode = _op_path(monkeypatch, lambda: q.fake_quant(x))        # the STE ops, grad mode on
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(_bits(got), _bits(want)) and torch.equal(_bits(got), _bits(want_grad_mode))
    assert not got[1].any()                                                # the zero row stays zero


@needs_kernels
@pytest.mark.parametrize("case", [dict(granularity="per_group", group_size=32, symmetric=False),
                                  dict(granularity="per_head", head_dim=16, symmetric=True)])
def test_fused_fake_quant_per_group_and_per_head_and_3d_inputs(monkeypatch, case):
    q = Quantizer(bit=4, **case)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 5, 64, generator=g) * 4).to(torch.bfloat16)
    for inp in (x, x.transpose(0, 1)):                 # contiguous and not
        with torch.no_grad():
            got = q.fake_quant(inp)
            want = _op_path(monkeypatch, lambda: q.fake_quant(inp))
        assert got.shape == inp.shape and torch.equal(_bits(got.contiguous()), _bits(want.contiguous()))


@needs_kernels
def test_fused_fake_quant_keeps_the_differentiable_path_for_training(monkeypatch):
    q = Quantizer(bit=4, symmetric=False, granularity="per_token")
    x = _activations(6, 40, torch.float32).requires_grad_()

    def boom():
        raise AssertionError("the fused kernel must not run when a gradient is needed")

    with monkeypatch.context() as m:
        m.setattr(quantizer_module, "_fused_kernels", boom)
        y = q.fake_quant(x)
        static = Quantizer(bit=8, granularity="per_tensor", static=True)
        static.observe(x)
        static.freeze()
        with torch.no_grad():
            static.fake_quant(x.detach())                  # static ranges: the op path
            Quantizer(bit=8, granularity="per_token", calib_algo="mse").fake_quant(x.detach())
            q.fake_quant(x.detach(), clip_max=torch.full((6, 1), 0.9))       # clipping factors: the op path
    y.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    _op_path(monkeypatch, lambda: q.fake_quant(x)).sum().backward()
    assert torch.equal(grad, x.grad)
    with torch.no_grad():                              # and the values are the fused kernel's
        assert torch.equal(y.detach(), q.fake_quant(x))


@needs_kernels
@pytest.mark.parametrize("act_sym", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fake_quant_linear_outputs_with_and_without_the_fused_kernel(monkeypatch, act_sym, dtype):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(96, 40, bias=True).to(dtype)
    fq = FakeQuantLinear(lin, Quantizer(bit=4, granularity="per_channel"),
                         Quantizer(bit=8, symmetric=act_sym, granularity="per_token"))
    x = (torch.randn(2, 17, 96, generator=g) * 3).to(dtype)
    with torch.inference_mode():
        fused = fq(x)
        ops = _op_path(monkeypatch, lambda: fq(x))
    assert torch.equal(_bits(fused), _bits(ops))


def test_fake_quant_without_kernels_is_the_op_path(monkeypatch):
    from llmc.quant import cpu_kernels
    monkeypatch.setattr(cpu_kernels, "_STATUS", None)
    monkeypatch.setattr(cpu_kernels, "_MODULE", None)
    monkeypatch.setenv("SLMQUANT_FUSED_KERNELS", "0")
    q = Quantizer(bit=8, symmetric=False, granularity="per_token")
    x = _activations(5, 33, torch.bfloat16)
    with torch.no_grad():
        got = q.fake_quant(x)
    assert cpu_kernels.fused_kernels() is None
    assert torch.equal(got, q._fake_no_grad(x, None, None, None, None))
