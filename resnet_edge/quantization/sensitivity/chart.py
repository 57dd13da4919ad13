"""The analysis as a picture: SQNR by block, most sensitive on top."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from resnet_edge.artifacts import atomic_output

if TYPE_CHECKING:
    from resnet_edge.quantization.sensitivity.result import SensitivityResult


def write_chart(analysis: SensitivityResult, path: Path | str) -> Path:
    """A horizontal bar chart of SQNR by block, most sensitive block on top, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    order = analysis.ranking + [b.block for b in analysis.blocks if b.block not in analysis.ranking]
    rows = [analysis.block(name) for name in order]
    series = [
        ("only this block INT8: logits", lambda b: b.isolated_logits.sqnr_db if b.isolated_logits else None, "#d62728"),
        ("only this block INT8: block output", lambda b: b.isolated.sqnr_db if b.isolated else None, "#ff9896"),
        ("whole model INT8: block output", lambda b: b.cumulative.sqnr_db, "#1f77b4"),
    ]
    finite = [v for b in rows for _, get, _ in series if (v := get(b)) is not None and math.isfinite(v)]
    cap, floor = max(finite, default=60.0) + 5, min([0.0, *finite])  # where to draw inf (no error) and -inf
    height = 0.8 / len(series)  # bar thickness: a block's bars fill 80% of its row
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.75 * len(rows)))
    y = np.arange(len(rows))
    for k, (label, get, color) in enumerate(series):
        values = [get(b) for b in rows]
        widths = [0.0 if v is None or math.isnan(v) else min(max(v, floor), cap) for v in values]
        ax.barh(y + (k - 1) * height, widths, height=height, color=color, label=label)
    for i, b in enumerate(rows):
        notes = []
        if b.residual is not None and b.residual.flagged:
            notes.append(f"add scales differ {b.residual.ratio:.0f}x")
        if b.isolated is None:
            notes.append("kept FP32")
        if notes:
            ax.text(cap - 0.5, y[i], "; ".join(notes), va="center", ha="right", fontsize=8, color="black")
    ax.set_xlim(floor, cap)
    ax.set_yticks(y, [b.block for b in rows])
    ax.invert_yaxis()  # most sensitive on top
    ax.set_xlabel("SQNR against FP32 (dB); shorter bar = more INT8 error")
    model = analysis.int8_model.name if analysis.int8_model else "INT8 model"
    ax.set_title(
        f"{model}: INT8 error by block, most sensitive first\n"
        f"{analysis.images} held-out images from {analysis.data_source};"
        f" top-1 agreement {100 * analysis.parity.top1_agreement:.1f}%",
        fontsize=10,
    )
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.6 / fig.get_figheight()),
        ncol=len(series),
        fontsize=8,
        frameon=False,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
