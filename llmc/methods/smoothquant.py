"""SmoothQuant's settings (Xiao et al., ICML 2023); the algorithm is ``llmc.algos.smoothquant``."""

from dataclasses import dataclass

from ..registry import MethodSpec, register_method


@dataclass
class SmoothQuantSpecial:
    alpha: float = 0.8              # migration strength (eq. 4); LLMC's Llama configs use 0.8
    smooth_vo: bool = False         # also smooth v_proj -> o_proj
    smooth_down: bool = False       # also smooth up_proj -> down_proj


SPEC = register_method(MethodSpec("SmoothQuant", SmoothQuantSpecial), "llmc.algos.smoothquant:SmoothQuant")
