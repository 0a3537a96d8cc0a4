"""What each built-in method is, without importing it: the dataclass that types its ``quant.special``,
its config checks, whether it calibrates and the label tables give it (torch-free, one file per method).

How a method runs is in ``llmc.algos`` (one file each); the two are joined in ``llmc.registry`` by
``register_method(spec, "llmc.algos.<module>:<Class>")``, and the algorithm is imported only when a run
needs it. ``llmc.catalog`` imports this package.
"""

from . import awq, gptq, omniquant, quarot, rtn, smoothquant, spinquant  # noqa: F401  (each registers its spec)
