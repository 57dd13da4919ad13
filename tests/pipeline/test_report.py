"""The report's renderers, fast: report.md and report.html from a stored report.json (no pipeline run).

``data/report.json`` is the report of a real run of the default pipeline with one device (``resnet-edge pipeline
--target local``: every stage, tune and the device section), with only what no renderer reads cut short (the
calibration file list, the raw latency samples); ``data/report.md`` and ``data/report.html`` are the pages that run
wrote beside it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from resnet_edge.errors import InputFileError
from resnet_edge.pipeline.document import ReportDocument, ReportFormatError, VariantRow
from resnet_edge.pipeline.report import render_html, render_markdown

DATA = Path(__file__).parent / "data"


@pytest.fixture
def stored() -> dict:
    """report.json as JSON data, to change before it is read."""
    return json.loads((DATA / "report.json").read_text(encoding="utf-8"))


@pytest.fixture
def report(stored: dict) -> ReportDocument:
    return ReportDocument.from_json(stored)


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


def test_markdown_is_what_the_run_wrote(report: ReportDocument) -> None:
    assert render_markdown(report) == (DATA / "report.md").read_text(encoding="utf-8")


def test_html_is_what_the_run_wrote(report: ReportDocument) -> None:
    assert render_html(report) == (DATA / "report.html").read_text(encoding="utf-8")


def test_the_document_is_typed_and_its_rows_write_back_the_same_json(stored: dict) -> None:
    document = ReportDocument.read(DATA / "report.json")
    assert all(isinstance(row, VariantRow) for row in document.rows)
    assert [row.to_json() for row in document.rows] == stored["summary"]  # same keys, same order, same values
    assert document.stages.quantize.target == "x86-vnni" and document.stages.tune.batch_sizes == (1, 8)
    assert document.deployment.file == "model.tuned.onnx" and document.deployment.batch == 8
    assert document.stages.tune.candidates[0].name == "fp32"
    assert set(document.stages.tune.candidates[0].p50_ms) == {1, 8}  # keyed by batch size, as numbers
    assert [t.target for t in document.stages.devices.targets] == ["local"]


def test_the_document_writes_back_the_json_it_was_read_from(stored: dict) -> None:
    # What this version writes and data/report.json (an earlier run's) lacks: where tune measured, every deployment.
    stored["deployment"].update(target=None, measured_on=None, timing_used=True, reason=None)
    stored["deployments"] = [{"deployment": stored["deployment"], "tune": stored["stages"]["tune"]}]
    written = ReportDocument.from_json(stored).to_json()
    assert json.dumps(written) == json.dumps(stored)  # the same keys, in the same order, with the same values
    assert ReportDocument.from_json(written) == ReportDocument.from_json(stored)
    assert ReportDocument.from_json(written).deployments[0].tune.candidates[0].name == "fp32"  # read as typed


def test_a_report_without_deployments_writes_none(stored: dict) -> None:
    assert "deployments" not in stored and "deployments" not in ReportDocument.from_json(stored).to_json()
    del stored["plots"]["files"]["devices"]  # a plot not drawn has no key, and gets none
    assert "devices" not in ReportDocument.from_json(stored).to_json()["plots"]["files"]


def test_markdown_head_table_has_a_row_per_variant(report: ReportDocument) -> None:
    rows = _table(render_markdown(report), "| Variant |")
    assert [r[0] for r in rows] == ["PyTorch eager", "ONNX FP32", "ONNX simplified", "ONNX INT8"]
    int8 = rows[3]
    assert int8[1] == "model.int8.onnx" and int8[2] == "344.8 KiB"  # size_bytes 353095, formatted
    assert int8[3] == "100.00%" and int8[4] == "99.24%" and int8[-1] == "cpu"
    assert rows[0][1] == "–" and rows[0][2] == "–"  # PyTorch eager has no file


def test_markdown_sections_and_facts(report: ReportDocument, stored: dict) -> None:
    markdown = render_markdown(report)
    for section in ("## Where each node ran", "## INT8 kernels", "## Benchmark", "## Files", "## Configuration"):
        assert section in markdown
    assert "- **Model:** resnet20 (residual), weights builtin:digits-resnet20" in markdown
    assert "- **INT8:** x86-vnni qdq, activations uint8, weights per-channel; minmax calibration on 200" in markdown
    assert "- **Timing:** 50 round-robin rounds after 5 warm-up" in markdown
    bench = _table(markdown, "| Model | Provider |")
    assert len(bench) == len(stored["stages"]["benchmark"]["rows"]) == 8
    assert {(r[0], r[3]) for r in bench} >= {("ONNX INT8", "1"), ("PyTorch eager", "8")}
    config = {r[0]: r[1:] for r in _table(markdown, "| Option |")}
    assert config["`batch`"] == ["1, 8", "default"] and config["`limit`"] == ["all", "default"]
    assert config["`target`"][0] == "x86-vnni"
    for name, digest in stored["file_sha256"].items():
        assert f"- `{name}` sha256 `{digest}`" in markdown


def test_markdown_device_section(report: ReportDocument) -> None:
    markdown = render_markdown(report)
    assert "## Devices" in markdown and "![Latency by device](latency_by_device.png)" in markdown
    assert "- **local:** AMD EPYC, 2 cores (avx2, avx512f, avx512_vnni);" in markdown
    rows = _table(markdown, "| Target | Model |")
    assert len(rows) == 6 and rows[2][:5] == ["local", "ONNX INT8", "cpu", "cpu", "1"]


def test_a_failed_target_is_named_with_its_error(stored: dict) -> None:
    target = stored["stages"]["devices"]["targets"][0]
    target.update(ok=False, device=None, error="local: authentication failed")
    assert "- **local:** failed: local: authentication failed" in render_markdown(ReportDocument.from_json(stored))


def test_markdown_tune_section(report: ReportDocument) -> None:
    markdown = render_markdown(report)
    assert "Chosen: int8 x86-vnni qoperator on cpu (model.tuned.onnx): 2.32× CPU FP32 at batch 8" in markdown
    rows = _table(markdown, "| Candidate |")
    assert [r[0] for r in rows] == ["fp32", "int8 x86-vnni qdq", "int8 x86-vnni qoperator"]
    assert [r[-1] for r in rows] == ["", "", "◀"] and rows[0][-3:-1] == ["1.00×", "1.00×"]


def test_without_tune_or_devices_their_sections_are_left_out(stored: dict) -> None:
    stored["stages"].update(tune=None, devices=None)
    stored["deployment"] = None
    del stored["plots"]["files"]["devices"]
    markdown = render_markdown(ReportDocument.from_json(stored))
    assert "## Deployment (tune)" not in markdown and "## Devices" not in markdown
    assert "latency_by_device.png" not in markdown and "## Benchmark" in markdown


def test_a_stopped_run_says_where_and_leaves_out_what_did_not_run(stored: dict) -> None:
    stored.update(status="stopped at validate", error="1 row missed the bar")
    stored["stages"].update(validate=None, benchmark=None)
    report = ReportDocument.from_json(stored)
    markdown = render_markdown(report)
    assert "- **Status:** stopped at validate: 1 row missed the bar" in markdown
    assert "**Validation:**" not in markdown and "**Timing:**" not in markdown and "## Benchmark" not in markdown
    assert '<span class="status bad">stopped at validate</span>' in render_html(report)


def test_html_has_the_same_rows_and_sections(report: ReportDocument, stored: dict) -> None:
    page = render_html(report)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert '<span class="status ok">complete</span>' in page
    assert page.count('<td data-label="Variant">') == len(stored["summary"]) == 4
    assert '<td data-label="Size">344.8 KiB</td>' in page
    headings = ("Plots", "Benchmark", "Devices", "Deployment (tune)", "Where each node ran", "INT8 kernels", "Files")
    for heading in (*headings, "Configuration"):
        assert f"<h2>{heading}</h2>" in page
    for file in stored["plots"]["files"].values():
        assert f'<img src="{file}"' in page


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda r: r["stages"].pop("tune"), "stages.tune: missing"),  # written before the tune stage existed
        (lambda r: r["stages"]["quantize"]["config"].pop("target"), "stages.quantize.config.target: missing"),
        (lambda r: r["summary"][3].update(size_bytes="344.8 KiB"), "summary[3].size_bytes: expected an integer"),
        (lambda r: r["stages"]["tune"]["candidates"][0]["p50_ms"].update(b8=1.0), "candidates[0].p50_ms: expected"),
        (lambda r: r.update(stages=[]), "stages: expected an object, found []"),
        (lambda r: r["config_sources"].pop("seed"), "config_sources.seed: missing"),
        (
            lambda r: r["stages"]["devices"]["targets"][0].update(device=None),
            "stages.devices.targets[0].device: expected an object, found null",
        ),
        (lambda r: r["stages"]["benchmark"].pop("options"), "stages.benchmark.options: missing"),
    ],
    ids=[
        "before-tune",
        "missing-key",
        "wrong-type",
        "not-a-batch-size",
        "not-an-object",
        "no-source",
        "reached-without-facts",
        "no-parent",
    ],
)
def test_a_malformed_report_gives_one_clear_error(stored: dict, change, named: str) -> None:
    change(stored)
    with pytest.raises(ReportFormatError, match="malformed report.json: .*not a report.json this version") as caught:
        ReportDocument.from_json(stored)
    assert named in str(caught.value) and isinstance(caught.value, InputFileError)


def test_a_stored_file_that_is_not_a_report_names_the_file(tmp_path: Path) -> None:
    old = tmp_path / "report.json"
    old.write_text(json.dumps({"resnet_edge": "0.0.9", "status": "complete"}), encoding="utf-8")
    with pytest.raises(ReportFormatError, match=f"malformed {re.escape(str(old))}: error: missing"):
        ReportDocument.read(old)
    old.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputFileError, match="cannot read it as JSON"):
        ReportDocument.read(old)


# -- report.html fits a 1280-px window (issue 22: the Deployment table hid its Chosen column behind a scroll bar) ----
CHAR_PX = 10  # an upper bound of one character's width at the page's 15 px font (measured 9.2-9.4 in Chromium)
CELL_PADDING_PX = 2 * 0.45 * 15  # th, td: padding .45rem either side
SCROLLBAR_PX = 17
BREAK_CHARS = 16  # a longer word in the first two columns (a path in an exec: target) breaks: overflow-wrap anywhere


def _html_tables(page: str) -> list[list[list[str]]]:
    """The tables of a page: rows of cell texts, the header row first."""
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: list[list[list[str]]] = []
            self.cell: str | None = None

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag: str) -> None:
            if tag in ("td", "th"):
                self.tables[-1][-1].append(self.cell or "")
                self.cell = None

        def handle_data(self, data: str) -> None:
            if self.cell is not None:
                self.cell += data

    parser = Tables()
    parser.feed(page)
    return parser.tables


def _narrowest_px(table: list[list[str]]) -> float:
    """The least width the page's CSS lets a table take: headers wrap between words, the first two columns wrap
    anywhere (counted as words of at most BREAK_CHARS), every other cell stays on one line."""
    width = 0.0
    for index, column in enumerate(zip(*table, strict=True)):
        header, cells = column[0], column[1:]
        words = [len(w) for w in header.split()]
        if index < 2:
            words += [min(len(w), BREAK_CHARS) for cell in cells for w in cell.split()]
        else:
            words += [len(cell) for cell in cells]
        width += max(words, default=0) * CHAR_PX + CELL_PADDING_PX
    return width


def test_every_html_table_fits_a_1280_px_window(stored: dict) -> None:
    from resnet_edge.pipeline.report import HTML_WINDOW_PX, PAGE_WIDTH_PX

    # A device named by a long exec: prefix, as a QEMU target is: its cells wrap, the table still fits.
    qemu = "exec:env QEMU_CPU=neoverse-n1 /home/user/.cache/resnet-edge/arm64-rootfs/qemu-aarch64-static -L ROOTFS"
    for row in stored["stages"]["devices"]["rows"]:
        row["target"] = qemu
    page = render_html(ReportDocument.from_json(stored))
    assert f"max-width: {PAGE_WIDTH_PX}px" in page and "white-space: normal" in page.split("th {", 1)[1].split("}")[0]
    assert PAGE_WIDTH_PX + 2 * 16 + SCROLLBAR_PX <= HTML_WINDOW_PX  # the body, its padding and a vertical scroll bar
    tables = _html_tables(page)
    assert len(tables) >= 6 and any("Chosen" in table[0] for table in tables)
    for table in tables:
        assert _narrowest_px(table) <= PAGE_WIDTH_PX, table[0]


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="needs chromium (Debian's chromium) for the rendered check")
def test_html_renders_without_a_sideways_scroll_bar_in_chromium(stored: dict, tmp_path: Path) -> None:
    import subprocess

    from resnet_edge.pipeline.report import HTML_WINDOW_PX

    # The page reports its own widths once laid out: the document's, and each table box's scroll and client width.
    probe = (
        '<script>document.body.setAttribute("data-widths", JSON.stringify({page:'
        " document.documentElement.scrollWidth, boxes: Array.from(document.querySelectorAll('.scroll'))"
        ".map(d => [d.scrollWidth, d.clientWidth])}));</script>"
    )
    page = tmp_path / "report.html"
    for row in stored["stages"]["devices"]["rows"]:  # a long exec: target name, as in the test above
        row["target"] = "exec:env QEMU_CPU=max /home/user/.cache/resnet-edge/arm64-rootfs/qemu-aarch64-static -L R"
    report = ReportDocument.from_json(stored)
    page.write_text(render_html(report).replace("</body>", f"{probe}</body>"), encoding="utf-8")
    done = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={HTML_WINDOW_PX},2000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.search(r'data-widths="([^"]*)"', done.stdout)
    assert found, done.stderr[-2000:]
    widths = json.loads(found.group(1).replace("&quot;", '"'))
    assert widths["page"] <= HTML_WINDOW_PX and len(widths["boxes"]) >= 6
    assert all(scroll <= client for scroll, client in widths["boxes"]), widths  # no table scrolls sideways


# -- the per-device plot: this machine beside the devices, a legend that covers no bar (issue 22) --------------------
def test_device_series_puts_this_machine_beside_the_devices() -> None:
    from types import SimpleNamespace as Row

    from resnet_edge.pipeline.report import HOST_ROW, device_series

    def timed(model: str, ms: float, target: str | None = None, batch: int = 1, provider: str = "cpu") -> Row:
        path = None if model == "pytorch" else model  # as benchmark writes PyTorch's row: no file
        return Row(model=model, path=path, target=target, batch=batch, provider=provider, latency=Row(p50_ms=ms))

    host = [timed("model.onnx", 0.9), timed("model.int8.onnx", 0.5), timed("model.onnx", 7.0, batch=8)]
    host += [timed("pytorch", 3.0), timed("model.onnx", 0.4, provider="openvino")]
    devices = Row(targets=[Row(target="ssh://pi", emulated=False)], rows=[timed("model.onnx", 4.0, "ssh://pi")])
    result = Row(benchmark=Row(rows=host), devices=devices)
    series = device_series(result, 1).p50_ms
    assert list(series) == [HOST_ROW, "ssh://pi"]  # this machine first, its first provider's ONNX models only
    assert series[HOST_ROW] == {"ONNX FP32": 0.9, "ONNX INT8": 0.5} and series["ssh://pi"] == {"ONNX FP32": 4.0}
    devices.targets.append(Row(target="local", emulated=False))  # local is a target already: no second copy
    assert HOST_ROW not in device_series(result, 1).p50_ms


def test_device_plot_legend_covers_no_bar() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from resnet_edge.pipeline.document import DeviceSeries
    from resnet_edge.pipeline.plots import device_figure

    per = {"ONNX FP32": 0.9, "ONNX simplified": 0.91, "ONNX INT8": 0.55}
    p50_ms = {"this machine": per, "ssh://pi": {k: 5 * v for k, v in per.items()}}
    fig = device_figure(DeviceSeries(batch=1, p50_ms=p50_ms, emulated_left_out=()))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    (ax,) = fig.axes
    bars = [patch.get_window_extent(renderer) for patch in ax.patches]
    assert len(bars) == 6 and not any(box.overlaps(bar) for bar in bars)
    assert not box.overlaps(ax.get_window_extent(renderer))  # below the axes, not over them
    labels = [text.get_window_extent(renderer) for text in ax.texts]  # the bars' "0.90 ms" labels
    assert labels and all(ax.get_window_extent(renderer).contains(t.x1 - 1, t.y0 + 1) for t in labels)
    plt.close(fig)
