"""Round-to-nearest: every block linear quantized on its own grid, no calibration (the baseline)."""

from ..registry import register_algo
from .base import BlockwiseAlgorithm


@register_algo("RTN")
class RTN(BlockwiseAlgorithm):
    """Weights rounded to the nearest grid point (``calib_algo: mse`` searches a clipping range first);
    activations fake-quantized at run time as configured."""

    needs_calib = False
