"""The report's renderers, fast: report.md and report.html from a stored report.json (no pipeline run).

``data/report.json`` is the report of a real run of the default pipeline (``resnet-edge pipeline``), with only what
no renderer reads cut short (the calibration file list, the raw latency samples); ``data/report.md`` is the
Markdown that run wrote beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnet_edge.pipeline.report import render_html, render_markdown

DATA = Path(__file__).parent / "data"


@pytest.fixture
def report() -> dict:
    return json.loads((DATA / "report.json").read_text(encoding="utf-8"))


def _table(markdown: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with ``header``, as lists of cells."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_markdown_is_what_the_run_wrote(report: dict) -> None:
    assert render_markdown(report) == (DATA / "report.md").read_text(encoding="utf-8")


def test_markdown_head_table_has_a_row_per_variant(report: dict) -> None:
    rows = _table(render_markdown(report), "| Variant |")
    assert [r[0] for r in rows] == ["PyTorch eager", "ONNX FP32", "ONNX simplified", "ONNX INT8"]
    int8 = rows[3]
    assert int8[1] == "model.int8.onnx" and int8[2] == "344.8 KiB"  # size_bytes 353095, formatted
    assert int8[3] == "100.00%" and int8[4] == "99.24%" and int8[-1] == "cpu"
    assert rows[0][1] == "–" and rows[0][2] == "–"  # PyTorch eager has no file


def test_markdown_sections_and_facts(report: dict) -> None:
    markdown = render_markdown(report)
    for section in ("## Where each node ran", "## INT8 kernels", "## Benchmark", "## Files", "## Configuration"):
        assert section in markdown
    assert "## Devices" not in markdown  # no --target in this run
    assert "- **Model:** resnet20 (residual), weights builtin:digits-resnet20" in markdown
    assert "- **INT8:** x86-vnni qdq, activations uint8, weights per-channel; minmax calibration on 200" in markdown
    assert "- **Timing:** 50 round-robin rounds after 5 warm-up" in markdown
    bench = _table(markdown, "| Model | Provider |")
    assert len(bench) == len(report["stages"]["benchmark"]["rows"]) == 8
    assert {(r[0], r[3]) for r in bench} >= {("ONNX INT8", "1"), ("PyTorch eager", "8")}
    config = {r[0]: r[1:] for r in _table(markdown, "| Option |")}
    assert config["`batch`"] == ["1, 8", "default"] and config["`limit`"] == ["all", "default"]
    assert config["`target`"][0] == "x86-vnni"
    for name, digest in report["file_sha256"].items():
        assert f"- `{name}` sha256 `{digest}`" in markdown


def test_a_stopped_run_says_where_and_leaves_out_what_did_not_run(report: dict) -> None:
    report = {**report, "status": "stopped at validate", "error": "1 row missed the bar"}
    report["stages"] = {**report["stages"], "validate": None, "benchmark": None}
    markdown = render_markdown(report)
    assert "- **Status:** stopped at validate: 1 row missed the bar" in markdown
    assert "**Validation:**" not in markdown and "**Timing:**" not in markdown and "## Benchmark" not in markdown
    assert '<span class="status bad">stopped at validate</span>' in render_html(report)


def test_html_has_the_same_rows_and_sections(report: dict) -> None:
    page = render_html(report)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert '<span class="status ok">complete</span>' in page
    assert page.count('<td data-label="Variant">') == len(report["summary"]) == 4
    assert '<td data-label="Size">344.8 KiB</td>' in page
    for heading in ("Plots", "Benchmark", "Where each node ran", "INT8 kernels", "Files", "Configuration"):
        assert f"<h2>{heading}</h2>" in page
    for file in report["plots"]["files"].values():
        assert f'<img src="{file}"' in page
    assert "<h2>Devices</h2>" not in page
