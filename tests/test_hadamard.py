"""Tests for llmc.quant.hadamard (Hadamard constructions and fast transform)."""

import math

import numpy as np
import pytest
import torch

from llmc.quant.hadamard import (
    BASE_ORDERS,
    apply_hadamard,
    factor_hadamard_order,
    hadamard_matrix,
    is_supported,
    random_hadamard_matrix,
)
from llmc.quant import hadamard as had

MODEL_SIZES = [64, 576, 896, 1536, 4864]


@pytest.mark.parametrize("m", BASE_ORDERS)
def test_base_matrices_exact(m):
    h = had._base_matrix(m).astype(np.int64)
    assert h.shape == (m, m)
    assert set(np.unique(h).tolist()) <= {-1, 1}
    np.testing.assert_array_equal(h @ h.T, m * np.eye(m, dtype=np.int64))


@pytest.mark.parametrize("t", sorted(had._WILLIAMSON_SEQUENCES))
def test_williamson_sequences(t):
    seqs = [np.array([1 if c == "+" else -1 for c in s]) for s in had._WILLIAMSON_SEQUENCES[t]]
    for s in seqs:
        assert len(s) == t
        np.testing.assert_array_equal(s[1:], s[1:][::-1])  # symmetric circulant
    paf = sum(np.array([s @ np.roll(s, k) for k in range(t)]) for s in seqs)
    np.testing.assert_array_equal(paf, [4 * t] + [0] * (t - 1))


@pytest.mark.parametrize("n", [1, 2, 8, 24, 40, 80, 104, 344, 312] + MODEL_SIZES + [768, 2048])
def test_hadamard_matrix_exact(n):
    h = hadamard_matrix(n, dtype=torch.float64)
    assert h.shape == (n, n)
    assert torch.all(h.abs() == 1)
    # +-1 entries: every partial sum is an integer < 2**53, so float64 matmul is exact.
    hht = (h @ h.T).to(torch.int64)
    assert torch.equal(hht, n * torch.eye(n, dtype=torch.int64))


def test_factorisation():
    assert factor_hadamard_order(64) == (64, 1)
    assert factor_hadamard_order(576) == (16, 36)
    assert factor_hadamard_order(896) == (32, 28)
    assert factor_hadamard_order(1536) == (128, 12)
    assert factor_hadamard_order(4864) == (64, 76)
    assert factor_hadamard_order(80) == (4, 20)
    assert factor_hadamard_order(172) == (1, 172)
    assert all(is_supported(n) for n in MODEL_SIZES + [156 * 2, 172 * 8, 52])


def test_kronecker_convention():
    h = hadamard_matrix(16 * 36, dtype=torch.float64)
    ref = torch.kron(hadamard_matrix(16, dtype=torch.float64), hadamard_matrix(36, dtype=torch.float64))
    assert torch.equal(h, ref)
    h40 = torch.from_numpy(had._base_matrix(40).astype(np.float64))
    assert torch.equal(h40, hadamard_matrix(40, dtype=torch.float64))


@pytest.mark.parametrize("n", [7, 6, 44, 100, 132, 0, -4])
def test_unsupported(n):
    assert not is_supported(n)
    with pytest.raises(ValueError, match="2\\^k \\* m"):
        hadamard_matrix(n)
    if n > 0:
        with pytest.raises(ValueError):
            apply_hadamard(torch.zeros(2, n))
        with pytest.raises(ValueError):
            random_hadamard_matrix(n, seed=0)


@pytest.mark.parametrize("n", MODEL_SIZES + [156, 344, 512, 2048, 12 * 1024])  # 2048, 12 * 1024: butterfly path
@pytest.mark.parametrize("lead", [(), (3,), (2, 5)])
def test_apply_matches_dense(n, lead):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(*lead, n, generator=g, dtype=torch.float64)
    h = hadamard_matrix(n, dtype=torch.float64)
    y = apply_hadamard(x)
    assert y.shape == x.shape and y.dtype == torch.float64
    torch.testing.assert_close(y, x @ h.T / math.sqrt(n), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(apply_hadamard(x, scale=False), x @ h.T, rtol=1e-10, atol=1e-9)
    # orthonormal: norms preserved
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-10, atol=1e-10)


def test_apply_float32_and_noncontiguous():
    n = 896
    x = torch.randn(n, 6, dtype=torch.float32).T  # non-contiguous (6, n)
    ref = x.double() @ hadamard_matrix(n, dtype=torch.float64).T / math.sqrt(n)
    y = apply_hadamard(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    n = 576
    x = torch.randn(4, n, dtype=torch.float64)
    ref = x @ hadamard_matrix(n, dtype=torch.float64).T / math.sqrt(n)
    y = apply_hadamard(x.to(dtype))
    assert y.dtype == dtype
    rel = (y.double() - ref).norm() / ref.norm()
    assert rel < 1e-2


def test_gradient():
    n = 1536
    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, n, dtype=torch.float64)
    (apply_hadamard(x) * w).sum().backward()
    h = hadamard_matrix(n, dtype=torch.float64)
    torch.testing.assert_close(x.grad, w @ h / math.sqrt(n), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [64, 576, 896])
def test_random_hadamard(n):
    q1 = random_hadamard_matrix(n, seed=1, dtype=torch.float64)
    q2 = random_hadamard_matrix(n, seed=2, dtype=torch.float64)
    torch.testing.assert_close(q1 @ q1.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    assert not torch.equal(q1, q2)
    assert torch.equal(q1, random_hadamard_matrix(n, seed=1, dtype=torch.float64))
    # Q = diag(s) H^T / sqrt(n): row signs s, so that x @ Q == apply_hadamard(x * s) (signs first)
    h = hadamard_matrix(n, dtype=torch.float64)
    ratio = q1 * math.sqrt(n) / h.T
    s = ratio[:, 0]
    assert torch.all(s.abs() == 1) and torch.equal(ratio, s[:, None].expand(n, n))
    x = torch.randn(5, n, dtype=torch.float64)
    torch.testing.assert_close(x @ q1, apply_hadamard(x * s), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [64, 576])
def test_random_hadamard_seeds_change_the_symmetric_quantization_error(n):
    """With the signs before the transform, two seeds rotate the same input differently, so a symmetric
    per-token 4-bit quantizer makes different errors (signs after the transform only flip the signs of
    the outputs, which a symmetric grid does not see: every seed would give the plain Hadamard's error)."""
    from llmc.quant.quantizer import Quantizer
    q = Quantizer(bit=4, symmetric=True, granularity="per_token")
    x = torch.randn(32, n, dtype=torch.float64)
    x[:, 3] *= 20   # an outlier channel
    errors = []
    for seed in (1, 2):
        r = random_hadamard_matrix(n, seed=seed, dtype=torch.float64)
        torch.testing.assert_close(r @ r.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
        y = x @ r
        errors.append(float((q.fake_quant(y) - y).pow(2).sum()))
    assert errors[0] != errors[1]
    plain = apply_hadamard(x)
    plain_err = float((q.fake_quant(plain) - plain).pow(2).sum())
    assert plain_err not in errors


def test_random_hadamard_generator_and_dtype():
    g = torch.Generator().manual_seed(0)
    q = random_hadamard_matrix(1536, generator=g, dtype=torch.bfloat16)
    assert q.dtype == torch.bfloat16 and q.shape == (1536, 1536)
