"""The pipeline's configuration: stage tables and flat keys in TOML, the pipeline's defaults declared once."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnet_edge.errors import OptionError
from resnet_edge.onnx.providers import Provider
from resnet_edge.pipeline.config import (
    OPTIONS,
    PIPELINE_BENCHMARK,
    PIPELINE_EXPORT,
    STAGE_KEYS,
    PipelineConfig,
    load_config,
    make_config,
    option_keys,
)
from resnet_edge.quantization.configs import Method
from resnet_edge.quantization.options import QuantizeOptions


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
    assert config.export == PIPELINE_EXPORT and not PIPELINE_EXPORT.fold_bn
    assert make_config({"iterations": 9}).benchmark_options(torch_reference="w.pt").iterations == 9


def test_the_config_holds_the_stage_options_and_one_table_maps_the_flat_names() -> None:
    config = make_config(
        {"iterations": 9, "method": "entropy", "providers": "cpu", "seed": 4, "data": "builtin:photos"}
    )
    # the stage options are the storage; a flat name reads them, as the user wrote it
    assert config.benchmark.iterations == config.iterations == 9
    assert config.quantize.method is Method.ENTROPY and config.method == "entropy" and type(config.method) is str
    assert config.validate.providers == config.benchmark.providers == (Provider.CPU,) and config.providers == ("cpu",)
    assert config.quantize.seed == config.seed == 4 and config.quantize.measure_speed is False
    assert config.validate.data == config.benchmark.data == "builtin:photos"
    assert list(config.options()) == list(OPTIONS) and option_keys() == [
        k if k != "batch_sizes" else "batch" for k in OPTIONS
    ]
    # every place the table names is a field of that stage's options or of the config itself
    for option in OPTIONS.values():
        for place in option.fields:
            stage, dot, name = place.partition(".")
            owner = getattr(PipelineConfig(), stage) if dot else PipelineConfig()
            assert hasattr(owner, name if dot else stage), place
    assert set(STAGE_KEYS) == {"export", "simplify", "quantize", "validate", "benchmark", "tune"}
    # stage options given whole, with flat names on top; the stage checks what it is given
    given = PipelineConfig(quantize=QuantizeOptions(limit=7, method=Method.PERCENTILE), method="entropy")
    assert (given.limit, given.method, given.quantize.measure_speed) == (7, "entropy", True)
    with pytest.raises(TypeError, match="no option"):
        PipelineConfig(iteration=3)
    with pytest.raises(OptionError, match="iterations must be at least 1"):
        PipelineConfig(iterations=0)


@pytest.mark.parametrize("text", ["tune = false\n", "[tune]\ntune = false\n"])
def test_tune_is_a_stage_table_and_a_flat_switch(tmp_path: Path, text: str) -> None:
    """``tune`` names both a stage and its on/off option: a flat boolean is the option, a table the stage's."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert load_config(path).tune is False


def test_a_pipeline_table_beside_stage_tables_keeps_both(tmp_path: Path) -> None:
    """[pipeline] once held every option; beside it, the stage tables are read too, never dropped."""
    path = tmp_path / "c.toml"
    path.write_text('[pipeline]\narch = "resnet20"\n[benchmark]\niterations = 4\n')
    config = load_config(path)
    assert (config.arch, config.iterations) == ("resnet20", 4)
    path.write_text("[pipeline]\niterations = 3\n[benchmark]\niterations = 4\n")
    with pytest.raises(OptionError, match="iterations is given twice"):
        load_config(path)


def test_held_out_data_judges_the_quantize_stage_too() -> None:
    """pipeline --calib C --data D: quantize judges INT8 on D, so all of C is calibrated on (issue 21: a quarter of C
    was held back even with D given)."""
    from resnet_edge.pipeline.config import make_config

    config = make_config({"calib": "C", "data": "D", "label_map": "map.txt"})
    assert config.quantize.calib == "C" and config.quantize.eval_data == "D" and config.validate.data == "D"
    assert config.quantize.label_map == config.validate.label_map == Path("map.txt")
    assert config.options()["label_map"] == "map.txt"
    assert make_config({}).quantize.eval_data is None  # no --data: the held-out quarter, as before


def test_connect_timeout_is_one_declaration_from_flag_to_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The option added to show what adding one takes (issue 23): a RunOptions field and an OPTIONS row make the
    flag, its help's default, the TOML key and its check; RemoteOptions checks the range."""
    from click.testing import CliRunner

    from resnet_edge.cli.main import main
    from resnet_edge.device.targets import DEFAULT_CONNECT_TIMEOUT_S
    from resnet_edge.pipeline import run as run_module

    assert PipelineConfig().connect_timeout == DEFAULT_CONNECT_TIMEOUT_S
    help_text = CliRunner().invoke(main, ["pipeline", "--help"]).output
    assert "--connect-timeout FLOAT" in help_text and f"[default: {DEFAULT_CONNECT_TIMEOUT_S}]" in help_text
    seen: list[PipelineConfig] = []

    def capture(config: PipelineConfig, *args: object, **kwargs: object) -> None:
        seen.append(config)
        raise OptionError("captured")

    monkeypatch.setattr(run_module, "run_pipeline", capture)
    args = ["pipeline", "--target", "local", "--connect-timeout", "2.5", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "captured" in result.output
    assert seen[0].run.connect_timeout == 2.5 == seen[0].options()["connect_timeout"]

    path = tmp_path / "c.toml"
    path.write_text('targets = ["local"]\n[benchmark]\nconnect_timeout = 30\n')
    assert load_config(path).connect_timeout == 30
    with pytest.raises(OptionError, match="connect timeout|connect_timeout"):
        PipelineConfig(targets=("local",), connect_timeout=0)
    with pytest.raises(OptionError, match="connect_timeout applies to --target devices"):
        make_config({"connect_timeout": 5})
    with pytest.raises(OptionError, match="connect_timeout must be float"):
        make_config({"connect_timeout": "soon", "targets": "local"})
