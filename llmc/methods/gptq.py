"""GPTQ's settings (Frantar et al., ICLR 2023); the algorithm is ``llmc.algos.gptq``."""

from dataclasses import dataclass

from ..registry import MethodSpec, register_method


@dataclass
class GPTQSpecial:
    percdamp: float = 0.01          # dampening: percdamp * mean(diag H) added to the diagonal
    blocksize: int = 128            # columns per lazy batch update
    act_order: bool = False         # columns by decreasing diag(H)
    static_groups: bool = False     # per-group ranges fixed before the sweep
    true_sequential: bool = True    # subset by subset (q/k/v, o, gate/up, down)


SPEC = register_method(MethodSpec("GPTQ", GPTQSpecial), "llmc.algos.gptq:GPTQ")
