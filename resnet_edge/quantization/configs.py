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

The ``x86-vnni`` placement was measured against the alternatives on an AMD EPYC (Zen 4, AVX-512 VNNI, 2 cores;
ResNet-50 224, batch 1, 2 threads; issue 24): every variant compiled in one process per runtime and timed in short
blocks in shuffled rotation, ratios to this recipe's file (median of block ratios / ratio of minima). OpenVINO
runtime 2026.4 (25 rounds): signed activations 0.96/0.99, the residual Add left FP32 (only Conv/Gemm/pools
quantized) 0.81/0.88, Conv/Gemm alone 0.85/0.85, the stem convolution in FP32 0.93/0.92, per-tensor weights
1.01/1.00, symmetric uint8 activations 0.67/0.78, NNCF 3.4's own QDQ placement 0.98/0.98. onnxruntime 1.32, spinning
off (20 rounds): 0.37/0.42, 0.92/0.91, 0.90/0.94, 0.78/0.83, per-tensor 1.09/1.07 (tune tries it on the CPU EP),
0.87/0.80, 0.97/1.03. So no placement beat this one beyond the noise on OpenVINO, where 98% of the time is the INT8
convolutions themselves (its per-layer counters: the input's FakeQuantize 0.1%, every Add fused into a convolution,
the stem 2.7%).

``npu-int8`` is the strict-integer form NPUs take (its rules: :mod:`resnet_edge.quantization.npu`). Its accuracy
recovery defaults were chosen on the two trained resnet20s of ``benchmarks/accuracy_recovery.py`` by the rule "on
by default only where it never hurt": equalization followed by bias correction beat the plain per-tensor model on
Fashion-MNIST in top-1 (88.62% -> 88.71%, FP32 88.64%), agreement (99.56% -> 99.61%) and logit KL
(2.95e-4 -> 2.73e-4), and tied on digits in top-1 and agreement (99.50%, 100%) with less than half the KL
(4.9e-5 -> 2.1e-5); equalization alone did not always help (README, "Accuracy recovery"; measured again after the
fix that made --equalize reach the quantized model). Bias correction stays off for the other targets: on ``x86-vnni`` it
turned one Fashion-MNIST image the wrong way.
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
    NPU_INT8 = "npu-int8"


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


WEIGHT_TYPES = {4: "int4", 8: "int8"}  # weight bits -> the weight type a recipe names


@dataclass(frozen=True)
class Int8Recipe:
    """A resolved quantization configuration and why it was chosen.

    Attributes:
        activation_type: "uint8" or "int8", per tensor.
        weight_type: "int8", or "int4" (4-bit weights in QDQ at opset 21; activations stay 8-bit).
        per_channel: one weight scale per output channel (else one per tensor), unless ``weight_block`` is set.
        weight_block: 4-bit weights only: one scale per block of this many input channels (ONNX's blocked
            DequantizeLinear), instead of per channel.
        power_of_two: every scale (activations and weights) a power of two, as fixed-point accelerators want.
        strict_integer: every Conv, Gemm and Add must read integer tensors and run as an integer kernel on the
            CPU EP; anything less fails the quantization (the NPU target's contract).
        equalize, bias_correction, adaround: the accuracy-recovery steps that run (see ``quantization/recovery.py``).
    """

    target: Int8Target
    format: Format
    activation_type: str  # "uint8" or "int8"
    weight_type: str
    per_channel: bool
    reduce_range: bool
    symmetric_activations: bool
    reason: str
    weight_block: int | None = None
    power_of_two: bool = False
    strict_integer: bool = False
    equalize: bool = False
    bias_correction: bool = False
    adaround: bool = False

    @property
    def weight_bits(self) -> int:
        return next(bits for bits, name in WEIGHT_TYPES.items() if name == self.weight_type)

    @property
    def has_recovery(self) -> bool:
        """Whether an accuracy-recovery step runs (equalization, AdaRound, bias correction)."""
        return self.equalize or self.adaround or self.bias_correction

    @property
    def rewrites_weights(self) -> bool:
        """Whether resnet-edge writes the weights itself after onnxruntime's quantizer (4-bit, power-of-two scales,
        AdaRound): then every weight scale comes from :mod:`resnet_edge.quantization.weights`."""
        return self.weight_bits != 8 or self.power_of_two or self.adaround


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
    # The strict-integer form NPUs and DSPs take (see quantization/npu.py for whose rules it follows and whose it
    # does not): one scale per weight tensor, symmetric; one scale and zero point per activation tensor; every
    # Conv, Gemm and Add integer. Per-tensor weights are where stock quantization loses accuracy (onnxruntime#6545),
    # so this target equalizes and corrects biases by default; the evidence is in NPU_EVIDENCE below.
    Int8Target.NPU_INT8: Int8Recipe(
        Int8Target.NPU_INT8,
        Format.QDQ,
        "uint8",
        "int8",
        per_channel=False,
        reduce_range=False,
        symmetric_activations=False,
        reason="strict integer for NPUs: per-tensor symmetric int8 weights, per-tensor uint8 activations, every"
        " Conv/Gemm/Add integer; cross-layer equalization and bias correction recover per-tensor's loss",
        strict_integer=True,
        equalize=True,
        bias_correction=True,
    ),
}


def detect_target() -> Int8Target:
    """The CPU target of this machine: x86 with or without VNNI, or 64-bit ARM."""
    cpu = cpu_info()
    if cpu.architecture in ("aarch64", "arm64"):
        return Int8Target.ARM64
    return Int8Target.X86_VNNI if cpu.has_vnni else Int8Target.X86_AVX2


def resolve_config(
    target: Int8Target,
    *,
    per_channel: bool | None = None,
    format: Format | None = None,
    weight_bits: int | None = None,
    weight_block: int | None = None,
    power_of_two: bool | None = None,
    equalize: bool | None = None,
    bias_correction: bool | None = None,
    adaround: bool | None = None,
) -> Int8Recipe:
    """The configuration for ``target`` (``auto``: this machine's), with explicit choices (not None) overriding it.

    Bias correction rewrites the QDQ graph: with ``format`` QOperator a target's default for it stays off unless
    asked for (and then :class:`~resnet_edge.quantization.options.QuantizeOptions` refuses).
    """
    base = _TARGETS[detect_target() if target is Int8Target.AUTO else target]
    requested = {
        "per_channel": per_channel,
        "format": format,
        "weight_type": WEIGHT_TYPES[weight_bits] if weight_bits is not None else None,
        "weight_block": weight_block,
        "power_of_two": power_of_two,
        "equalize": equalize,
        "bias_correction": bias_correction,
        "adaround": adaround,
    }
    if format is Format.QOPERATOR and bias_correction is None and base.bias_correction:
        requested["bias_correction"] = False  # a default that rewrites the QDQ graph, not asked for
    if weight_bits == 4 and bias_correction is None and not adaround:
        # Measured (benchmarks/accuracy_recovery.py): on 4-bit weights rounded to nearest bias correction helped on
        # both trained models (digits 98.24% -> 98.74%, Fashion-MNIST 86.18% -> 87.07% top-1). After AdaRound it
        # cost the digits model one test image (98.99% -> 98.74%), so there it runs only when asked.
        requested["bias_correction"] = True
    changes = {k: v for k, v in requested.items() if v is not None and v != getattr(base, k)}
    if not changes:
        return base
    overridden = ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in changes.items())
    return Int8Recipe(**(asdict(base) | changes | {"reason": f"{base.reason}; overridden: {overridden}"}))
