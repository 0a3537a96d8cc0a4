"""AWQ's settings (Lin et al., MLSys 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration"); the algorithm is ``llmc.algos.awq`` (its docstring maps them to the official ``llm-awq``)."""

from dataclasses import dataclass

from ..errors import ConfigError
from ..registry import MethodSpec, register_method


@dataclass
class AWQSpecial:
    auto_scale: bool = True         # the activation-aware scale search (official: on)
    auto_clip: bool = True          # the weight clipping search after it (official --mse_range: on)
    n_grid: int = 20                # scale exponents alpha = 0, 1/20, ..., 19/20; clip shrinks of 1/20
    max_shrink: float = 0.5         # clipping tries max |w| x (1 - i / n_grid), i < max_shrink x n_grid
    clip_tokens: int = 512          # tokens (evenly strided) the clipping search sees (n_sample_token)


def validate(cfg) -> None:
    sp, q = cfg.quant.special, cfg.quant
    if sp.n_grid < 1:
        raise ConfigError("quant.special.n_grid: must be a positive integer")
    if not 0 < sp.max_shrink < 1:
        raise ConfigError("quant.special.max_shrink: must be in (0, 1)")
    if sp.clip_tokens < 1:
        raise ConfigError("quant.special.clip_tokens: must be a positive integer")
    if q.weight is None:
        raise ConfigError("quant.weight: AWQ searches for a weight quantizer; set quant.weight")
    if q.weight.calib_algo != "minmax":
        raise ConfigError("quant.weight.calib_algo: AWQ's own clipping search replaces the range search; "
                          "use minmax")


SPEC = register_method(MethodSpec("AWQ", AWQSpecial, validate=validate), "llmc.algos.awq:AWQ")
