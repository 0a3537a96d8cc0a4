"""SpinQuant's settings (Liu et al., 2024; ICLR 2025); the algorithm is ``llmc.algos.spinquant`` (its
docstring explains every setting against the official scripts)."""

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from ..errors import ConfigError
from ..registry import MethodSpec, register_method
from .gptq import GPTQSpecial


@dataclass
class SpinQuantSpecial(GPTQSpecial):
    """GPTQ's settings for the weights (``percdamp``, ``blocksize``, ``act_order``, ``static_groups``,
    ``true_sequential``), and the rotations':"""
    r1: bool = True                 # residual-stream rotation (learned)
    r2: bool = True                 # per-layer head rotation of V / O (learned)
    r3: Optional[bool] = None       # online Hadamard on Q, K after RoPE; None: on iff quant.kvcache is set
    r4: bool = True                 # online Hadamard on down_proj's input
    learn_rotations: bool = True    # false: random Hadamard R1 / R2 only (the ablation; QuaRot-like)
    rotate_mode: Literal["hadamard", "random"] = "hadamard"  # initialisation (the official rotate_mode)
    rotation_seed: int = 0
    lr: float = 1.5
    steps: int = 100
    train_bs: int = 8               # windows per optimiser step (official: 8 GPUs x 1)
    train_seq_len: Optional[int] = None  # tokens per window in learning; None: calib.seq_len
    max_grad_norm: float = 1.0      # HF Trainer's default clipping; <= 0 disables
    momentum: float = 0.0
    train_w_quant: Optional[bool] = None  # fake-quantize weights while learning; None: iff weight_algo rtn
    weight_algo: Literal["gptq", "rtn"] = "gptq"
    gptq_samples: Optional[int] = 128     # calibration windows for GPTQ's block loop; None: all


def requires_calibration(cfg) -> bool:
    """Random rotations with RTN weights (or none) need no calibration text, unless activations are static."""
    sp, q = cfg.quant.special, cfg.quant
    if dataclasses.is_dataclass(sp) and not sp.learn_rotations and (sp.weight_algo == "rtn" or q.weight is None):
        return bool(q.act is not None and q.act.static)
    return True


def validate(cfg) -> None:
    """Settings SpinQuant cannot run (the Hadamard sizes are checked against the model when it runs)."""
    sp = cfg.quant.special
    if sp.steps < 0:
        raise ConfigError("quant.special.steps: must be >= 0")
    if sp.train_bs < 1:
        raise ConfigError("quant.special.train_bs: must be a positive integer")
    if sp.lr <= 0:
        raise ConfigError("quant.special.lr: must be positive")
    if sp.train_seq_len is not None and sp.train_seq_len < 2:
        raise ConfigError("quant.special.train_seq_len: must be >= 2 (next-token loss) or null")
    if sp.gptq_samples is not None and sp.gptq_samples < 1:
        raise ConfigError("quant.special.gptq_samples: must be a positive integer or null")
    if not 0 <= sp.momentum < 1:
        raise ConfigError("quant.special.momentum: must be in [0, 1)")


UNLEARNED_LABEL = "SpinQuant w/o learning"


def label(cfg) -> str:
    """Rotations that are not learned (``learn_rotations: false``: the random Hadamard R1 / R2 SpinQuant
    starts from, the paper's ablation and QuaRot's rotations) are not the published method: their rows are
    "SpinQuant w/o learning"."""
    return "SpinQuant" if cfg.quant.special.learn_rotations else UNLEARNED_LABEL


SPEC = register_method(MethodSpec("SpinQuant", SpinQuantSpecial, validate=validate, label=label,
                                  requires_calibration=requires_calibration), "llmc.algos.spinquant:SpinQuant")
