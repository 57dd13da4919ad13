"""What `pip install .` puts into site-packages, and what the README and CI promise."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import resnet_edge

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.packaging
def test_wheel_holds_exactly_one_top_level_package_with_its_data(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("resnet_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"resnet_edge", wheel.name.split("-py3")[0] + ".dist-info"}
    for required in (
        "resnet_edge/cli/main.py",
        "resnet_edge/calibration/preprocess.py",
        "resnet_edge/device/runner.py",
        "resnet_edge/py.typed",
        "resnet_edge/calibration/photos/MANIFEST.json",
        "resnet_edge/calibration/digits/digits.npz",
        "resnet_edge/data/digits_resnet20.safetensors",
    ):
        assert required in names
    assert sum(n.startswith("resnet_edge/calibration/photos/") and n.endswith((".jpg", ".png")) for n in names) >= 40
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "resnet-edge = resnet_edge.cli.entry:main" in entry_points


@pytest.mark.slow
def test_installed_layout_maps_the_folders_under_resnet_edge(tmp_path: Path) -> None:
    """The suite runs on the README's editable install: cli/ and calibration/ must not be top-level packages."""
    import resnet_edge.calibration
    import resnet_edge.cli

    assert Path(resnet_edge.cli.__file__).parent.name == "cli"
    assert Path(resnet_edge.calibration.__file__).parent.name == "calibration"
    probe = (
        "import importlib.util as u; import resnet_edge.cli.main, resnet_edge.calibration.sources;"
        " print(u.find_spec('cli'), u.find_spec('calibration'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "None None"


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- ci:{marker} -->\n```bash\n(.+)\n", text)
    assert match, f"README.md has no ci:{marker} command"
    return match.group(1)


def test_readme_commands_are_what_ci_runs() -> None:
    main, test = readme_command("main"), readme_command("test")
    assert "pip install '.[cpu]'" in main and main.endswith("resnet-edge pipeline")
    assert "pip install -e '.[test]'" in test and test.endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "extract main" in ci and "extract test" in ci and "passed" in ci


def test_readme_documents_every_command() -> None:
    from resnet_edge.cli.main import main

    text = (ROOT / "README.md").read_text()
    for command in main.commands:
        assert f"resnet-edge {command}" in text, command
    assert "RESULTS_TABLE" not in text and "INT8_TABLE" not in text


def test_version_is_the_distribution_version() -> None:
    from importlib.metadata import version

    assert resnet_edge.__version__ == version("resnet-edge")
