"""OmniQuant's settings (Shao et al., ICLR 2024) and the label of our keep-best variant; the algorithm is
``llmc.algos.omniquant`` (its docstring explains every setting against the official code)."""

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from ..registry import MethodSpec, register_method


@dataclass
class OmniQuantSpecial:
    lwc: bool = True                # learnable weight clipping
    let: bool = True                # learnable equivalent transformation (scales)
    let_shift: bool = False         # LET channel shift: not supported (needs norm biases)
    lwc_lr: float = 1e-2
    let_lr: float = 5e-3
    wd: float = 0.0
    epochs: int = 20
    aug_loss: bool = False
    let_alpha: float = 0.5          # official --alpha: SmoothQuant-style init of the LET scales
    lwc_init: float = 4.0           # official init_value of upbound/lowbound factors (sigmoid -> 0.982)
    let_init: Literal["absmax", "signed_max"] = "absmax"   # weight maximum in the LET init (see the docstring)
    diverge_factor: float = 10.0    # keep-best only: a batch loss above this x its initial loss ends an attempt
    keep_best: bool = False         # ours (OmniQuant+KB): keep the lowest-loss parameters, retry at lower lr
    lr_retries: int = 2             # ours (OmniQuant+KB): retries (lrs halved) while a block ends no better than init


def validate(cfg) -> None:
    """Settings OmniQuant cannot run, refused before a model loads."""
    sp, q = cfg.quant.special, cfg.quant
    if sp.let_shift:
        raise ConfigError("quant.special.let_shift: not supported: folding the LET shift needs a bias on "
                          "the RMSNorm (and o_proj), which Llama-style models do not have")
    if sp.epochs < 0:
        raise ConfigError("quant.special.epochs: must be >= 0")
    for key in ("lwc_lr", "let_lr"):
        if getattr(sp, key) <= 0:
            raise ConfigError(f"quant.special.{key}: must be > 0")
    if sp.wd < 0:
        raise ConfigError("quant.special.wd: must be >= 0")
    if not 0.0 <= sp.let_alpha <= 1.0:
        raise ConfigError("quant.special.let_alpha: must be in [0, 1]")
    if not sp.diverge_factor > 1.0:
        raise ConfigError("quant.special.diverge_factor: must be > 1")
    if sp.lwc and q.weight is None:
        raise ConfigError("quant.special.lwc: learnable weight clipping needs quant.weight (set lwc: false "
                          "for activation-only quantization)")
    if sp.epochs > 0 and not (sp.lwc or sp.let):
        raise ConfigError("quant.special: epochs > 0 needs lwc or let (nothing to train)")
    if sp.lwc and q.weight.calib_algo == "mse":
        raise ConfigError("quant.weight.calib_algo: 'mse' conflicts with lwc (the learned clipping sets "
                          "the range); use minmax or learnable")
    if q.act is not None and q.act.static:
        raise ConfigError("quant.act.static: OmniQuant trains with dynamic activation ranges (as the "
                          "original); static ranges are not supported")


def label(cfg) -> str:
    """Keep-best is ours, not the authors' procedure: its rows are "OmniQuant+KB"."""
    return "OmniQuant+KB" if cfg.quant.special.keep_best else "OmniQuant"


SPEC = register_method(MethodSpec("OmniQuant", OmniQuantSpecial, validate=validate, label=label),
                       "llmc.algos.omniquant:OmniQuant")
