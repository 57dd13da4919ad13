"""The pipeline's configuration: stage tables and flat keys in TOML, the pipeline's defaults declared once."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnet_edge.errors import OptionError
from resnet_edge.pipeline.config import (
    PIPELINE_BENCHMARK,
    PIPELINE_EXPORT,
    PipelineConfig,
    load_config,
    make_config,
)


def test_stage_tables_load_as_the_same_flat_keys(tmp_path: Path) -> None:
    flat = tmp_path / "flat.toml"
    flat.write_text('arch = "resnet20"\nbatch = "1,4"\niterations = 4\nstrict_ep = true\nmethod = "entropy"\n')
    tables = tmp_path / "tables.toml"
    tables.write_text(
        'arch = "resnet20"\n'  # a flat key beside the tables still works
        '[benchmark]\nbatch = "1,4"\niterations = 4\n'
        "[validate]\nstrict-ep = true\n"
        '[quantize]\nmethod = "entropy"\n'
    )
    a, b = load_config(flat), load_config(tables)
    assert a == b and a.batch_sizes == (1, 4) and a.iterations == 4 and a.strict_ep
    assert b.origins == dict.fromkeys(
        ["arch", "batch_sizes", "iterations", "strict_ep", "method"], "config file tables.toml"
    )
    assert load_config(tables, iterations=7).origins["iterations"] == "flag"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[benchmark]\nopset = 13\n", r"\[benchmark\] has no option opset"),
        ("iterations = 3\n[benchmark]\niterations = 4\n", "iterations is given twice"),
        ("benchmark = 3\n", r"\[benchmark\] must be a table"),
        ('[export]\nnum_classes = "ten"\n', "num_classes must be int | None, got 'ten'"),
        ("[benchmark]\nbatch = [1, true]\n", "batch must be list of integers"),
    ],
)
def test_bad_tables_are_refused(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(OptionError, match=match):
        load_config(path)


def test_the_pipelines_own_defaults_are_declared_once() -> None:
    config = PipelineConfig()
    assert (config.iterations, config.warmup, config.batch_sizes) == (50, 5, (1, 8))
    assert config.benchmark_options(torch_reference=None) == PIPELINE_BENCHMARK
    assert config.export_options() == PIPELINE_EXPORT and not PIPELINE_EXPORT.fold_bn
    assert make_config({"iterations": 9}).benchmark_options(torch_reference="w.pt").iterations == 9


@pytest.mark.parametrize("text", ["tune = false\n", "[tune]\ntune = false\n"])
def test_tune_is_a_stage_table_and_a_flat_switch(tmp_path: Path, text: str) -> None:
    """``tune`` names both a stage and its on/off option: a flat boolean is the option, a table the stage's."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert load_config(path).tune is False
