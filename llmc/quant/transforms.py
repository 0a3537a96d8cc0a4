"""Online input transforms applied inside a linear before activation quantization, saved by name.

``OnlineHadamard`` multiplies the input by the orthonormal Hadamard matrix of its width (QuaRot,
Ashkboos et al. 2024; SpinQuant's R4, Liu et al. 2024): x -> x H^T / sqrt(n). The algorithm that adds it
folds the matching H into the layer's weight offline, so the float model is unchanged.

``OnlineHeadHadamard`` mixes the attention heads of o_proj's input: viewed as ``[..., heads, head_dim]``,
each of the ``head_dim`` positions gets the orthonormal Hadamard of order ``heads`` across the heads (QuaRot's
``online_partial_had``, ``fake_quant/main.py`` and ``quant_utils.ActQuantWrapper``). With the per-head
Hadamard that QuaRot folds into v_proj / o_proj, o_proj then reads ``x (H_heads (x) H_head_dim)``.

Every transform ``T`` here is orthogonal and acts on the last axis as ``x -> x Q^T``; the algorithm folds
it into the weight by applying the same ``T`` to the weight's rows (``W -> W Q^T``, :func:`fold_into`).
"""

from __future__ import annotations

from torch import nn

from .hadamard import apply_hadamard


class OnlineHadamard(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return apply_hadamard(x)

    def spec(self) -> dict:
        return {"kind": "hadamard", "n": self.n}

    def extra_repr(self) -> str:
        return f"n={self.n}"


class OnlineHeadHadamard(nn.Module):
    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim

    def forward(self, x):
        lead = x.shape[:-1]
        y = x.reshape(*lead, self.heads, self.head_dim).transpose(-1, -2)
        return apply_hadamard(y).transpose(-1, -2).reshape(*lead, self.heads * self.head_dim)

    def spec(self) -> dict:
        return {"kind": "head_hadamard", "heads": self.heads, "head_dim": self.head_dim}

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}"


TRANSFORMS = {"hadamard": lambda spec: OnlineHadamard(spec["n"]),
              "head_hadamard": lambda spec: OnlineHeadHadamard(spec["heads"], spec["head_dim"])}


def fold_into(linear: nn.Linear, transform: nn.Module) -> None:
    """The offline half of an online input transform: ``W <- T(W)`` on the weight's rows (float64), so that
    ``T(x) T(W)^T = x W^T`` for an orthogonal ``T``."""
    import torch
    with torch.no_grad():
        w = linear.weight
        w.data.copy_(transform(w.detach().to(torch.float64)).to(w.dtype))


def transform_from_spec(spec: dict) -> nn.Module:
    try:
        return TRANSFORMS[spec["kind"]](spec)
    except KeyError:
        raise ValueError(f"unknown input transform {spec!r}") from None
