"""Where INT8 loses accuracy, block by block: the INT8 sensitivity analysis.

:mod:`.blocks` maps nodes to residual blocks, :mod:`.splice` builds the FP32 model with one block quantized,
:mod:`.metrics` measures the error and the residual scales, :mod:`.result` holds what was found, :mod:`.chart`
draws it, and :mod:`.run` runs it all:
:func:`analyze_sensitivity` on two model files, :func:`analyze_quantization` on two loaded models.
"""

from __future__ import annotations

from resnet_edge.quantization.sensitivity.blocks import (
    HEAD,
    STEM,
    BlockMap,
    block_sort_key,
    exclusion_items,
    map_blocks,
)
from resnet_edge.quantization.sensitivity.chart import write_chart
from resnet_edge.quantization.sensitivity.metrics import (
    RESIDUAL_SCALE_RATIO,
    BlockError,
    ResidualScales,
    TensorError,
    residual_scales,
)
from resnet_edge.quantization.sensitivity.result import SensitivityResult
from resnet_edge.quantization.sensitivity.run import (
    DEFAULT_IMAGES,
    SensitivityOptions,
    analyze_quantization,
    analyze_sensitivity,
)
from resnet_edge.quantization.sensitivity.splice import isolate_block

__all__ = [
    "DEFAULT_IMAGES",
    "HEAD",
    "RESIDUAL_SCALE_RATIO",
    "STEM",
    "BlockError",
    "BlockMap",
    "ResidualScales",
    "SensitivityOptions",
    "SensitivityResult",
    "TensorError",
    "analyze_quantization",
    "analyze_sensitivity",
    "block_sort_key",
    "exclusion_items",
    "isolate_block",
    "map_blocks",
    "residual_scales",
    "write_chart",
]
