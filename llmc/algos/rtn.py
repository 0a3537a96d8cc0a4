"""Round-to-nearest: every block linear quantized on its own grid, no calibration (the baseline)."""

from ..methods.rtn import RTNSettings
from .base import BlockwiseAlgorithm


class RTN(BlockwiseAlgorithm):
    """Weights rounded to the nearest grid point (``calib_algo: mse`` searches a clipping range first);
    activations fake-quantized at run time as configured."""

    special_cls = RTNSettings
    needs_calib = False
