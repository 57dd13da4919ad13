"""What a device is: CPU, ISA features, memory, OS, board, GPU, runtime versions, and its clock and temperature.

Runs on the device (standard library only, Python 3.8+). Everything is read from ``/proc`` and ``/sys`` where the
system exposes it; what cannot be read is None, never a guess.
"""

from __future__ import annotations

import glob
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

# The features that decide INT8 speed. x86: VNNI (u8 x s8 dot products) and AMX; ARM: the dot-product (asimddp),
# int8 matrix-multiply (i8mm) and scalable-vector (sve, sve2) extensions, as /proc/cpuinfo names them.
X86_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve", "sve2", "bf16")
# A clock this much lower after the run than before it means the CPU throttled (or a governor slowed it).
THROTTLE_DROP = 0.10
_NVIDIA_SMI_TIMEOUT_S = 20
# What the runner and the host say about any timing taken on an emulated CPU (QEMU user mode and the like).
EMULATION_WARNING = (
    "this target runs under emulation: timings under emulation are not ARM timings (nor any real CPU's); they are"
    " not ranked beside real devices, while its outputs (parity) are real"
)
# aarch64's hardware capability bits (Linux uapi asm/hwcap.h), read from the auxiliary vector where /proc/cpuinfo
# has no ARM "Features" line: under QEMU user mode, whose auxiliary vector describes the emulated core (QEMU_CPU).
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_ARM_HWCAPS = {"asimd": (_AT_HWCAP, 1 << 1), "asimddp": (_AT_HWCAP, 1 << 20), "sve": (_AT_HWCAP, 1 << 22)}
_ARM_HWCAPS.update({"sve2": (_AT_HWCAP2, 1 << 1), "i8mm": (_AT_HWCAP2, 1 << 13), "bf16": (_AT_HWCAP2, 1 << 14)})
_X86_MACHINES = ("x86_64", "amd64", "i386", "i686")
_ARM_MACHINES = ("aarch64", "arm64", "armv7l", "armv8l")


@dataclass
class Thermal:
    """CPU clock and temperature at one moment; None where the system does not expose it (VMs, containers)."""

    cpu_mhz: float | None  # mean current frequency over the cores
    cpu_max_mhz: float | None
    temperature_c: float | None  # the hottest thermal zone
    zones: dict[str, float] = field(default_factory=dict)  # thermal zone type -> degrees C


@dataclass
class DeviceFacts:
    hostname: str
    machine_id: str | None  # a hash of /etc/machine-id: tells two targets that are one machine apart, leaks nothing
    cpu_model: str
    architecture: str
    logical_cores: int
    usable_cores: int
    features: dict[str, bool]
    memory_total_mib: float | None
    memory_available_mib: float | None
    os: str
    kernel: str
    board: str | None  # /proc/device-tree/model (Raspberry Pi, Jetson) or the DMI product name
    gpus: list[str]
    python: str
    numpy: str | None
    onnxruntime: str | None
    onnxruntime_providers: list[str]
    openvino: str | None = None  # the OpenVINO runtime's version (the openvino package: openvino-runtime), or None
    # The interpreter's machine differs from the CPU the kernel describes: user-mode emulation (qemu-aarch64 on
    # x86, where the host's /proc/cpuinfo shows through). Timings then say nothing of the emulated CPU.
    emulated: bool = False


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cpuinfo() -> tuple[str, set[str]]:
    text = read_text("/proc/cpuinfo") or ""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def _family(machine: str) -> str | None:
    machine = machine.lower()
    if machine in _X86_MACHINES:
        return "x86"
    if machine in _ARM_MACHINES or machine.startswith("arm"):
        return "arm"
    return None


def _kernel_cpu_family() -> str | None:
    """The CPU family the kernel describes, read from files that user-mode emulators pass through unchanged:
    ``/proc/cpuinfo`` (x86: vendor_id and an x86 flags line; ARM: CPU implementer) and the CPU modalias."""
    cpuinfo = (read_text("/proc/cpuinfo") or "").lower()
    keys = {line.partition(":")[0].strip() for line in cpuinfo.splitlines()}
    if "vendor_id" in keys or ("flags" in keys and " sse2" in cpuinfo):
        return "x86"
    if "cpu implementer" in keys:
        return "arm"
    modalias = (read_text("/sys/devices/system/cpu/modalias") or "").lower()
    if modalias.startswith("cpu:type:x86"):
        return "x86"
    if modalias.startswith(("cpu:type:aarch64", "cpu:type:arm")):
        return "arm"
    return None


def _arm_hwcaps() -> set[str]:
    """The ARM features the auxiliary vector announces (empty where it cannot be read)."""
    import struct

    try:
        with open("/proc/self/auxv", "rb") as f:
            data = f.read()
    except OSError:
        return set()
    words = struct.unpack(f"{len(data) // 8}Q", data[: len(data) // 8 * 8])
    vector = {words[i]: words[i + 1] for i in range(0, len(words) - 1, 2)}  # (type, value) pairs
    return {name for name, (key, bit) in _ARM_HWCAPS.items() if vector.get(key, 0) & bit}


def is_emulated(machine: str | None = None) -> bool:
    """Whether this interpreter runs on another CPU family than the kernel's (False when either is unknown)."""
    ours = _family(machine or platform.machine())
    kernel = _kernel_cpu_family()
    return ours is not None and kernel is not None and ours != kernel


def _board() -> str | None:
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model", "/sys/class/dmi/id/product_name"):
        text = read_text(path)
        if text and text.strip("\x00\n "):
            return text.strip("\x00\n ")
    return None


def _os_name() -> str:
    text = read_text("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return platform.system()


def _memory() -> tuple[float | None, float | None]:
    values = {}
    for line in (read_text("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) / 1024  # kB -> MiB
    return values.get("MemTotal"), values.get("MemAvailable")


def _gpus() -> list[str]:
    found = []
    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                timeout=_NVIDIA_SMI_TIMEOUT_S,
            )
            if done.returncode == 0:
                found += [line.strip() for line in done.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired):
            pass
    tegra = read_text("/etc/nv_tegra_release")  # Jetson: an integrated GPU that nvidia-smi may not list
    if not found and tegra:
        found.append("NVIDIA Tegra integrated GPU (" + tegra.splitlines()[0].strip("# ")[:80] + ")")
    return found


def _machine_id() -> str | None:
    text = read_text("/etc/machine-id") or read_text("/var/lib/dbus/machine-id")
    return hashlib.sha256(text.strip().encode()).hexdigest()[:16] if text and text.strip() else None


def collect_facts() -> DeviceFacts:
    """The device's facts, read now. Imports numpy and onnxruntime only to read their versions (and not openvino)."""
    model, flags = _cpuinfo()
    arch = platform.machine()
    names = X86_FEATURES if arch in ("x86_64", "AMD64", "i686") else ARM_FEATURES
    total, available = _memory()
    numpy_version = ort_version = None
    providers: list[str] = []
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        pass
    openvino = None  # the runner opens the OpenVINO runtime behind onnxruntime's session type: only with it
    try:
        import onnxruntime

        from resnet_edge.onnx.plugins import openvino_runtime_version

        ort_version = onnxruntime.__version__
        providers = list(onnxruntime.get_available_providers())
        openvino = openvino_runtime_version()
    except ImportError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    emulated = is_emulated(arch)
    cpu_model = model or platform.processor() or "unknown"
    if emulated:  # the kernel's CPU is the host's; say what runs, and the core QEMU was asked for when known
        core = os.environ.get("QEMU_CPU")
        cpu_model = f"emulated {arch}{f' (QEMU_CPU={core})' if core else ''} on {cpu_model}"
        if arch in ("aarch64", "arm64"):  # 64-bit auxiliary vector entries
            flags = _arm_hwcaps()
    return DeviceFacts(
        hostname=platform.node(),
        machine_id=_machine_id(),
        cpu_model=cpu_model,
        architecture=arch,
        logical_cores=os.cpu_count() or 1,
        usable_cores=usable,
        features={name: name in flags for name in names},
        memory_total_mib=total,
        memory_available_mib=available,
        os=_os_name(),
        kernel=platform.release(),
        board=_board(),
        gpus=_gpus(),
        python=platform.python_version() + " " + sys.executable,
        numpy=numpy_version,
        onnxruntime=ort_version,
        onnxruntime_providers=providers,
        openvino=openvino,
        emulated=emulated,
    )


def read_thermal() -> Thermal:
    """The CPU's clock and temperature now, where ``/sys`` exposes them."""
    current = []
    maximum = []
    for cpu in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq")):
        now = read_text(os.path.join(cpu, "scaling_cur_freq")) or read_text(os.path.join(cpu, "cpuinfo_cur_freq"))
        top = read_text(os.path.join(cpu, "cpuinfo_max_freq"))
        if now and now.strip().isdigit():
            current.append(int(now) / 1000)  # kHz -> MHz
        if top and top.strip().isdigit():
            maximum.append(int(top) / 1000)
    zones = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone[0-9]*")):
        kind = (read_text(os.path.join(zone, "type")) or os.path.basename(zone)).strip()
        temp = (read_text(os.path.join(zone, "temp")) or "").strip()
        if temp.lstrip("-").isdigit():
            zones[f"{kind} ({os.path.basename(zone)})"] = int(temp) / 1000  # millidegrees
    return Thermal(
        cpu_mhz=sum(current) / len(current) if current else None,
        cpu_max_mhz=max(maximum) if maximum else None,
        temperature_c=max(zones.values()) if zones else None,
        zones=zones,
    )


def throttle_warning(before: Thermal, after: Thermal) -> str | None:
    """A warning when the clock dropped during the run by more than THROTTLE_DROP; None otherwise or unreadable."""
    if before.cpu_mhz is None or after.cpu_mhz is None or before.cpu_mhz <= 0:
        return None
    drop = 1 - after.cpu_mhz / before.cpu_mhz
    if drop <= THROTTLE_DROP:
        return None
    temps = ""
    if before.temperature_c is not None and after.temperature_c is not None:
        temps = f", temperature {before.temperature_c:.0f} -> {after.temperature_c:.0f} C"
    return (
        f"the CPU clock dropped by {drop:.0%} during the run ({before.cpu_mhz:.0f} -> {after.cpu_mhz:.0f} MHz{temps}):"
        " thermal throttling or a power governor; later rounds ran slower than earlier ones, cool the device or"
        " fix its clock (performance governor) before trusting these numbers"
    )
