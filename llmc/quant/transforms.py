"""Online input transforms applied inside a linear before activation quantization, saved by name.

``OnlineHadamard`` multiplies the input by the orthonormal Hadamard matrix of its width (QuaRot,
Ashkboos et al. 2024; SpinQuant's R4, Liu et al. 2024): x -> x H^T / sqrt(n). The algorithm that adds it
folds the matching H into the layer's weight offline, so the float model is unchanged.
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


TRANSFORMS = {"hadamard": lambda spec: OnlineHadamard(spec["n"])}


def transform_from_spec(spec: dict) -> nn.Module:
    try:
        return TRANSFORMS[spec["kind"]](spec)
    except KeyError:
        raise ValueError(f"unknown input transform {spec!r}") from None
