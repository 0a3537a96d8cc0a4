"""QuaRot's settings (Ashkboos et al., NeurIPS 2024, "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs");
the algorithm is ``llmc.algos.quarot`` (its docstring maps every setting to the official ``fake_quant``
scripts)."""

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from ..errors import ConfigError
from ..registry import MethodSpec, register_method
from .gptq import GPTQSpecial


@dataclass
class QuaRotSpecial(GPTQSpecial):
    """GPTQ's settings for the weights (``percdamp``, ``blocksize``, ``act_order``, ``static_groups``,
    ``true_sequential``), and the rotations':"""
    r1: bool = True                 # random Hadamard on the residual stream (official --rotate)
    r2: bool = True                 # Hadamard per head on V / O, plus the online mixing before o_proj
    r3: Optional[bool] = None       # online Hadamard on Q, K after RoPE; None: on iff quant.kvcache is set
    r4: bool = True                 # online Hadamard on down_proj's input
    rotate_mode: Literal["hadamard", "random"] = "hadamard"   # R1 (the official --rotate_mode)
    rotation_seed: int = 0
    # o_proj's online transform: "heads" is QuaRot's (a Hadamard of order num_heads across the heads);
    # "full" a Hadamard of o_proj's whole input width, for head counts with no Hadamard matrix (9, 14, ...);
    # "auto": "heads" where that order exists, else "full" (the run records which)
    o_proj_online: Literal["auto", "heads", "full"] = "auto"
    weight_algo: Literal["gptq", "rtn"] = "gptq"   # official: GPTQ unless --w_rtn
    gptq_samples: Optional[int] = None  # GPTQ's block loop on the first N calibration windows; None: all


def requires_calibration(cfg) -> bool:
    """RTN weights need no calibration text, unless activations are static."""
    sp, q = cfg.quant.special, cfg.quant
    if dataclasses.is_dataclass(sp) and (sp.weight_algo == "rtn" or q.weight is None):
        return bool(q.act is not None and q.act.static)
    return True


def validate(cfg) -> None:
    sp = cfg.quant.special
    if sp.gptq_samples is not None and sp.gptq_samples < 1:
        raise ConfigError("quant.special.gptq_samples: must be a positive integer or null")


SPEC = register_method(MethodSpec("QuaRot", QuaRotSpecial, validate=validate,
                                  requires_calibration=requires_calibration), "llmc.algos.quarot:QuaRot")
