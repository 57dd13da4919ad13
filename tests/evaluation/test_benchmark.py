"""Benchmark results: structure and sanity, never wall-clock thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnet_edge.conversion.export import export_onnx
from resnet_edge.conversion.options import ExportOptions
from resnet_edge.errors import OptionError
from resnet_edge.evaluation.benchmark import benchmark_models
from resnet_edge.evaluation.options import BenchmarkOptions
from resnet_edge.progress import Progress
from resnet_edge.timing import latency_stats, time_interleaved

QUICK = BenchmarkOptions(batch_sizes=(1, 3), iterations=6, warmup=1, threads=1)


@pytest.fixture(scope="module")
def results(digits_sim: Path, digits_int8: Path):
    return benchmark_models(
        [digits_sim, digits_int8],
        BenchmarkOptions(
            batch_sizes=(1, 3), iterations=6, warmup=1, threads=1, torch_reference="builtin:digits-resnet20"
        ),
    )


def test_rows_per_model_and_batch_with_ordered_statistics(results) -> None:
    assert [(r.model, r.batch) for r in results.rows] == [
        ("digits.sim.onnx", 1),
        ("digits.int8.onnx", 1),
        ("pytorch", 1),
        ("digits.sim.onnx", 3),
        ("digits.int8.onnx", 3),
        ("pytorch", 3),
    ]
    for row in results.rows:
        s = row.latency
        assert s.iterations == 6 == len(s.samples_ms)
        assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
        assert s.min_ms <= s.mean_ms <= s.max_ms
        assert s.throughput == pytest.approx(row.batch / (s.mean_ms / 1e3))
        assert row.ran_on == "cpu"


def test_ratios_are_against_the_first_model(results) -> None:
    for batch in (1, 3):
        rows = [r for r in results.rows if r.batch == batch]
        first = rows[0].latency.p50_ms
        assert rows[0].speedup == 1.0 and rows[0].p50_ratio == 1.0
        for row in rows[1:]:
            assert row.speedup == pytest.approx(first / row.latency.p50_ms)
            assert row.p50_ratio == pytest.approx(row.latency.p50_ms / first)


def test_cold_start_once_per_onnx_model_and_environment_recorded(results) -> None:
    onnx_rows = [r for r in results.rows if r.model != "pytorch"]
    assert all(r.cold_start_ms > 0 for r in onnx_rows)
    assert results.threads == 1 and results.environment.cpu.logical_cores >= 1
    assert set(results.environment.packages) >= {"torch", "onnx", "onnxruntime", "onnxsim"}
    assert all(len(h) == 64 for h in results.file_sha256.values()) and results.io["cpu"] == "host memory"


@pytest.mark.slow
def test_fixed_batch_model_skips_other_batches_clearly(tmp_path: Path) -> None:
    export_onnx(None, tmp_path / "b2.onnx", ExportOptions(arch="resnet20", batch=2))
    result = benchmark_models([tmp_path / "b2.onnx"], BenchmarkOptions(batch_sizes=(2, 4), iterations=2, warmup=0))
    timed, skipped = result.rows
    assert timed.batch == 2 and timed.latency is not None
    assert skipped.batch == 4 and skipped.latency is None and skipped.skipped == "model has a fixed batch of 2"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"batch_sizes": (0,)}, "batch sizes must be at least 1"),
        ({"batch_sizes": (-2,)}, "batch sizes must be at least 1"),
        ({"iterations": 0}, "iterations must be from 1 to"),
        ({"iterations": 5, "duration_s": 1.0}, "iteration count or a duration, not both"),
        ({"threads": 0}, "threads must be at least 1"),
        ({"duration_s": float("nan")}, "duration must be more than 0"),
        ({"warmup": -1}, "warmup must be from 0"),
    ],
)
def test_options_refuse_bad_values_when_made(options: dict, match: str) -> None:
    """Each options class checks itself, before any stage runs (the CLI, the pipeline and the library alike)."""
    with pytest.raises(OptionError, match=match):
        BenchmarkOptions(**options)


def test_duration_mode_and_shuffled_order() -> None:
    calls: list[str] = []
    times = time_interleaved(
        [lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c")],
        warmup=1,
        iterations=None,
        duration_s=0.0,
    )
    assert [len(t) for t in times] == [5, 5, 5]  # at least MIN_ITERATIONS rounds
    rounds = [tuple(calls[i : i + 3]) for i in range(3, len(calls), 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # each runner once per round
    assert len(set(rounds)) > 1  # in changing orders
    stats = latency_stats([0.001, 0.002, 0.003], batch=2)
    assert stats.p50_ms == pytest.approx(2.0) and stats.throughput == pytest.approx(1000.0)


def test_as_deployed_each_model_runs_in_phases_of_its_own() -> None:
    """Spinning sessions must not alternate call by call (issue 24): blocks of one runner, each after settling calls,
    in changing orders, every runner timed the number of times asked."""
    from resnet_edge.timing import PHASE_BLOCK, PHASE_SETTLE, time_phased

    calls: list[str] = []
    times = time_phased([lambda: calls.append("a"), lambda: calls.append("b")], warmup=1, iterations=12)
    assert [len(t) for t in times] == [12, 12]
    assert calls[:2] == ["a", "b"]  # warm-up first
    runs = []  # the lengths of the stretches of one runner's calls after warm-up
    for name in calls[2:]:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    per_round = [PHASE_BLOCK, PHASE_BLOCK, 12 - 2 * PHASE_BLOCK]
    assert sum(n for _, n in runs) == 2 * sum(block + PHASE_SETTLE for block in per_round)
    assert all(n >= PHASE_SETTLE + min(per_round) for _, n in runs)  # never interleaved call by call
    done: list[int] = []
    time_phased([lambda: None], warmup=0, iterations=None, duration_s=0.0, on_round=lambda: done.append(1))
    assert len(done) == PHASE_BLOCK  # duration mode: at least MIN_ITERATIONS calls, in whole blocks


def test_pytorch_is_timed_apart_from_onnxruntime(
    monkeypatch: pytest.MonkeyPatch, digits_sim: Path, tmp_path: Path
) -> None:
    """PyTorch's spinning OpenMP threads would slow the ONNX model timed after it: never in the same rounds."""
    import resnet_edge.evaluation.benchmark as bench

    groups: list[int] = []

    def spy_on(real):
        def spy(runners, **kwargs):
            groups.append(len(runners))
            return real(runners, **kwargs)

        return spy

    monkeypatch.setattr(bench, "time_interleaved", spy_on(bench.time_interleaved))
    monkeypatch.setattr(bench, "time_phased", spy_on(bench.time_phased))
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(digits_sim.read_bytes())
    options = BenchmarkOptions(iterations=2, warmup=0, threads=1, torch_reference="builtin:digits-resnet20")
    done: list[Progress] = []
    result = benchmark_models([digits_sim, copy], options, on_progress=done.append)
    assert groups == [2, 1] and [r.model for r in result.rows] == ["digits.sim.onnx", "copy.onnx", "pytorch"]
    # One progress bar covers every timed phase, PyTorch's included.
    steps = [p.step for p in done if p.done is None]  # the uncountable steps first: loading PyTorch, the sessions
    assert steps == ["load the PyTorch reference", "open sessions on cpu"]
    done = [p for p in done if p.done is not None]
    assert [p.done for p in done] == [1, 2, 3, 4] and {p.total for p in done} == {options.total_rounds} == {2 * 2}
    with pytest.raises(OptionError, match="given twice"):
        benchmark_models([digits_sim, digits_sim], BenchmarkOptions(iterations=1))


@pytest.mark.slow
def test_nothing_timed_is_an_error(tmp_path: Path) -> None:
    export_onnx(None, tmp_path / "b4.onnx", ExportOptions(arch="resnet20", batch=4))
    with pytest.raises(OptionError, match=r"nothing was timed: the models take fixed batch sizes \[4\], not \[1\]"):
        benchmark_models([tmp_path / "b4.onnx"], BenchmarkOptions(iterations=2))
