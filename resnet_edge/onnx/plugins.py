"""Which execution providers can run here: onnxruntime's own, and the OpenVINO plugin registered once per process.

OpenVINO comes two ways, both tried: the ``onnxruntime-ep-openvino`` plugin (``pip install 'resnet-edge[openvino]'``),
registered once per process with ``onnxruntime.register_execution_provider_library`` and selected through
``SessionOptions.add_provider_for_devices`` with the devices ``onnxruntime.get_ep_devices()`` lists for it; or an
onnxruntime build that bundles it (``onnxruntime-openvino``), through the classic providers list
(:mod:`resnet_edge.onnx.providers` for the rest of the story).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

from resnet_edge.onnx.providers import _BY_ORT_NAME, OPENVINO_RUNTIME, PROVIDERS, short_name

OPENVINO_PLUGIN = "onnxruntime_ep_openvino"  # the module of PyPI's onnxruntime-ep-openvino


@dataclass(frozen=True)
class ProviderStatus:
    """Whether a provider can run here, how it would be reached, and how to add it."""

    name: str  # short name
    ort_name: str
    available: bool
    via: str  # "built in", "plugin onnxruntime-ep-openvino 1.8.1 (devices: CPU)", or why not
    install: str


_plugin_state: dict[str, Any] = {}


def openvino_plugin() -> tuple[list[Any], str]:
    """The OpenVINO plugin's devices (registered once per process) and a line on its state.

    Returns:
        ``(devices, note)``: ``devices`` is empty when the plugin is not installed or offers no device here.
    """
    if "devices" not in _plugin_state:
        _plugin_state["devices"], _plugin_state["note"] = _register_openvino_plugin()
    return _plugin_state["devices"], _plugin_state["note"]


def _register_openvino_plugin() -> tuple[list[Any], str]:
    import importlib
    import importlib.metadata

    try:
        plugin = importlib.import_module(OPENVINO_PLUGIN)
    except ImportError:
        return [], "plugin onnxruntime-ep-openvino not installed"
    if not hasattr(ort, "register_execution_provider_library"):
        return [], f"onnxruntime {ort.__version__} cannot load EP plugins (1.23 or later can)"
    name = plugin.get_ep_name()
    version = importlib.metadata.version("onnxruntime-ep-openvino")
    if not any(d.ep_name == name for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(name, plugin.get_library_path())
        except Exception as exc:  # a broken or mismatched plugin library: report it, do not crash a command
            return [], f"plugin onnxruntime-ep-openvino {version} failed to load: {str(exc).splitlines()[0][:200]}"
    devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if not devices:
        return [], (
            f"plugin onnxruntime-ep-openvino {version} is installed but offers no device here (it serves Intel"
            " CPUs, GPUs and NPUs only)"
        )
    kinds = ", ".join(str(d.device.type).rsplit(".", 1)[-1] for d in devices)
    return devices, f"plugin onnxruntime-ep-openvino {version} (devices: {kinds})"


def available_providers() -> list[str]:
    """onnxruntime's names of the providers that can run here, plugins included, in onnxruntime's order; then
    :data:`~resnet_edge.onnx.providers.OPENVINO_RUNTIME` when the openvino package is installed."""
    names = list(ort.get_available_providers())
    devices, _ = openvino_plugin()
    if devices and PROVIDERS["openvino"].ort_name not in names:
        names.insert(0, PROVIDERS["openvino"].ort_name)
    if openvino_runtime_version() is not None:
        names.append(OPENVINO_RUNTIME)
    return names


def openvino_runtime_version() -> str | None:
    """The installed OpenVINO runtime's version (the ``openvino`` package), or None; imports nothing."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return None
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return None


def provider_statuses() -> list[ProviderStatus]:
    """Every provider of the table and every other one onnxruntime offers: available or not, and how to add it."""
    built_in = list(ort.get_available_providers())
    devices, plugin_note = openvino_plugin()
    rows = []
    for info in PROVIDERS.values():
        if info.ort_name in built_in:
            rows.append(ProviderStatus(info.short, info.ort_name, True, "built into onnxruntime", info.install))
        elif info.short == "openvino":
            rows.append(ProviderStatus(info.short, info.ort_name, bool(devices), plugin_note, info.install))
        elif info.ort_name == OPENVINO_RUNTIME:
            version = openvino_runtime_version()
            via = f"openvino {version} (CPU)" if version else "the openvino package is not installed"
            rows.append(ProviderStatus(info.short, info.ort_name, version is not None, via, info.install))
        else:
            rows.append(ProviderStatus(info.short, info.ort_name, False, "not in this onnxruntime build", info.install))
    for name in built_in:
        if name not in _BY_ORT_NAME:
            rows.append(ProviderStatus(short_name(name), name, True, "built into onnxruntime", "-"))
    return rows
