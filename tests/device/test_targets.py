"""``--target``: benchmark and validate on a device over a real OpenSSH server on 127.0.0.1 (tests/sshd.py).

The device's interpreter is a separate venv holding only numpy and onnxruntime. Every failure the issue lists has
its own test, and each checks that nothing is left in the device's temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_edge.cli.main import main
from resnet_edge.device.fleet import benchmark_on_targets, parse_targets
from resnet_edge.device.targets import RemoteOptions, Target, TargetKind
from resnet_edge.errors import OptionError
from resnet_edge.evaluation.options import BenchmarkOptions
from resnet_edge.evaluation.validate import validate_models
from resnet_edge.jsonable import to_jsonable
from tests.sshd import SshServer, start_sshd

QUICK = ["--iterations", "3", "--warmup", "1", "--threads", "1"]
CLEANUP_WAIT_S = 15.0


def cli(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def remote_args(server: SshServer, python: Path | str, timeout: float = 5) -> list[str]:
    config = ["--ssh-config", str(server.client_config)]
    return [*config, "--remote-python", str(python), "--connect-timeout", str(timeout)]


def wait_until_clean(server: SshServer) -> list[Path]:
    deadline = time.monotonic() + CLEANUP_WAIT_S
    while server.leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    return server.leftovers()


@pytest.fixture
def local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ``local`` target's model cache, kept out of the tester's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "local-cache"))
    return tmp_path / "local-cache"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("local", Target(TargetKind.LOCAL)),
        ("ssh://jetson", Target(TargetKind.SSH, host="jetson")),
        ("ssh://pi@10.0.0.7:2222", Target(TargetKind.SSH, host="10.0.0.7", user="pi", port=2222)),
        ("ssh://[fe80::1]:22", Target(TargetKind.SSH, host="fe80::1", port=22)),
    ],
)
def test_target_syntax(text: str, expected: Target) -> None:
    assert Target.parse(text) == expected and Target.parse(expected.name) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("jetson", "use ssh://"),
        ("ssh://-oProxyCommand=touch PWNED", "not a host name"),
        ("ssh://host:0", "port must be"),
        ("ssh://-l@host", "not a user name"),
    ],
)
def test_bad_targets(text: str, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        Target.parse(text)
    with pytest.raises(OptionError, match="given twice"):
        parse_targets(["local", "local"])
    with pytest.raises(OptionError, match="a --target device runs ONNX models only"):
        benchmark_on_targets(["m.onnx"], [Target(TargetKind.LOCAL)], BenchmarkOptions(torch_reference="resnet20"))


@pytest.mark.slow
def test_benchmark_on_a_device_and_here_side_by_side_and_the_second_run_uploads_nothing(
    ssh_server: SshServer, device_python: Path, digits_onnx: Path, digits_int8: Path, local_cache: Path, tmp_path: Path
) -> None:
    args = ["benchmark", digits_onnx, digits_int8, "--target", "ssh://device", "--target", "local", "--batch", "1,2"]
    first = cli(*args, *remote_args(ssh_server, device_python), "--iterations", "30", "--threads", "1", "--json")
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    rows = [(r["target"], r["model"], r["provider"], r["batch"]) for r in result["rows"]]
    assert rows == [
        (target, model, "cpu", batch)
        for target in ("ssh://device", "local")
        for batch in (1, 2)
        for model in (digits_onnx.name, digits_int8.name)
    ]
    device = result["targets"][0]
    assert device["ok"] and device["device"]["python"].endswith(str(device_python))  # the bare venv ran it
    assert device["transfer"]["models_uploaded"] or device["transfer"]["models_cached"]
    p50 = {(r["target"], r["model"], r["batch"]): r["latency"]["p50_ms"] for r in result["rows"]}
    ratio = p50[("ssh://device", digits_onnx.name, 1)] / p50[("local", digits_onnx.name, 1)]
    print(f"loopback device p50 / local p50 (digits FP32, batch 1): {ratio:.3f}")  # for the notes; never asserted

    second = cli(*args, *remote_args(ssh_server, device_python), *QUICK, "--json", "-o", tmp_path / "bench.json")
    assert second.exit_code == 0, second.output
    for target in json.loads(second.stdout)["targets"]:
        assert target["transfer"]["models_uploaded"] == [] and target["transfer"]["model_bytes_uploaded"] == 0
        assert target["cache"]["installed"] == [] and target["cache"]["bytes_installed"] == 0
        assert len(target["cache"]["hits"]) == 2  # the runner's own record: both models came from its cache
    assert json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert ssh_server.leftovers() == []
    # Nothing outside resnet-edge's folders, not even onnxruntime's own telemetry database.
    assert [p.name for p in ssh_server.remote_cache.iterdir()] == ["resnet-edge"]
    assert [p.name for p in local_cache.iterdir()] == ["resnet-edge"]


@pytest.mark.slow
def test_validate_on_a_device_agrees_exactly_as_a_local_validate(
    ssh_server: SshServer, device_python: Path, digits_onnx: Path, digits_int8: Path, tmp_path: Path
) -> None:
    """FP32 and INT8 on the device, judged here, against a local validate of the same files on the same images
    (the first 96 held-out digits: enough for the comparison, a quarter of the time)."""
    import numpy as np

    from resnet_edge.calibration.sources import DIGITS_FILE
    from resnet_edge.evaluation.options import ValidateOptions

    with np.load(DIGITS_FILE) as digits:
        rows = digits["test_rows"][:96]
        np.savez(tmp_path / "digits96.npz", images=digits["images"][rows], labels=digits["labels"][rows])
    data = str(tmp_path / "digits96.npz")
    args = ["validate", digits_onnx, digits_int8, "--data", data, "--target", "ssh://device", "--json"]
    result = cli(*args, *remote_args(ssh_server, device_python))
    assert result.exit_code == 0, result.output
    fleet = json.loads(result.stdout)
    device = fleet["results"]["ssh://device"]
    local = to_jsonable(validate_models([digits_onnx, digits_int8], options=ValidateOptions(data=data)))
    assert fleet["passed"] and device["thresholds"] == local["thresholds"]
    assert device["images"] == local["images"] == 96 and device["labelled"]
    for got, want in zip(device["rows"], local["rows"], strict=True):
        for key in ("model", "quantized", "passed", "accuracy", "reference_accuracy"):
            assert got[key] == want[key], key
        assert got["parity"]["top1_agreement"] == want["parity"]["top1_agreement"]
        assert got["parity"]["max_abs_error"] == pytest.approx(want["parity"]["max_abs_error"], rel=0.05, abs=1e-6)
    assert [r["quantized"] for r in device["rows"]] == [False, True]
    assert ssh_server.leftovers() == []


@pytest.mark.parametrize(
    ("target", "python", "message"),
    [
        (
            "ssh://closed",
            "python3",
            "error: ssh://closed: connection refused (is an ssh server listening on its ssh port?)",
        ),
        ("ssh://wrongkey", "python3", "error: ssh://wrongkey: authentication failed (ssh runs in batch mode"),
        ("ssh://device", "/no/such/python3", "error: ssh://device: no interpreter '/no/such/python3' on the device"),
        ("ssh://strangehost", "python3", "error: ssh://strangehost: host key verification failed"),
        ("ssh://unreachable", "python3", "error: ssh://unreachable: unreachable: no answer within 1 s"),
    ],
)
def test_connection_failures_are_one_line_naming_the_host(
    ssh_server: SshServer, digits_int8: Path, target: str, python: str, message: str
) -> None:
    timeout = 1 if target == "ssh://unreachable" else 5
    result = cli("benchmark", digits_int8, "--target", target, *remote_args(ssh_server, python, timeout), *QUICK)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith(message), result.stderr
    assert result.stderr.count(message.removeprefix("error: ")) == 1  # printed once (issue 22)
    assert f"[{target}] failed" in result.stderr
    assert "Traceback" not in result.output and ssh_server.leftovers() == []


def test_a_device_without_numpy_and_onnxruntime_says_what_to_install(
    ssh_server: SshServer, digits_int8: Path, tmp_path: Path
) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = tmp_path / "bare" / "bin" / "python"
    result = cli("benchmark", digits_int8, "--target", "ssh://device", *remote_args(ssh_server, bare), *QUICK)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: ssh://device: numpy and onnxruntime missing for {bare} on the device;"
        f" there run: {bare} -m pip install numpy onnxruntime"
    )
    assert ssh_server.leftovers() == []


def test_a_missing_provider_with_strict_ep_fails_on_the_device(
    ssh_server: SshServer, device_python: Path, digits_int8: Path
) -> None:
    args = ["benchmark", digits_int8, "--target", "ssh://device", *remote_args(ssh_server, device_python), *QUICK]
    result = cli(*args, "--providers", "cuda", "--strict-ep")
    assert result.exit_code == 1
    assert "error: ssh://device: requested cuda: CUDAExecutionProvider is not available" in result.stderr
    assert ssh_server.leftovers() == []
    fallback = cli(*args, "--providers", "cuda", "--json")  # without --strict-ep: runs, and says where
    assert fallback.exit_code == 0, fallback.output
    assert {r["ran_on"] for r in json.loads(fallback.stdout)["rows"]} == {"cpu"}
    assert "warning: ssh://device: requested cuda but CUDAExecutionProvider is not available" in fallback.stderr


def test_one_failed_target_is_reported_and_the_others_complete(
    ssh_server: SshServer, device_python: Path, digits_int8: Path
) -> None:
    result = cli(
        "benchmark", digits_int8, "--target", "ssh://device", "--target", "ssh://wrongkey",
        *remote_args(ssh_server, device_python), *QUICK, "--json",
    )  # fmt: skip
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [(t["target"], t["ok"]) for t in data["targets"]] == [("ssh://device", True), ("ssh://wrongkey", False)]
    assert {r["target"] for r in data["rows"]} == {"ssh://device"}
    assert result.stderr.strip().splitlines()[-1].startswith("error: ssh://wrongkey: authentication failed")


@pytest.mark.slow
def test_a_connection_dropped_mid_run_is_an_error_and_the_device_folder_is_gone(
    ssh_server: SshServer, device_python: Path, digits_int8: Path
) -> None:
    remote = RemoteOptions(python=str(device_python), ssh_config=ssh_server.client_config)
    outcome: dict = {}

    def run() -> None:
        options = BenchmarkOptions(duration_s=60, threads=1, warmup=1)
        outcome["result"] = benchmark_on_targets([digits_int8], parse_targets(["ssh://device"]), options, remote)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while not _runner_is_timing(ssh_server) and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.1)
    assert _runner_is_timing(ssh_server), "the runner never started"
    ssh_server.drop_connections()
    worker.join(timeout=60)
    run_record = outcome["result"].targets[0]
    assert not run_record.ok and run_record.error.startswith("ssh://device: the connection dropped during the run")
    assert wait_until_clean(ssh_server) == []


@pytest.mark.slow
def test_ctrl_c_stops_the_device_and_removes_its_folder(
    ssh_server: SshServer, device_python: Path, digits_int8: Path
) -> None:
    command = [str(Path(sys.executable).parent / "resnet-edge"), "benchmark", str(digits_int8), "--duration", "60"]
    process = subprocess.Popen(
        [*command, "--target", "ssh://device", *remote_args(ssh_server, device_python)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not _runner_is_timing(ssh_server) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert _runner_is_timing(ssh_server), process.communicate()
    process.send_signal(signal.SIGINT)  # only resnet-edge: its ssh children must be stopped by it
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "interrupted: no partial output was kept"
    assert wait_until_clean(ssh_server) == []


def _runner_is_timing(server: SshServer) -> bool:
    """The job is on this server's device and its runner process is up: a runner.pyz running in one of the
    server's job folders (not another test's, which may run at the same time)."""
    folders = {str(d.resolve()) for d in server.leftovers() if (d / "job.json").exists()}
    if not folders:
        return False
    for proc in Path("/proc").iterdir():
        try:
            mine = proc.name.isdigit() and b"runner.pyz" in (proc / "cmdline").read_bytes()
            if mine and os.readlink(proc / "cwd") in folders:
                return True
        except OSError:
            continue
    return False


def test_not_enough_space_on_the_device(tmp_path: Path, device_python: Path, digits_int8: Path) -> None:
    """The device's TMPDIR is a real 512 KiB file system; the upload (runner, inputs, model) does not fit."""
    small = tmp_path / "small-tmp"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {mounted.stderr.decode().strip()}")
    server = start_sshd(tmp_path / "sshd", remote_tmp=small)
    try:
        result = cli("benchmark", digits_int8, "--target", "ssh://device", *remote_args(server, device_python), *QUICK)
        assert result.exit_code == 1
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .startswith("error: ssh://device: not enough space on the device: the upload needs")
        ), result.stderr
        assert server.leftovers() == []
    finally:
        server.stop()
        subprocess.run(["umount", str(small)], check=True)


def test_hostile_file_names_reach_no_shell(
    ssh_server: SshServer, device_python: Path, digits_int8: Path, tmp_path: Path, local_cache: Path
) -> None:
    hostile = tmp_path / "a b;touch PWNED'$(x).onnx"
    shutil.copy(digits_int8, hostile)
    result = cli(
        "benchmark", hostile, "--target", "ssh://device", "--target", "local",
        *remote_args(ssh_server, device_python), *QUICK,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = [line for line in result.stdout.splitlines() if not line.startswith(("placement ", "int8 coverage "))]
    assert sum(hostile.name in line for line in table) == 2  # it ran, under its own name, on both targets
    places = [Path.home(), Path.cwd(), Path("/tmp"), Path("/"), tmp_path, ssh_server.root]
    assert [place / "PWNED" for place in places if (place / "PWNED").exists()] == []
    assert list(ssh_server.root.rglob("PWNED")) == [] and list(tmp_path.rglob("PWNED")) == []
    assert ssh_server.leftovers() == []


def test_report_has_a_device_section_and_a_latency_by_device_plot(
    ssh_server: SshServer, device_python: Path, digits_int8: Path, tmp_path: Path, local_cache: Path
) -> None:
    """What ``pipeline --target`` adds to the report, from a real run on two targets (the rest of the pipeline
    is covered by tests/pipeline/test_pipeline.py)."""
    from resnet_edge.pipeline.config import PipelineConfig
    from resnet_edge.pipeline.report import write_report
    from resnet_edge.pipeline.result import PipelineResult

    remote = RemoteOptions(python=str(device_python), ssh_config=ssh_server.client_config)
    targets = parse_targets(["ssh://device", "ssh://wrongkey"])
    options = BenchmarkOptions(iterations=3, warmup=1, threads=1, batch_sizes=(1,))
    fleet = benchmark_on_targets([digits_int8], targets, options, remote)
    config = PipelineConfig(targets=("ssh://device", "ssh://wrongkey"), batch_sizes=(1,))
    out = tmp_path / "report"
    out.mkdir()
    write_report(PipelineResult(outdir=out, config=config, devices=fleet, failed_stage="devices"), out)
    report = json.loads((out / "report.json").read_text())
    assert [r["target"] for r in report["stages"]["devices"]["rows"]] == ["ssh://device"]
    assert set(report["plots"]["devices"]["p50_ms"]) == {"ssh://device"}
    assert (out / "latency_by_device.png").stat().st_size > 0
    markdown = (out / "report.md").read_text()
    assert "## Devices" in markdown and "![Latency by device](latency_by_device.png)" in markdown
    assert "| ssh://device | digits.int8.onnx | cpu | cpu | 1 |" in markdown
    assert "- **ssh://wrongkey:** failed: ssh://wrongkey: authentication failed" in markdown
    assert "<h2>Devices</h2>" in (out / "report.html").read_text()


def test_pipeline_checks_its_targets_before_any_stage() -> None:
    from resnet_edge.pipeline.config import make_config

    assert make_config({"targets": "ssh://pi,local"}).targets == ("ssh://pi", "local")  # TOML list or CLI text
    with pytest.raises(OptionError, match="target 'jetson': use ssh://"):
        make_config({"targets": ["jetson"]})


@pytest.mark.slow
def test_tune_on_a_device_judges_and_times_there_and_writes_the_choice_here(
    ssh_server: SshServer, device_python: Path, digits_sim: Path, tmp_path: Path
) -> None:
    out = tmp_path / "digits.tuned.onnx"
    args = ["tune", digits_sim, "-o", out, "--batch", "2", "--target", "ssh://device"]
    result = cli(*args, *remote_args(ssh_server, device_python), *QUICK[:2], "--threads", "1")
    assert result.exit_code == 0, result.output
    record = json.loads(Path(f"{out}.json").read_text())  # the same numbers as --json, kept beside the model
    assert record["target"] == "ssh://device" and record["device"]["python"].endswith(str(device_python))
    # The device's onnxruntime decides the providers; its CPU decides the INT8 configurations.
    assert {c["provider"] for c in record["candidates"]} == {"cpu"}
    assert {c["ran_on"] for c in record["candidates"]} == {"cpu"} and all(c["p50_ms"] for c in record["candidates"])
    chosen = next(c for c in record["candidates"] if c["name"] == record["chosen"]["name"])
    assert chosen["passed"] and out.is_file()  # written here
    assert f"measured on ssh://device: {record['device']['hostname']}," in result.stdout
    assert f"chosen: {chosen['name']} on cpu -> {out}" in result.stdout
    assert ssh_server.leftovers() == []
    two = cli(*args, "--target", "local", *remote_args(ssh_server, device_python))
    assert two.exit_code != 0 and "tune measures on one device at a time" in two.output


@pytest.mark.slow
def test_pipeline_chooses_each_deployment_on_its_device(
    ssh_server: SshServer, device_python: Path, tmp_path: Path, local_cache: Path
) -> None:
    """``pipeline --target``: tune runs on each device (issue 22), one deployment per device, each named in the report;
    an emulated one (its prefix names QEMU: no emulation here) is chosen by parity and integer coverage, untimed."""
    import numpy as np

    from resnet_edge.calibration.sources import DIGITS_FILE
    from resnet_edge.pipeline.result import tuned_file

    data = tmp_path / "digits64.npz"
    with np.load(DIGITS_FILE) as digits:
        rows = digits["test_rows"][:64]
        np.savez(data, images=digits["images"][rows], labels=digits["labels"][rows])
    emulated = f"exec:env QEMU_CPU=max {sys.executable}"
    out = tmp_path / "out"
    result = cli(
        "pipeline", "--target", "ssh://device", "--target", emulated, *remote_args(ssh_server, device_python)[:4],
        "--data", data, "--batch", "1", "--iterations", "3", "--warmup", "1", "--threads", "1", "--no-torch-eager",
        "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    by_target = {d["deployment"]["target"]: d for d in report["deployments"]}
    assert list(by_target) == ["ssh://device", emulated]
    device, qemu = by_target["ssh://device"]["deployment"], by_target[emulated]["deployment"]
    assert device["file"] == tuned_file("ssh://device", True) == "model.tuned.device.onnx"
    assert (out / device["file"]).is_file() and (out / qemu["file"]).is_file() and qemu["file"] != device["file"]
    record = json.loads((out / f"{device['file']}.json").read_text())
    assert record["target"] == "ssh://device" and record["device"]["python"].endswith(str(device_python))
    assert device["measured_on"].startswith(f"{record['device']['hostname']}, ") and device["timing_used"] is True
    assert all(c["p50_ms"] for c in by_target["ssh://device"]["tune"]["candidates"] if c["passed"])
    # Emulated: no timing taken or used; the fully integer INT8 candidate wins on coverage, FP32 does not.
    assert qemu["timing_used"] is False and qemu["precision"] == "int8" and qemu["p50_ms"] is None
    assert qemu["reason"].startswith("timing under emulation was not used: chosen by parity and integer coverage")
    assert not any(c["p50_ms"] for c in by_target[emulated]["tune"]["candidates"])
    markdown = (out / "report.md").read_text()
    assert "## Deployment (tune) on ssh://device" in markdown and f"Measured on ssh://device: {device['measured_on']}"
    assert f"## Deployment (tune) on {emulated}" in markdown and "Timing under emulation was not used" in markdown
    assert "this machine" in report["plots"]["devices"]["p50_ms"]  # beside the device in the plot
    assert ssh_server.leftovers() == []
