"""onnxruntime's ``CalibrationDataReader`` over an image source, streaming one batch at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from resnet_edge.calibration.preprocess import PreprocessSpec
from resnet_edge.calibration.sources import ImageSource, Sample, iter_batches


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed batches of ``indices`` from ``source`` to onnxruntime's calibrators.

    Only the current batch is in memory. :meth:`rewind` starts over, for calibration methods that make several
    passes. ``seen`` records every sample's id and SHA-256 once, for the calibration record.
    """

    def __init__(
        self,
        source: ImageSource,
        spec: PreprocessSpec,
        indices: Sequence[int],
        *,
        input_name: str,
        batch_size: int = 1,
        on_batch: Callable[[int], object] | None = None,
    ) -> None:
        self.source = source
        self.spec = spec
        self.indices = list(indices)
        self.input_name = input_name
        self.batch_size = batch_size
        self.on_batch = on_batch  # called with the number of images in each batch (a progress bar's update)
        self.seen: dict[str, str] = {}
        self.rewind()

    def rewind(self) -> None:
        self._batches = iter_batches(self.source, self.spec, self.indices, self.batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        try:
            batch, samples = next(self._batches)
        except StopIteration:
            return None
        self._record(samples)
        if self.on_batch is not None:
            self.on_batch(len(samples))
        return {self.input_name: batch}

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def _record(self, samples: list[Sample]) -> None:
        for sample in samples:
            self.seen.setdefault(sample.id, sample.sha256)
