"""Hadamard matrices and fast Hadamard transforms for rotation-based quantization.

A Hadamard matrix ``H`` of order ``n`` has entries +-1 and ``H @ H.T == n * I``.
``H / sqrt(n)`` is orthogonal; QuaRot (Ashkboos et al., 2024, "QuaRot: Outlier-Free
4-Bit Inference in Rotated LLMs") and SpinQuant (Liu et al., 2024, "SpinQuant: LLM
Quantization with Learned Rotations") rotate weights and activations with such
matrices (SpinQuant initialises its learned rotations with random Hadamard
matrices) to spread outliers before quantization.

Supported orders are ``n = 2**k * m`` with ``m`` in :data:`BASE_ORDERS`.  Kronecker
convention used everywhere in this module::

    H_n = H_{2**k} (x) H_m        (numpy.kron(H_pow2, H_m))

so that for ``x`` viewed as ``(..., 2**k, m)`` the transform ``x @ H_n.T`` is
``H_{2**k} @ X @ H_m.T``: a dense ``m x m`` product on the last axis followed by a
Walsh-Hadamard butterfly on the ``2**k`` axis (O(n log n)).

Constructions of the base matrices ``H_m``:

* ``2**k`` -- Sylvester (1867): ``H_2 (x) H_2 (x) ...``, i.e.
  ``H[i, j] = (-1) ** popcount(i & j)``.
* Paley (1933, "On orthogonal matrices", J. Math. Phys. 12), with the quadratic
  character ``chi`` of GF(q) and the Jacobsthal matrix ``Q[i, j] = chi(a_j - a_i)``:

  - construction I, ``q = 3 (mod 4)``, order ``q + 1``: ``H = I + S`` with the skew
    conference matrix ``S = [[0, 1^T], [-1, Q]]``.  Used for 12 (q=11), 20 (q=19),
    60 (q=59), 108 (q=107), 140 (q=139).
  - construction II, ``q = 1 (mod 4)``, order ``2 (q + 1)``: with the symmetric
    conference matrix ``C = [[0, 1^T], [1, Q]]``,
    ``H = C (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]]``.  Used for 28 (q=13),
    36 (q=17), 52 (q=25, over GF(5^2) = GF(5)[x]/(x^2 - 2)), 76 (q=37).
* 40 = Sylvester ``H_2 (x) H_20``.
* Williamson (1944, "Hadamard's determinant theorem and the sum of four squares",
  Duke Math. J. 11): four symmetric +-1 circulants ``A, B, C, D`` of order ``t`` with
  ``A A^T + B B^T + C C^T + D D^T = 4 t I`` give the order-``4t`` matrix
  ``[[A, B, C, D], [-B, A, -D, C], [-C, D, A, -B], [-D, -C, B, A]]``
  (the Goethals-Seidel 1970 array generalises it to non-symmetric circulants; not
  needed here).  Used for 156 (t=39) and 172 (t=43), for which no Paley
  construction applies.  The defining sequences are published data; see
  :data:`_WILLIAMSON_SEQUENCES`.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = [
    "BASE_ORDERS",
    "factor_hadamard_order",
    "is_supported",
    "hadamard_matrix",
    "apply_hadamard",
    "random_hadamard_matrix",
]

#: Non-power-of-two factors ``m`` (plus 1) for which ``n = 2**k * m`` is supported.
BASE_ORDERS: Tuple[int, ...] = (1, 12, 20, 28, 36, 40, 52, 60, 76, 108, 140, 156, 172)

# First rows of symmetric Williamson circulants (+ = 1, - = -1), as tabulated in
# SageMath's ``sage/combinat/matrices/hadamard_matrix.py``
# (``williamson_type_quadruples_smallcases``): t = 43 from M. Hall, "Combinatorial
# Theory" (Baumert-Hall), t = 39 from S. London, "Constructing new Turyn type
# sequences, T-sequences and Hadamard matrices", PhD thesis, 2013.  Only the data is
# taken; the property is re-checked in tests/test_hadamard.py.
_WILLIAMSON_SEQUENCES = {
    39: (
        "+++--+-+-----+--++----++--+-----+-+--++",
        "+++--++-+---+-+--+----+--+-+---+-++--++",
        "++++---+--++----+-+--+-+----++--+---+++",
        "+---++-+-+-----+++-++-+++-----+-+-++---",
    ),
    43: (
        "++---++++-+--+--++--------++--+--+-++++---+",
        "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++",
        "++-++++++----+-+--++-++-++--+-+----++++++-+",
        "+---++--++++-+-+++-++--++-+++-+-++++--++---",
    ),
}

# Paley constructions: m -> (kind, q).
_PALEY = {
    12: ("I", 11), 20: ("I", 19), 60: ("I", 59), 108: ("I", 107), 140: ("I", 139),
    28: ("II", 13), 36: ("II", 17), 52: ("II", 25), 76: ("II", 37),
}


def _supported_message(n: int) -> str:
    ms = ", ".join(str(m) for m in BASE_ORDERS)
    return f"Hadamard order n={n} is not supported: need n = 2^k * m with m in {{{ms}}}"


def factor_hadamard_order(n: int) -> Tuple[int, int]:
    """Return ``(2**k, m)`` with ``n = 2**k * m`` and ``m`` in :data:`BASE_ORDERS`.

    The smallest such ``m`` is chosen (so 80 -> (4, 20), not (2, 40); both give
    the same matrix since H_40 = H_2 (x) H_20).  Raises ``ValueError`` if none exists.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(_supported_message(n))
    n = int(n)
    for m in sorted(BASE_ORDERS):
        if n % m == 0:
            p = n // m
            if p & (p - 1) == 0:
                return p, m
    raise ValueError(_supported_message(n))


def is_supported(n: int) -> bool:
    """Whether :func:`hadamard_matrix` can build a Hadamard matrix of order ``n``."""
    try:
        factor_hadamard_order(n)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------
# Base constructions (numpy int8, cached)
# ----------------------------------------------------------------------------------


def _sylvester(n: int) -> np.ndarray:
    """Sylvester (1867): ``H[i, j] = (-1)**popcount(i & j)`` for ``n = 2**k``."""
    idx = np.arange(n)
    bits = np.bitwise_and(idx[:, None], idx[None, :])
    parity = np.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).astype(np.int8)


def _field(q: int):
    """Elements of GF(q), q = p or p^2 (p odd prime), and their quadratic character.

    Elements are pairs ``(a, b)`` meaning ``a + b*x`` with ``x^2 = r`` (``r`` a
    non-residue mod p); for prime ``q`` only ``b = 0`` occurs.  Returns
    ``(elements, chi_of_difference)`` where ``chi_of_difference[i, j] = chi(e_j - e_i)``.
    """
    p = next(d for d in range(2, q + 1) if q % d == 0)
    e = 1
    while p ** e < q:
        e += 1
    if p ** e != q or e > 2 or p == 2:
        raise ValueError(f"GF({q}) is not implemented (need an odd prime or its square)")
    if e == 1:
        elems = [(a, 0) for a in range(p)]
        r = 0
    else:
        squares_mod_p = {(a * a) % p for a in range(1, p)}
        r = next(c for c in range(2, p) if c not in squares_mod_p)  # x^2 = r irreducible
        elems = [(a, b) for b in range(p) for a in range(p)]

    def mul(u, v):
        return ((u[0] * v[0] + r * u[1] * v[1]) % p, (u[0] * v[1] + u[1] * v[0]) % p)

    squares = {mul(u, u) for u in elems if u != (0, 0)}
    chi = np.zeros((q, q), dtype=np.int64)
    for i, u in enumerate(elems):
        for j, v in enumerate(elems):
            d = ((v[0] - u[0]) % p, (v[1] - u[1]) % p)
            chi[i, j] = 0 if d == (0, 0) else (1 if d in squares else -1)
    return elems, chi


def _conference(q: int, skew: bool) -> np.ndarray:
    """Paley conference matrix of order q+1: [[0, 1^T], [-+1, Q]] (Q Jacobsthal)."""
    _, jac = _field(q)
    c = np.zeros((q + 1, q + 1), dtype=np.int64)
    c[0, 1:] = 1
    c[1:, 0] = -1 if skew else 1
    c[1:, 1:] = jac
    return c


def _paley_I(q: int) -> np.ndarray:
    """Paley construction I (q = 3 mod 4): H = I + S, order q + 1."""
    assert q % 4 == 3
    return np.eye(q + 1, dtype=np.int64) + _conference(q, skew=True)


def _paley_II(q: int) -> np.ndarray:
    """Paley construction II (q = 1 mod 4): order 2(q + 1)."""
    assert q % 4 == 1
    c = _conference(q, skew=False)
    return np.kron(c, np.array([[1, 1], [1, -1]])) + np.kron(
        np.eye(q + 1, dtype=np.int64), np.array([[1, -1], [-1, -1]])
    )


def _circulant(row: np.ndarray) -> np.ndarray:
    """Circulant matrix with first row ``row``: C[i, j] = row[(j - i) mod t]."""
    t = len(row)
    idx = (np.arange(t)[None, :] - np.arange(t)[:, None]) % t
    return row[idx]


def _williamson(t: int) -> np.ndarray:
    """Williamson (1944) array of order 4t from four symmetric circulants."""
    a, b, c, d = (
        _circulant(np.array([1 if ch == "+" else -1 for ch in s], dtype=np.int64))
        for s in _WILLIAMSON_SEQUENCES[t]
    )
    return np.block([[a, b, c, d], [-b, a, -d, c], [-c, d, a, -b], [-d, -c, b, a]])


@functools.lru_cache(maxsize=None)
def _base_matrix(m: int) -> np.ndarray:
    """The cached m x m base Hadamard matrix (int8, read-only)."""
    if m == 1:
        h = np.ones((1, 1), dtype=np.int64)
    elif m in _PALEY:
        kind, q = _PALEY[m]
        h = _paley_I(q) if kind == "I" else _paley_II(q)
    elif m == 40:
        h = np.kron(_sylvester(2), _base_matrix(20))
    elif m in (156, 172):
        h = _williamson(m // 4)
    else:
        raise ValueError(_supported_message(m))
    h = h.astype(np.int8)
    h.flags.writeable = False
    return h


# ----------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------


def hadamard_matrix(
    n: int, dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None
) -> torch.Tensor:
    """Dense +-1 Hadamard matrix ``H_n = H_{2**k} (x) H_m`` with ``H H^T = n I``.

    Raises ``ValueError`` if ``n`` is not of the form ``2**k * m``, m in BASE_ORDERS.
    """
    p, m = factor_hadamard_order(n)
    h = np.kron(_sylvester(p), _base_matrix(m))
    return torch.from_numpy(h.astype(np.int8)).to(dtype=dtype, device=device)


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform (Sylvester order) along dim -2.

    ``x`` has shape (B, p, m) with p a power of two; returns ``H_p @ x`` batched.
    """
    b, p, m = x.shape
    h = 1
    while h < p:
        y = x.reshape(b, p // (2 * h), 2, h, m)
        lo, hi = y[:, :, 0], y[:, :, 1]
        x = torch.stack((lo + hi, lo - hi), dim=2).reshape(b, p, m)
        h *= 2
    return x


# Up to this order the power-of-two factor is one dense H_p product (at most 1 MB of float32): on a CPU
# that is faster than log2(p) butterfly stages, each of which allocates (SmolLM2's 1536 = 128 x 12:
# 1.9 -> 1.3 ms per 128 x 1536 bf16 input, one thread beside another job; end to end within the noise of
# Track 2). Larger orders keep the O(n log n) butterfly.
DENSE_POW2_MAX = 512


@functools.lru_cache(maxsize=64)
def _factor_tensor(kind: str, order: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The +-1 matrix ``H_order`` (``kind`` 'pow2': Sylvester, 'base': the m x m base), cached per dtype and
    device so that an online transform does not rebuild it on every call."""
    h = _sylvester(order) if kind == "pow2" else _base_matrix(order)
    return torch.from_numpy(h.astype(np.int8)).to(dtype=dtype, device=device)


def apply_hadamard(x: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """Return ``x @ H_n.T`` (divided by ``sqrt(n)`` if ``scale``), n = x.shape[-1].

    Computed as ``H_{2**k} @ (X @ H_m.T)`` on ``X = x.reshape(..., 2**k, m)`` (the Kronecker structure
    ``H_n = H_{2**k} (x) H_m``): one dense m x m product, then the power-of-two factor as one dense product
    (2**k <= DENSE_POW2_MAX) or an O(n log n) butterfly. With ``scale=True`` the map is orthonormal.
    bf16/fp16 inputs are computed in float32 and cast back once (no intermediate rounding); works for any
    leading shape and is differentiable.
    """
    n = x.shape[-1]
    p, m = factor_hadamard_order(n)
    out_dtype = x.dtype
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    lead = work.shape[:-1]
    y = work.reshape(-1, p, m)
    if m > 1:
        y = y @ _factor_tensor("base", m, work.dtype, work.device).T
    if p > DENSE_POW2_MAX:
        y = _fwht(y)
    elif p > 1:
        y = torch.matmul(_factor_tensor("pow2", p, work.dtype, work.device), y)
    if scale:
        y = y / math.sqrt(n)
    return y.reshape(*lead, n).to(out_dtype)


def random_hadamard_matrix(
    n: int,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Random orthonormal Hadamard matrix ``Q = diag(s) H_n^T / sqrt(n)``, s in {+-1}^n.

    Applied as the rotations are (``x @ Q``), the signs come *first*: ``x @ Q == apply_hadamard(x * s)``,
    as SpinQuant's ``random_hadamard_matrix`` (``utils/hadamard_utils.py``: ``matmul_hadU(diag(s))``)
    and QuaRot's. Signs after the transform (``H diag(s)``) would leave the symmetric quantization error of
    every seed equal to the plain Hadamard's, so the seed must act before ``H``.
    Randomness comes from ``generator`` (CPU), else from ``seed``, else the global RNG.
    """
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    h = hadamard_matrix(n, dtype=torch.float64)  # validates n before drawing signs
    s = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
    q = s[:, None] * h.T / math.sqrt(n)
    return q.to(dtype=dtype, device=device)
