"""Round-to-nearest (the baseline): no settings, no calibration."""

from dataclasses import dataclass

from ..registry import MethodSpec, register_method


@dataclass
class RTNSettings:
    """RTN has no method-specific settings (an empty ``quant.special``)."""


SPEC = register_method(MethodSpec("RTN", RTNSettings, needs_calib=False), "llmc.algos.rtn:RTN")
