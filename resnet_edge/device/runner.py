"""The device runner: takes a job (JSON), times or runs models on this device, prints one JSON result.

It is what ``resnet-edge runner -o runner.pyz`` bundles, and what a ``--target`` run copies to the device. It needs
only Python 3.8+, numpy and onnxruntime (any build: CPU, GPU, Jetson's wheel, a plugin EP). It times with
:mod:`resnet_edge.timing`, the same code ``benchmark`` uses on the host, and opens sessions with
:mod:`resnet_edge.onnx.runtime`, the same code as everywhere else. Parity is not judged here: the runner returns the
outputs, and the host compares them with the reference using the thresholds of a local ``validate``.

Every failure is a JSON error on stdout with a non-zero exit, never a traceback: a model this onnxruntime cannot
load, a provider the device does not have (with ``strict_ep``), numpy or onnxruntime missing, a full disk, a bad
job. Running out of memory at a batch size skips that batch size with the reason, and the others still run.

Usage on the device: ``python3 runner.pyz JOB.json`` (or ``--facts`` for the device's facts alone).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict

from resnet_edge.device.facts import EMULATION_WARNING, collect_facts, read_thermal, throttle_warning
from resnet_edge.device.protocol import JOB_FORMAT, Job, output_key, session_key

LOST_EXIT = 75  # the host went away (stdin closed) before the job finished
ERROR_EXIT = 1
# What onnxruntime's messages say when an allocation failed (CPU arena, CUDA, std::bad_alloc).
_OOM_MARKERS = ("bad_alloc", "failed to allocate", "out of memory", "cudaerrormemoryallocation", "cannot allocate")


class RunnerError(Exception):
    """A failure the runner reports as JSON: ``kind`` names it for the host, ``message`` says what to do."""

    def __init__(self, kind: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.kind = kind
        self.extra = extra


def default_cache_dir() -> str:
    """The per-user model cache: ``$XDG_CACHE_HOME/resnet-edge/models`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "resnet-edge", "models")


def sha256_path(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_packages() -> None:
    missing = []
    for name in ("numpy", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise RunnerError(
            "missing_package",
            f"{' and '.join(missing)} missing for {sys.executable}; on the device run:"
            f" {sys.executable} -m pip install {' '.join(missing)}",
            missing=missing,
        )


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _OOM_MARKERS)


def _models(job: Job, workdir: str, warnings_: list[str]) -> tuple[dict[str, str], dict]:
    """label -> a local path of each model, from the cache or installed into it from the upload; a cache record."""
    cache = job.cache_dir or default_cache_dir()
    record: dict = {"dir": cache, "hits": [], "installed": [], "bytes_installed": 0, "uncached": []}
    paths = {}
    for model in job.models:
        sha, label = model.sha256, model.label
        cached = os.path.join(cache, sha + ".onnx")
        upload = os.path.join(workdir, model.upload) if model.upload else None
        if upload is None:
            if not os.path.isfile(cached):
                raise RunnerError("cache", f"{label} is not in the device's cache ({cached}) and was not uploaded")
            if sha256_path(cached) != sha:
                os.unlink(cached)
                raise RunnerError("cache", f"the cached copy of {label} was damaged and is removed; run again")
            record["hits"].append(sha)
            paths[label] = cached
            continue
        if sha256_path(upload) != sha:
            raise RunnerError("upload", f"{label} arrived damaged (SHA-256 differs); run again")
        try:
            os.makedirs(cache, mode=0o700, exist_ok=True)
            partial = os.path.join(cache, f".{sha}.{os.getpid()}.partial")
            try:
                shutil.copyfile(upload, partial)
                os.replace(partial, cached)
            finally:
                if os.path.exists(partial):
                    os.unlink(partial)
            record["installed"].append(sha)
            record["bytes_installed"] += os.path.getsize(cached)
            paths[label] = cached
        except OSError as exc:  # a full or read-only home: run from the upload, and say the cache was not used
            warnings_.append(f"could not cache {label} in {cache} ({exc.strerror}); it will be uploaded again")
            record["uncached"].append(sha)
            paths[label] = upload
    return paths, record


def _open(path: str, label: str, provider: str, job: Job) -> object:
    from resnet_edge.errors import InputFileError, OptionError, ProviderError
    from resnet_edge.onnx.providers import Provider
    from resnet_edge.onnx.runtime import open_session

    try:
        chosen = Provider(provider)
    except ValueError:
        raise RunnerError("provider", f"this runner does not know the provider {provider!r}") from None
    try:
        return open_session(path, chosen, strict=job.strict_ep, threads=job.threads, spinning=job.spinning)
    except ProviderError as exc:
        raise RunnerError("provider", str(exc), provider=provider) from None
    except (InputFileError, OptionError) as exc:
        raise RunnerError("model", str(exc).replace(path, label), model=label) from None
    except Exception as exc:
        if _is_oom(exc):
            raise RunnerError("oom", f"out of memory opening {label} on {provider}: {_first_line(exc)}") from None
        raise


def _oom_detail(exc: BaseException) -> str:
    """onnxruntime's allocation failure without its source paths: what was asked for."""
    text = str(exc)
    for marker in ("Failed to allocate memory for requested buffer of size", "Failed to allocate", "bad_alloc"):
        if marker in text:
            return marker + text.split(marker, 1)[1].splitlines()[0][:40]
    return _first_line(exc)[:120]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _benchmark(job: Job, paths: dict[str, str], inputs: dict, warnings_: list[str]) -> dict:
    """Time every model on each of the job's providers: per provider its sessions, I/O placement and timings."""
    import numpy as np

    from resnet_edge.timing import batch_from_pool, cold_start, io_placement

    out: dict = {}
    pools = {model.label: inputs[model.input] for model in job.models}

    def images(label: str, batch: int) -> np.ndarray:
        return batch_from_pool(pools[label], batch)

    for provider in job.providers:
        sessions = {}
        cold = {}
        for label, path in paths.items():
            with _warnings_into(warnings_):
                sessions[label], cold[label] = cold_start(
                    lambda path=path, label=label, provider=provider: _open(path, label, provider, job),
                    lambda s, label=label: s.run(images(label, s.fixed_batch or job.batch_sizes[0])),
                )
        timed_all = _time_batches(job, provider, sessions, images, warnings_)
        out[provider] = {
            "sessions": {
                label: {
                    "ran_on": s.ran_on,
                    "providers_used": s.providers_used,
                    "cold_start_ms": cold[label],
                    **_audit_json(s),
                }
                for label, s in sessions.items()
            },
            "io": io_placement(s.ran_on for s in sessions.values()),
            "timed": [
                {"label": t.label, "batch": t.batch, "latency": _stats_json(t.latency), "skipped": t.skipped}
                for t in timed_all
            ],
        }
    return out


def _time_batches(job: Job, provider: str, sessions: dict, images: Callable, warnings_: list[str]) -> list:
    """One provider's sessions timed at each of the job's batch sizes; a batch size that runs out of memory is
    skipped with the reason (and a warning), and the others still run."""
    from resnet_edge.timing import Timed, time_interleaved, time_phased, time_sessions

    timed_all = []
    for batch in job.batch_sizes:
        try:
            for _, timed in time_sessions(
                sessions,
                images,
                [batch],
                warmup=job.warmup,
                iterations=job.iterations,
                duration_s=job.duration_s,
                timer=time_phased if job.spinning else time_interleaved,
            ):
                timed_all += timed
        except Exception as exc:
            if not _is_oom(exc):
                raise
            reason = f"out of memory at batch {batch} ({_oom_detail(exc)})"
            warnings_.append(f"{provider}: {reason}")
            timed_all += [Timed(label, batch, None, reason) for label in sessions]
    return timed_all


@contextlib.contextmanager
def _warnings_into(warnings_: list[str]) -> Iterator[None]:
    """Collect the warnings raised inside (a provider fallback, say) into ``warnings_``, the result's, for the host."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    warnings_.extend(str(w.message) for w in caught)


def _audit_json(session: object) -> dict:
    """Where the session's nodes ran and the kernels it executed (its audit), for the host to judge."""
    placement = getattr(session, "placement", None)
    return {
        "placement": asdict(placement) if placement is not None else None,
        "executed": [node.to_dict() for node in getattr(session, "executed", [])],
    }


def _stats_json(stats: object) -> dict | None:
    if stats is None:
        return None
    data = asdict(stats)
    for name in dir(type(stats)):  # derived facts too, as resnet_edge.jsonable writes them on the host
        if isinstance(getattr(type(stats), name), property) and not name.startswith("_"):
            data[name] = getattr(stats, name)
    return data


def _validate(job: Job, paths: dict[str, str], inputs: dict, warnings_: list[str]) -> dict:
    import numpy as np

    from resnet_edge.onnx.runtime import fallbacks_already_run

    outputs = {}
    sessions = {}
    batch = job.validate_batch
    for index, model in enumerate(job.models):
        label = model.label
        images = inputs[model.input]
        opened = {}
        for provider in job.providers:
            with _warnings_into(warnings_):
                opened[provider] = _open(paths[label], label, provider, job)
        # A provider that fell back to where another of the job's runs (cuda without a GPU, beside cpu) is not run
        # twice: its row shares those outputs and says it fell back, as on the host.
        same_as = fallbacks_already_run(opened, model_of=lambda _: None)  # one model here
        for provider, session in opened.items():
            if provider not in same_as:
                outputs[output_key(index, provider)] = _logits(session, images, batch, label, provider)
            sessions[session_key(index, provider)] = {
                "ran_on": session.ran_on,
                "providers_used": session.providers_used,
                **_audit_json(session),
            }
        for provider, runs_as in same_as.items():
            outputs[output_key(index, provider)] = outputs[output_key(index, runs_as)]
    buffer = io.BytesIO()
    np.savez(buffer, **outputs)
    return {"sessions": sessions, "outputs_npz_b64": base64.b64encode(buffer.getvalue()).decode("ascii")}


def _logits(session: object, images: object, batch: int, label: str, provider: str) -> object:
    import numpy as np

    try:
        return np.concatenate([session.logits(images[i : i + batch]) for i in range(0, len(images), batch)])
    except Exception as exc:
        if _is_oom(exc):
            raise RunnerError("oom", f"out of memory running {label} at batch {batch}") from None
        raise RunnerError("model", f"{label} failed on {provider}: {_first_line(exc)}") from None


def read_job(data: object) -> Job:
    """The job in ``job.json``'s parsed data.

    Raises:
        RunnerError: not a job this runner reads (another format, unknown keys).
    """
    try:
        return Job.from_json(data)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise RunnerError("job", str(exc)) from None


def run_job(job: Job | dict, workdir: str) -> dict:
    """Run ``job`` (or ``job.json``'s parsed data) with its files under ``workdir``; the result as JSON-ready data.

    Raises:
        RunnerError: every failure the host should see as one line.
    """
    if not isinstance(job, Job):
        job = read_job(job)
    started = time.perf_counter()
    _check_packages()
    import numpy as np

    warnings_: list[str] = []
    result: dict = {"ok": True, "format": JOB_FORMAT, "facts": asdict(collect_facts())}
    if job.action == "facts":
        return result
    from resnet_edge.timing import default_threads

    job.threads = result["threads"] = job.threads or default_threads()
    try:
        paths, result["cache"] = _models(job, workdir, warnings_)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise RunnerError("no_space", f"no space left on the device ({exc.filename})") from None
        raise
    inputs_path = os.path.join(workdir, job.inputs)
    with np.load(inputs_path) as data:
        inputs = {key: data[key] for key in data.files}
    before = read_thermal()
    if job.action == "benchmark":
        if result["facts"]["emulated"]:
            warnings_.append(EMULATION_WARNING)
        result["benchmark"] = _benchmark(job, paths, inputs, warnings_)
    elif job.action == "validate":
        result["validate"] = _validate(job, paths, inputs, warnings_)
    else:
        raise RunnerError("job", f"unknown action {job.action!r}")
    after = read_thermal()
    result["thermal"] = {"before": asdict(before), "after": asdict(after)}
    throttled = throttle_warning(before, after)
    if throttled:
        warnings_.append(throttled)
    result["warnings"] = list(dict.fromkeys(warnings_))
    result["seconds"] = time.perf_counter() - started
    return result


def _watch_host(workdir: str | None) -> None:
    """Exit (removing ``workdir``) when stdin closes: the host's ssh connection is gone, nobody reads the result."""

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        os._exit(LOST_EXIT)

    threading.Thread(target=watch, name="resnet-edge-host-watch", daemon=True).start()


def _error(kind: str, message: str, **extra: object) -> dict:
    return {"ok": False, "format": JOB_FORMAT, "error": {"kind": kind, "message": message, **extra}}


def main(argv: list[str] | None = None) -> int:
    """``runner JOB.json`` or ``runner --facts``: one JSON document on stdout; exit 0 only on success."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--facts"]:
        facts = {"ok": True, "format": JOB_FORMAT, "facts": asdict(collect_facts())}
        try:
            _check_packages()
        except RunnerError as exc:  # facts alone need neither; a job needs both: say it cannot run one (issue 22)
            facts.update(_error(exc.kind, f"this device cannot run jobs: {exc}", **exc.extra), facts=facts["facts"])
        print(json.dumps(facts))
        return 0 if facts["ok"] else ERROR_EXIT
    if len(argv) != 1:
        print(json.dumps(_error("usage", "usage: runner.pyz JOB.json | --facts")))
        return ERROR_EXIT
    job_path = argv[0]
    workdir = os.path.dirname(os.path.abspath(job_path))
    cleanup = False
    try:
        try:
            with open(job_path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise RunnerError("job", f"cannot read the job {job_path}: {exc}") from None
        job = read_job(data)
        cleanup = job.cleanup
        if job.watch_stdin:
            _watch_host(workdir if cleanup else None)
        document = run_job(job, workdir)
        code = 0
    except RunnerError as exc:
        document, code = _error(exc.kind, str(exc), **exc.extra), ERROR_EXIT
    except KeyboardInterrupt:
        document, code = _error("interrupted", "interrupted"), 130
    except Exception as exc:  # a bug: still one JSON line, with where it happened, for a bug report
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
        kind = "no_space" if isinstance(exc, OSError) and exc.errno == errno.ENOSPC else "internal"
        document, code = _error(kind, f"{type(exc).__name__}: {_first_line(exc)} (at {where})"), ERROR_EXIT
    finally:
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
