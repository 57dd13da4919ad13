"""The INT8 recipe for each hardware target: data only, chosen by measurement.

Importing this module imports neither torch, onnx, onnxruntime nor numpy, so the CLI takes its choices from these
enums without paying for them at start-up.

Defaults by measurement (ResNet-50, batch 1, 2 threads, this project's CPU: Xeon with AVX-512 VNNI and AMX,
onnxruntime 1.32; ``benchmarks/int8_configs.py`` reproduces it): onnxruntime's own defaults (QDQ, signed int8
activations) ran no faster than FP32, per-channel even slower, while unsigned activations with signed per-channel
weights ran about 3x faster. So ``x86-vnni`` uses U8S8 per-channel QDQ. Without VNNI, onnxruntime's guidance adds
``reduce_range`` (7-bit weights) against the saturation of the U8S8 AVX2 instruction. ``arm64`` is chosen by integer
coverage on onnxruntime's aarch64 kernels (emulated timings mean nothing): signed int8 with asymmetric activations
is the form whose Relus fuse too (see :mod:`resnet_edge.quantization.coverage`). TensorRT follows NVIDIA's guidance
(symmetric signed int8), not measured here.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

from resnet_edge.environment import cpu_info


class Int8Target(enum.StrEnum):
    AUTO = "auto"
    X86_VNNI = "x86-vnni"
    X86_AVX2 = "x86-avx2"
    ARM64 = "arm64"
    GPU_TENSORRT = "gpu-tensorrt"


class Method(enum.StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"

    @property
    def onnxruntime(self) -> object:
        """onnxruntime's ``CalibrationMethod`` for this method."""
        from onnxruntime.quantization import CalibrationMethod

        return {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[self.value]


class Format(enum.StrEnum):
    QDQ = "qdq"
    QOPERATOR = "qoperator"


@dataclass(frozen=True)
class Int8Recipe:
    """A resolved quantization configuration and why it was chosen."""

    target: Int8Target
    format: Format
    activation_type: str  # "uint8" or "int8"
    weight_type: str
    per_channel: bool
    reduce_range: bool
    symmetric_activations: bool
    reason: str


_TARGETS: dict[Int8Target, Int8Recipe] = {
    Int8Target.X86_VNNI: Int8Recipe(
        Int8Target.X86_VNNI,
        Format.QDQ,
        "uint8",
        "int8",
        per_channel=True,
        reduce_range=False,
        symmetric_activations=False,
        reason="U8S8 per-channel QDQ: ~3x faster than FP32 on AVX-512 VNNI; signed activations were no faster",
    ),
    Int8Target.X86_AVX2: Int8Recipe(
        Int8Target.X86_AVX2,
        Format.QDQ,
        "uint8",
        "int8",
        per_channel=True,
        reduce_range=True,
        symmetric_activations=False,
        reason="U8S8 with 7-bit weights (reduce_range): avoids the 16-bit saturation of AVX2's u8s8 multiply-add",
    ),
    Int8Target.ARM64: Int8Recipe(
        Int8Target.ARM64,
        Format.QDQ,
        "int8",
        "int8",
        per_channel=True,
        reduce_range=False,
        # Asymmetric: a Relu's output range then starts at the zero point (-128), so onnxruntime drops the Relu into
        # the preceding QLinearConv. With symmetric activations (zero point 0) 19 of resnet20's Relus stayed as
        # DequantizeLinear -> Relu -> QuantizeLinear on aarch64 (onnxruntime 1.32 under QEMU: cortex-a72,
        # neoverse-n1 and max alike); asymmetric ran all 22 Conv/Gemm as integer kernels with one Q/DQ pair.
        symmetric_activations=False,
        reason="S8S8 per-channel QDQ with asymmetric activations: every Conv/Gemm and Relu fused into integer kernels"
        " on aarch64 (checked under emulation; not timed on ARM hardware)",
    ),
    Int8Target.GPU_TENSORRT: Int8Recipe(
        Int8Target.GPU_TENSORRT,
        Format.QDQ,
        "int8",
        "int8",
        per_channel=True,
        reduce_range=False,
        symmetric_activations=True,
        reason="symmetric int8 QDQ with per-channel weights, the form TensorRT builds INT8 engines from",
    ),
}


def detect_target() -> Int8Target:
    """The CPU target of this machine: x86 with or without VNNI, or 64-bit ARM."""
    cpu = cpu_info()
    if cpu.architecture in ("aarch64", "arm64"):
        return Int8Target.ARM64
    return Int8Target.X86_VNNI if cpu.has_vnni else Int8Target.X86_AVX2


def resolve_config(target: Int8Target, *, per_channel: bool | None = None, format: Format | None = None) -> Int8Recipe:
    """The configuration for ``target`` (``auto``: this machine's), with explicit choices overriding it."""
    base = _TARGETS[detect_target() if target is Int8Target.AUTO else target]
    changes: dict[str, object] = {}
    if per_channel is not None and per_channel != base.per_channel:
        changes["per_channel"] = per_channel
    if format is not None and format != base.format:
        changes["format"] = format
    if not changes:
        return base
    overridden = ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in changes.items())
    return Int8Recipe(**(asdict(base) | changes | {"reason": f"{base.reason}; overridden: {overridden}"}))
