"""Tests for llmc.quant.quantizer against plain numpy references written here."""

import numpy as np
import pytest
import torch

from llmc.config import QuantizerConfig
from llmc.quant.quantizer import Quantizer, round_ste

BITS = [2, 3, 4, 8]
EPS = np.float32(1e-8)


# ----------------------------------------------------------------------------------- references
def ref_quant_row(row, bit, sym):
    """Codes, scale, zero of one range group (1-D float32 numpy), computed step by step in float32."""
    row = np.asarray(row, dtype=np.float32)
    lo = min(float(row.min()), 0.0)
    hi = max(float(row.max()), 0.0)
    if sym:
        qmin, qmax = -(2 ** (bit - 1)), 2 ** (bit - 1) - 1
        scale = max(np.float32(max(-lo, hi)) / np.float32(qmax), EPS)
        zero = np.float32(0)
    else:
        qmin, qmax = 0, 2 ** bit - 1
        scale = max(np.float32(np.float32(hi) - np.float32(lo)) / np.float32(qmax), EPS)
        zero = np.float32(min(max(np.round(np.float32(-lo) / scale), qmin), qmax))
    codes = np.empty(row.shape, dtype=np.int64)
    for i, v in enumerate(row):
        q = np.round(np.float32(v) / scale) + zero
        codes[i] = int(min(max(q, qmin), qmax))
    deq = np.array([(np.float32(c) - zero) * scale for c in codes], dtype=np.float32)
    return codes, np.float32(scale), np.float32(zero), deq


def ref_rows(x2d, bit, sym):
    """Apply ref_quant_row to each row of a 2-D array; returns codes, scales, zeros, dequantized."""
    out = [ref_quant_row(r, bit, sym) for r in x2d]
    return (np.stack([o[0] for o in out]), np.array([o[1] for o in out]), np.array([o[2] for o in out]),
            np.stack([o[3] for o in out]))


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


# ----------------------------------------------------------------------- granularity references
@pytest.mark.parametrize("bit", BITS)
@pytest.mark.parametrize("sym", [True, False])
def test_per_tensor(bit, sym):
    x = rand(6, 16, seed=bit) + 0.3
    q = Quantizer(bit=bit, symmetric=sym, granularity="per_tensor")
    codes, scale, zero = q.quantize_with_params(x)
    rc, rs, rz, rd = ref_quant_row(x.numpy().ravel(), bit, sym)
    assert scale.shape == (1, 1) and zero.shape == (1, 1)
    np.testing.assert_array_equal(codes.numpy().ravel().astype(np.int64), rc)
    assert scale.item() == rs and zero.item() == rz
    np.testing.assert_array_equal(q.fake_quant(x).numpy().ravel(), rd)


@pytest.mark.parametrize("bit", BITS)
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("gran", ["per_channel", "per_token"])
def test_per_row(bit, sym, gran):
    x = rand(7, 24, seed=10 + bit) * torch.linspace(0.1, 3.0, 7)[:, None]
    q = Quantizer(bit=bit, symmetric=sym, granularity=gran)
    codes, scale, zero = q.quantize_with_params(x)
    rc, rs, rz, rd = ref_rows(x.numpy(), bit, sym)
    assert scale.shape == (7, 1)
    np.testing.assert_array_equal(codes.numpy().astype(np.int64), rc)
    np.testing.assert_array_equal(scale.numpy()[:, 0], rs)
    np.testing.assert_array_equal(zero.numpy()[:, 0], rz)
    np.testing.assert_array_equal(q.fake_quant(x).numpy(), rd)


@pytest.mark.parametrize("bit", BITS)
@pytest.mark.parametrize("sym", [True, False])
def test_per_token_3d(bit, sym):
    x = rand(2, 5, 12, seed=20 + bit)
    q = Quantizer(bit=bit, symmetric=sym, granularity="per_token")
    _, scale, _ = q.quantize_with_params(x)
    assert scale.shape == (2, 5, 1)
    ref = np.zeros((2, 5, 12), dtype=np.float32)
    for b in range(2):
        for t in range(5):
            ref[b, t] = ref_quant_row(x[b, t].numpy(), bit, sym)[3]
    np.testing.assert_array_equal(q.fake_quant(x).numpy(), ref)


@pytest.mark.parametrize("bit", BITS)
@pytest.mark.parametrize("sym", [True, False])
def test_per_group(bit, sym):
    out, width, g = 5, 32, 8
    x = rand(out, width, seed=30 + bit)
    x[:, 8:16] *= 10  # one group with a larger range
    q = Quantizer(bit=bit, symmetric=sym, granularity="per_group", group_size=g)
    codes, scale, zero = q.quantize_with_params(x)
    assert scale.shape == (out, width // g, 1)
    ref_codes = np.zeros((out, width), dtype=np.int64)
    ref_deq = np.zeros((out, width), dtype=np.float32)
    for r in range(out):
        for k in range(width // g):
            c, s, z, d = ref_quant_row(x[r, k * g:(k + 1) * g].numpy(), bit, sym)
            ref_codes[r, k * g:(k + 1) * g] = c
            ref_deq[r, k * g:(k + 1) * g] = d
            assert scale[r, k, 0].item() == s and zero[r, k, 0].item() == z
    np.testing.assert_array_equal(codes.numpy().astype(np.int64), ref_codes)
    np.testing.assert_array_equal(q.fake_quant(x).numpy(), ref_deq)


@pytest.mark.parametrize("bit", BITS)
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("how", ["head_dim", "n_heads"])
def test_per_head(bit, sym, how):
    batch, tokens, heads, hd = 2, 3, 4, 6
    x = rand(batch, tokens, heads * hd, seed=40 + bit)
    x[..., hd:2 * hd] *= 8  # head 1 has outliers
    kw = {"head_dim": hd} if how == "head_dim" else {"n_heads": heads}
    q = Quantizer(bit=bit, symmetric=sym, granularity="per_head", **kw)
    _, scale, _ = q.quantize_with_params(x)
    assert scale.shape == (batch, tokens, heads, 1)
    ref = np.zeros(x.shape, dtype=np.float32)
    for b in range(batch):
        for t in range(tokens):
            for h in range(heads):
                sl = slice(h * hd, (h + 1) * hd)
                ref[b, t, sl] = ref_quant_row(x[b, t, sl].numpy(), bit, sym)[3]
    np.testing.assert_array_equal(q.fake_quant(x).numpy(), ref)


def test_per_head_needs_head_dim():
    with pytest.raises(ValueError, match="head_dim"):
        Quantizer(granularity="per_head")
    q = Quantizer(granularity="per_head", head_dim=5)
    with pytest.raises(ValueError, match=r"12.*5"):
        q.fake_quant(torch.zeros(2, 12))


# ------------------------------------------------------------------------------ grid properties
@pytest.mark.parametrize("bit", BITS)
@pytest.mark.parametrize("sym", [True, False])
def test_codes_in_grid_and_error_bound(bit, sym):
    x = rand(16, 64, seed=50 + bit) * 3
    q = Quantizer(bit=bit, symmetric=sym, granularity="per_channel")
    codes, scale, zero = q.quantize_with_params(x)
    qmin, qmax = (-(2 ** (bit - 1)), 2 ** (bit - 1) - 1) if sym else (0, 2 ** bit - 1)
    assert codes.dtype == (torch.int8 if sym else torch.uint8)
    c = codes.long()
    assert c.min() >= qmin and c.max() <= qmax
    # the extremes of each row use the ends of the grid
    if sym:
        assert (c.abs().amax(dim=1) == qmax).all()
    else:
        assert (c.amax(dim=1) == qmax).all() and (c.amin(dim=1) == 0).all()
    err = (q.fake_quant(x) - x).abs()
    assert (err <= scale / 2 * (1 + 1e-5)).all()
    # dequantize(quantize(x)) is fake_quant(x)
    torch.testing.assert_close(q.dequantize(codes, scale, zero), q.fake_quant(x), rtol=0, atol=0)


def test_hand_examples():
    # symmetric 4-bit: absmax 3.5, q_max 7 -> s = 0.5; x/s = -7, -2.4, 0.4, 7
    q = Quantizer(bit=4, symmetric=True, granularity="per_tensor")
    codes, scale, zero = q.quantize_with_params(torch.tensor([[-3.5, -1.2, 0.2, 3.5]]))
    assert codes.tolist() == [[-7, -2, 0, 7]] and scale.item() == 0.5 and zero.item() == 0
    # symmetric 8-bit: absmax 127 -> s = 1
    q = Quantizer(bit=8, symmetric=True, granularity="per_channel")
    codes = q.quantize(torch.tensor([[-127.0, -3.2, 0.6, 127.0]]))
    assert codes.tolist() == [[-127, -3, 1, 127]]
    # asymmetric 2-bit: range [-1, 2], q_max 3 -> s = 1, z = 1
    q = Quantizer(bit=2, symmetric=False, granularity="per_token")
    x = torch.tensor([[-1.0, 0.0, 0.4, 2.0]])
    codes, scale, zero = q.quantize_with_params(x)
    assert codes.tolist() == [[0, 1, 1, 3]] and scale.item() == 1.0 and zero.item() == 1.0
    assert q.fake_quant(x).tolist() == [[-1.0, 0.0, 0.0, 2.0]]
    # asymmetric range always contains 0: [1, 4] is widened to [0, 4] -> 3-bit s = 4/7, z = 0
    q = Quantizer(bit=3, symmetric=False, granularity="per_tensor")
    codes, scale, zero = q.quantize_with_params(torch.tensor([[1.0, 4.0]]))
    assert zero.item() == 0 and codes.tolist() == [[2, 7]]
    assert scale.item() == pytest.approx(4 / 7)


def test_config_and_kwargs():
    cfg = QuantizerConfig(bit=4, symmetric=False, granularity="per_group", group_size=8)
    a = Quantizer(cfg)
    b = Quantizer(bit=4, symmetric=False, granularity="per_group", group_size=8)
    x = rand(3, 16, seed=3)
    assert torch.equal(a.fake_quant(x), b.fake_quant(x))
    c = Quantizer(cfg, bit=8)  # keywords override the config
    assert c.bit == 8 and c.granularity == "per_group" and c.qmax == 255
    for bad in (1, 9):
        with pytest.raises(ValueError, match=str(bad)):
            Quantizer(bit=bad)


def test_group_size_must_divide():
    q = Quantizer(bit=4, granularity="per_group", group_size=32)
    with pytest.raises(ValueError) as e:
        q.fake_quant(torch.zeros(4, 100))
    assert "100" in str(e.value) and "32" in str(e.value)
    with pytest.raises(ValueError, match="group_size"):
        Quantizer(granularity="per_group", group_size=-1)


# ----------------------------------------------------------------------------------- robustness
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("gran", ["per_channel", "per_tensor", "per_group"])
@pytest.mark.parametrize("algo", ["minmax", "mse"])
def test_zero_range_rows_no_nan(sym, gran, algo):
    x = torch.zeros(3, 8)
    x[1] = 3.0   # constant row
    x[2] = -0.5
    x = x.requires_grad_()
    q = Quantizer(bit=4, symmetric=sym, granularity=gran, group_size=4, calib_algo=algo)
    y = q.fake_quant(x)
    assert torch.isfinite(y).all()
    assert (y[0] == 0).all()
    if gran != "per_tensor":  # a constant row is its own range: reproduced
        torch.testing.assert_close(y[1:], x[1:].detach(), rtol=1e-5, atol=1e-6)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    codes, scale, zero = q.quantize_with_params(torch.zeros(2, 8))
    assert (codes.long() == 0).all() and torch.isfinite(scale).all()


def test_bf16_stays_bf16():
    x = rand(4, 32, seed=5).to(torch.bfloat16)
    for gran in ("per_token", "per_tensor"):
        q = Quantizer(bit=8, symmetric=True, granularity=gran)
        y = q.fake_quant(x)
        assert y.dtype == torch.bfloat16
        ref = q.fake_quant(x.float()).to(torch.bfloat16)
        assert torch.equal(y, ref)
    g = Quantizer(bit=4, granularity="per_group", group_size=8)
    assert g.fake_quant(x).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------- mse search
def ref_mse_best_err(row, bit, sym, norm=2.4, grid=100, maxshrink=0.8):
    """Least sum |x_hat - x|^norm over GPTQ's shrink factors p = 1 - i/grid, in float64."""
    row = np.asarray(row, dtype=np.float64)
    lo, hi = min(row.min(), 0.0), max(row.max(), 0.0)
    qmin, qmax = (-(2 ** (bit - 1)), 2 ** (bit - 1) - 1) if sym else (0, 2 ** bit - 1)
    best = np.inf
    for i in range(int(maxshrink * grid)):
        p = 1 - i / grid
        if sym:
            s, z = max(p * max(-lo, hi) / qmax, 1e-8), 0.0
        else:
            s = max(p * (hi - lo) / qmax, 1e-8)
            z = min(max(np.round(-p * lo / s), qmin), qmax)
        xh = (np.clip(np.round(row / s) + z, qmin, qmax) - z) * s
        best = min(best, float(np.sum(np.abs(xh - row) ** norm)))
    return best


def row_err(y, x, norm):
    return ((y.double() - x.double()).abs() ** norm).sum(dim=-1)


@pytest.mark.parametrize("bit", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("norm", [2.0, 2.4])
def test_mse_never_worse_than_minmax(bit, sym, norm):
    x = rand(12, 64, seed=60 + bit)
    x[::3, 5] = 12.0  # outliers make clipping pay off
    mm = Quantizer(bit=bit, symmetric=sym, granularity="per_channel")
    ms = Quantizer(bit=bit, symmetric=sym, granularity="per_channel", calib_algo="mse", mse_norm=norm)
    e_mm, e_ms = row_err(mm.fake_quant(x), x, norm), row_err(ms.fake_quant(x), x, norm)
    assert (e_ms <= e_mm * (1 + 1e-5)).all()
    if bit <= 4:
        assert (e_ms < 0.9 * e_mm).any()  # the search does clip something
    s_mm, _ = mm.compute_params(x)
    s_ms, _ = ms.compute_params(x)
    assert (s_ms <= s_mm * (1 + 1e-6)).all()
    # the least error equals an independent grid search
    for r in (0, 1, 3):
        assert e_ms[r].item() == pytest.approx(ref_mse_best_err(x[r].numpy(), bit, sym, norm), rel=1e-4)


def test_mse_per_group_and_tensor():
    x = rand(4, 32, seed=7)
    x[0, 3] = 20.0
    for gran in ("per_group", "per_tensor"):
        mm = Quantizer(bit=3, granularity=gran, group_size=8)
        ms = Quantizer(bit=3, granularity=gran, group_size=8, calib_algo="mse")
        s_ms, _ = ms.compute_params(x)
        assert s_ms.shape == mm.compute_params(x)[0].shape
        e = lambda q: ((q.fake_quant(x) - x).abs() ** 2.4).sum()
        assert e(ms) <= e(mm)


# ----------------------------------------------------------------------------------------- STE
@pytest.mark.parametrize("sym", [True, False])
def test_ste_identity_inside_zero_outside(sym):
    q = Quantizer(bit=4, symmetric=sym, granularity="per_tensor")
    scale = torch.tensor([[0.25]])
    zero = torch.tensor([[0.0 if sym else 8.0]])
    # representable range: sym [-2.0, 1.75]; asym [-2.0, 1.75] (codes 0..15 with z = 8)
    x = torch.tensor([[-5.0, -1.9, -0.33, 0.0, 0.6, 1.7, 4.0]], requires_grad=True)
    y = q.fake_quant(x, scale, zero)
    y.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]]
    assert y[0, 0].item() == -2.0 and y[0, -1].item() == 1.75  # clamped to the grid's ends


def test_ste_gradient_to_scale_is_lsq():
    q = Quantizer(bit=4, symmetric=True, granularity="per_tensor")
    s = torch.tensor(0.3, requires_grad=True)
    xs = [0.4, -1.0, 10.0, -10.0]
    x = torch.tensor([xs])
    q.fake_quant(x, s).sum().backward()
    expect = 0.0
    for v in xs:  # LSQ: round(v/s) - v/s inside the grid, the clamped code outside
        t = v / 0.3
        code = round(t)
        expect += code - t if -8 <= code <= 7 else max(min(code, 7), -8)
    assert s.grad.item() == pytest.approx(expect, rel=1e-5)


def test_round_ste():
    t = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
    r = round_ste(t)
    assert r.tolist() == [0.0, 2.0, -2.0]
    r.sum().backward()
    assert t.grad.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("sym", [True, False])
def test_clip_factors_shrink_and_get_gradients(sym):
    w = rand(6, 16, seed=8)
    q = Quantizer(bit=4, symmetric=sym, granularity="per_channel", calib_algo="learnable")
    raw = torch.zeros(6, 1, requires_grad=True)
    raw_lo = torch.zeros(6, 1, requires_grad=True)
    cmax, cmin = torch.sigmoid(raw + 4.0), torch.sigmoid(raw_lo + 4.0)
    s_full, _ = q.compute_params(w)
    s_clip, z_clip = q.compute_params(w, clip_max=cmax, clip_min=cmin)
    assert (s_clip < s_full).all()
    torch.testing.assert_close(q.compute_params(w, torch.ones(6, 1), torch.ones(6, 1))[0], s_full)
    loss = ((q.fake_quant(w, clip_max=cmax, clip_min=cmin) - w) ** 2).sum()
    loss.backward()
    assert torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0
    assert torch.isfinite(raw_lo.grad).all() and raw_lo.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- static
def test_static_observer():
    q = Quantizer(bit=8, symmetric=False, granularity="per_tensor", static=True)
    with pytest.raises(RuntimeError, match="freeze"):
        q.fake_quant(torch.ones(2, 3))
    a, b = rand(4, 8, seed=1), rand(4, 8, seed=2) * 3
    q.observe(a)
    q.observe(b)
    scale, zero = q.freeze()
    lo = min(a.min().item(), b.min().item(), 0.0)
    hi = max(a.max().item(), b.max().item(), 0.0)
    assert scale.item() == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert zero.item() == round(-lo / ((hi - lo) / 255))
    # the frozen range is used for every input, also one with a wider range (clipped)
    big = torch.tensor([[100.0, -100.0, 0.0]])
    y = q.fake_quant(big)
    assert y[0, 0].item() == pytest.approx(scale.item() * (255 - zero.item()), rel=1e-6)
    dyn = Quantizer(bit=8, symmetric=False, granularity="per_tensor")
    assert not torch.equal(dyn.fake_quant(big), y)
    q.reset()
    assert not q.frozen


def test_static_rejects_other_granularities():
    with pytest.raises(ValueError, match="per_tensor"):
        Quantizer(granularity="per_token", static=True)
    with pytest.raises(ValueError, match="mse"):
        Quantizer(granularity="per_tensor", static=True, calib_algo="mse")
