"""The report's charts (matplotlib, drawn headless): each drawn from the series the summary holds, never from the run.

The series are what ``report.json`` records under ``plots`` (a :class:`~resnet_edge.pipeline.document.Plots`), so a
chart cannot disagree with the JSON.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from resnet_edge import formatting as fmt
from resnet_edge.artifacts import atomic_output
from resnet_edge.pipeline.document import DeviceSeries, PlotFiles, Plots

# Plot (a field of Plots, as report.json's ``plots`` names it) -> its file beside the report.
PLOTS = {
    "latency": "latency.png",
    "accuracy_latency": "accuracy_vs_latency.png",
    "ops": "ops_before_after.png",
    "devices": "latency_by_device.png",
}

# The HTML shows each plot at most PLOT_WIDTH_IN * PLOT_DPI pixels wide (900 px, one column), so text drawn at
# PLOT_FONT_PT stays about 15 px at 1300 px and 11 px at a 700 px window.
PLOT_WIDTH_IN = 7.5
PLOT_DPI = 120
PLOT_FONT_PT = 11


def write_plots(plots: Plots, folder: Path) -> PlotFiles:
    """Draw each plot from the summary's series; returns the file names of those drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, str] = {}
    drawers = {
        "latency": _plot_latency,
        "accuracy_latency": _plot_accuracy_latency,
        "ops": _plot_ops,
        "devices": _plot_devices,
    }
    with plt.rc_context({"font.size": PLOT_FONT_PT, "axes.titlesize": PLOT_FONT_PT + 1, "legend.fontsize": 10}):
        for key, draw in drawers.items():
            fig = draw(plt, plots)
            if fig is not None:
                written[key] = _save(fig, folder / PLOTS[key])
        plt.close("all")
    return PlotFiles(**written)


def _plot_latency(plt: Any, plots: Plots) -> Any:
    """Warm latency per variant, as box plots of every timed call. None when there is nothing to draw."""
    series = plots.latency.series
    if not series:
        return None
    labels = list(series)
    fig, ax = plt.subplots(figsize=(PLOT_WIDTH_IN, 0.55 * len(labels) + 1.6), dpi=PLOT_DPI)
    ax.boxplot([series[k] for k in labels], orientation="horizontal", showfliers=True, widths=0.6)
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.invert_yaxis()
    values = [v for k in labels for v in series[k]]
    _latency_axis(ax.xaxis, min(values), max(values), ax.set_xscale)
    ax.set_xlabel("latency per call")
    ax.set_title(f"Warm latency at batch {plots.latency.batch} ({len(next(iter(series.values())))} rounds each)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _plot_accuracy_latency(plt: Any, plots: Plots) -> Any:
    """Accuracy against median latency, one point per variant. None when there is nothing to draw."""
    points = [p for p in plots.accuracy_latency.points if p.value is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(PLOT_WIDTH_IN, 4.2), dpi=PLOT_DPI)
    markers = "osD^vP*X"
    for i, p in enumerate(points):  # a legend, not labels: variants often share an accuracy and overlap
        ax.scatter(
            p.p50_ms,
            100 * p.value,
            s=70,
            marker=markers[i % len(markers)],
            label=f"{p.label}: {fmt.ms(p.p50_ms, unit=True)}, {fmt.percent(p.value)}",
        )
    ax.legend(loc="best")
    latencies = [p.p50_ms for p in points]
    _latency_axis(ax.xaxis, min(latencies), max(latencies), ax.set_xscale)
    ax.set_xlabel("median latency")
    ax.set_ylabel(f"{plots.accuracy_latency.metric} (%)")
    values = [100 * p.value for p in points]
    low, high = min(values), max(values)
    pad = max(0.5, (high - low) * 0.3)
    ax.set_ylim(low - pad, min(100.5, high + pad) if high <= 100 else high + pad)
    ax.set_title("Accuracy against latency, per variant")
    ax.grid(alpha=0.3)
    return fig


def _plot_ops(plt: Any, plots: Plots) -> Any:
    """Nodes by op type, before and after simplification. None when there is nothing to draw."""
    from matplotlib.ticker import MaxNLocator

    before, after = plots.ops.before, plots.ops.after
    if not before:
        return None
    ops = sorted(set(before) | set(after), key=lambda o: -(before.get(o, 0) + after.get(o, 0)))
    fig, ax = plt.subplots(figsize=(PLOT_WIDTH_IN, 0.5 * len(ops) + 1.6), dpi=PLOT_DPI)
    y = range(len(ops))
    ax.barh([i - 0.2 for i in y], [before.get(o, 0) for o in ops], height=0.4, label="exported")
    ax.barh([i + 0.2 for i in y], [after.get(o, 0) for o in ops], height=0.4, label="simplified")
    for i, op in enumerate(ops):
        for offset, count in ((-0.2, before.get(op, 0)), (0.2, after.get(op, 0))):
            ax.text(count, i + offset, f" {count}", va="center", fontsize=PLOT_FONT_PT - 1)
    ax.set_yticks(list(y), ops)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max([*before.values(), *after.values()]) * 1.12 + 1)
    ax.set_xlabel("nodes")
    ax.set_title("Nodes by op type before and after simplification")
    ax.legend(loc="lower right")
    return fig


def _plot_devices(plt: Any, plots: Plots) -> Any:
    """Median latency per device and model (:func:`device_figure`). None when there is nothing to draw."""
    return device_figure(plots.devices) if plots.devices.p50_ms else None


def device_figure(devices_plot: DeviceSeries) -> object:
    """Latency by device: one group of bars per device (this machine's first, as report.device_series puts it), one
    bar per model, each labelled with its median. The legend sits below the axes, never over a bar (issue 22).

    Args:
        devices_plot: report.json's ``plots.devices``.
    """
    import matplotlib.pyplot as plt

    devices = devices_plot.p50_ms
    models = list(dict.fromkeys(m for per in devices.values() for m in per))
    fig, ax = plt.subplots(figsize=(PLOT_WIDTH_IN, 0.5 * len(devices) * len(models) + 2.2), dpi=PLOT_DPI)
    height = 0.8 / len(models)
    for i, model in enumerate(models):
        y = [j + i * height for j in range(len(devices))]
        values = [per.get(model, 0.0) for per in devices.values()]
        bars = ax.barh(y, values, height=height, label=model)
        ax.bar_label(bars, labels=[f" {fmt.ms(v, unit=True)}" if v else "" for v in values])
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(devices))], list(devices))
    ax.invert_yaxis()
    longest = max((v for per in devices.values() for v in per.values()), default=1.0)
    ax.set_xlim(0, longest * 1.25)  # room for the bar labels inside the axes
    left_out = len(devices_plot.emulated_left_out)
    ax.set_xlabel(
        "median latency (ms)"
        + (f"\n{left_out} emulated target(s) left out: timings under emulation are not ARM timings" if left_out else "")
    )
    ax.set_title(f"Latency by device at batch {devices_plot.batch}")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=min(len(models), 3), frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(models) - 1) // 3), 1, 1))  # the legend's strip below the axes
    return fig


def _latency_axis(axis: object, low: float, high: float, set_scale: object) -> None:
    """A latency axis labelled ``0.5 ms``, ``1 ms``, ``2 ms``: log scale when the values span 3× or more."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    label = FuncFormatter(lambda value, _: fmt.axis_ms(value))
    if high >= 3 * low > 0:
        set_scale("log")
        decades = math.log10(high / low)
        # Fewer labelled ticks per decade as the axis spans more decades, so the labels never collide.
        subs = (1.0, 2.0, 5.0) if decades <= 1.5 else (1.0, 3.0) if decades <= 2.5 else (1.0,)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(label)
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_locator(MaxNLocator(nbins=6))
        axis.set_major_formatter(label)


def _save(fig: object, path: Path) -> str:
    if not fig.legends:  # a figure legend has its strip laid out already (device_figure)
        fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path.name
