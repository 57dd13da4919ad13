"""Reaching a target device and running a runner job there: ``ssh://[user@]host[:port]``, ``local`` or
``exec:COMMAND PREFIX``.

The SSH layer is the system's OpenSSH client, on purpose: it honours the user's ``~/.ssh/config`` (aliases, keys,
``ProxyJump``, ports), agent and known-hosts exactly as their own ``ssh`` does, which no Python SSH library
matches in full. It always runs with ``BatchMode=yes`` (a batch job never waits for a password or a host-key
prompt) and a connect timeout.

``exec:COMMAND PREFIX`` starts the device's Python through a command prefix, on this machine's file system, as
``local`` does: ``exec:env QEMU_CPU=max ROOTFS/qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3`` runs the
runner on onnxruntime's ARM kernels under QEMU user-mode emulation. The prefix is split with :func:`shlex.split` and
written, each word quoted, into a two-line wrapper script (``exec PREFIX "$@"``) in a private temporary folder made
for the run and removed when the run ends; the scripts below use that wrapper as their interpreter. A prefix that
reaches another file system (``docker exec``, ``adb shell``) does not work as it is: the runner reads its job from a
folder on this machine.

One run on a target is four steps, each one ssh command (``local`` and ``exec:`` run the same scripts with ``sh``):

1. *prepare*: check the interpreter, numpy and onnxruntime; create the per-user model cache
   (``$XDG_CACHE_HOME/resnet-edge/models``, ``~/.cache/...`` by default) and a private temporary folder
   (``mktemp -d``); list which models the cache already holds (by SHA-256); report free space.
2. *upload*: one tar stream into that folder: the runner, the job, the inputs, and only the models the cache lacks.
3. *run*: the runner, which removes the folder when it ends, and also when the connection drops (its stdin closes).
4. *cleanup*: the folder is removed from the host too, whatever happened, Ctrl-C included (best effort when the
   device is gone; then step 3's own cleanup has already acted).

No file name, path or option reaches a shell unquoted: scripts are constants, and every value is passed as a
positional parameter quoted with :func:`shlex.quote`. Nothing is written outside the temporary folder and the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from resnet_edge.device.protocol import Job
from resnet_edge.errors import OptionError, TargetError

DEFAULT_PYTHON = "python3"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
MAX_CONNECT_TIMEOUT_S = 600.0  # a device that does not answer in ten minutes is not coming
SERVER_ALIVE_INTERVAL_S = 5  # with 3 missed answers, a silently dead link is noticed within ~15 s
CLEANUP_TIMEOUT_S = 20.0
UPLOAD_MARGIN = 1.2  # free space wanted on the device, as a multiple of what is uploaded (the cache copy aside)
_TAG = "resnet-edge:"
_REMOTE_DIR = re.compile(r"^/[^\0\n]*/resnet-edge\.[A-Za-z0-9]+$")
_SSH_FAILED = 255

# onnxruntime (1.32 at least) writes a telemetry database under $XDG_CACHE_HOME on import, and the runner's session
# audit writes a profile under $TMPDIR: the device's Python runs with both inside the temporary folder, so that
# nothing lands outside resnet-edge's own folders, even for an instant.
_PREPARE = r"""
py=$1; shift
if ! command -v "$py" >/dev/null 2>&1; then echo "resnet-edge:no-python"; exit 0; fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/resnet-edge/models"
d=$(umask 077 && mktemp -d "${TMPDIR:-/tmp}/resnet-edge.XXXXXXXX") || { echo "resnet-edge:no-tmp"; exit 0; }
echo "resnet-edge:dir $d"
XDG_CACHE_HOME="$d/.cache" "$py" -c '
import sys
sys.stdout.write("resnet-edge:python %d.%d.%d\n" % tuple(sys.version_info[:3]))
missing = []
for name in ("numpy", "onnxruntime"):
    try:
        __import__(name)
    except Exception:
        missing.append(name)
sys.stdout.write("resnet-edge:missing %s\n" % " ".join(missing))
sys.exit(3 if missing else 0)
'
case $? in 0) ;; 3) exit 0 ;; *) echo "resnet-edge:python-failed"; exit 0 ;; esac
(umask 077 && mkdir -p "$cache") 2>/dev/null || echo "resnet-edge:cache-unwritable"
echo "resnet-edge:cache $cache"
[ -d "$cache" ] && df -Pk "$cache" | awk 'NR==2 {print "resnet-edge:cache-free " $4}'
for s in "$@"; do [ -f "$cache/$s.onnx" ] && echo "resnet-edge:have $s"; done
[ -r /etc/machine-id ] && echo "resnet-edge:machine $(cat /etc/machine-id)"
df -Pk "$d" | awk 'NR==2 {print "resnet-edge:free " $4}'
"""
_UPLOAD = r"""
d=$1
tar -x -f - -C "$d" || { status=$?; rm -rf "$d"; exit $status; }
"""
_RUN = r"""
d=$1; py=$2
trap 'rm -rf "$d"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
cd "$d" || exit 1
TMPDIR="$d" XDG_CACHE_HOME="$d/.cache" "$py" runner.pyz job.json
"""
_CLEANUP = r"""
rm -rf "$1"
"""


class TargetKind(enum.StrEnum):
    SSH = "ssh"
    LOCAL = "local"
    EXEC = "exec"


EXEC_PREFIX = "exec:"
_EXEC_EXAMPLE = "exec:env QEMU_CPU=max ROOTFS/qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3"


@dataclass(frozen=True)
class Target:
    """Where a job runs: ``ssh://[user@]host[:port]`` (host may be a ``~/.ssh/config`` alias), ``local``, or
    ``exec:COMMAND PREFIX`` (``command``: the prefix as given, which starts the device's Python here)."""

    kind: TargetKind
    host: str | None = None
    user: str | None = None
    port: int | None = None
    command: str | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """Raises: OptionError: not ``local``, ``ssh://[user@]host[:port]`` nor ``exec:COMMAND``, a host that ssh
        would read as an option, or an empty or unbalanced exec prefix."""
        if text == "local":
            return cls(TargetKind.LOCAL)
        if text.startswith(EXEC_PREFIX):
            command = text[len(EXEC_PREFIX) :]
            try:
                words = shlex.split(command)
            except ValueError as exc:
                raise OptionError(f"target {text!r}: cannot split the command prefix ({exc})") from None
            if not words:
                raise OptionError(
                    f"target {text!r}: give the command prefix that starts the device's Python, e.g. {_EXEC_EXAMPLE}"
                )
            return cls(TargetKind.EXEC, command=command)
        if not text.startswith("ssh://"):
            raise OptionError(f"target {text!r}: use ssh://[user@]host[:port], local or exec:COMMAND PREFIX")
        rest = text[len("ssh://") :].rstrip("/")
        user, _, hostport = rest.rpartition("@")
        host, port = hostport, None
        if hostport.startswith("["):  # [IPv6]:port
            host, closed, tail = hostport[1:].partition("]")
            if not closed or (tail and not tail.startswith(":")):
                raise OptionError(f"target {text!r}: an IPv6 address goes in brackets, ssh://[::1]:22")
            port = tail[1:] if tail else None
        elif hostport.count(":") == 1:
            host, port = hostport.split(":")
        if not host or host.startswith("-") or any(c.isspace() or c in "/@" for c in host):
            raise OptionError(f"target {text!r}: not a host name, address or ssh alias")
        if user and (user.startswith("-") or any(c.isspace() for c in user)):
            raise OptionError(f"target {text!r}: not a user name")
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise OptionError(f"target {text!r}: port must be a number from 1 to 65535")
        return cls(TargetKind.SSH, host=host, user=user or None, port=int(port) if port else None)

    @property
    def argv(self) -> list[str]:
        """An exec target's prefix, split into words (empty for the other kinds)."""
        return shlex.split(self.command) if self.command else []

    @property
    def emulated(self) -> bool:
        """Whether this machine can tell, before running anything, that the target is emulated: an exec prefix
        that names QEMU (``qemu-aarch64-static``, ``QEMU_CPU=...``). The runner's facts tell the rest."""
        return any("qemu" in os.path.basename(word).lower() for word in self.argv)

    @property
    def name(self) -> str:
        if self.kind is TargetKind.LOCAL:
            return "local"
        if self.kind is TargetKind.EXEC:
            return f"{EXEC_PREFIX}{self.command}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"ssh://{self.user + '@' if self.user else ''}{host}{f':{self.port}' if self.port else ''}"

    def __str__(self) -> str:
        return self.name


def check_ssh_options(targets: Sequence[Target], given: Mapping[str, object]) -> None:
    """Refuse options that only ssh uses (``--remote-python``, ``--ssh-config``, by flag -> value) when no target is
    reached over ssh: they would do nothing, and the run would look as if they applied (the ``local`` target runs
    this machine's Python, an ``exec:`` target its own prefix).

    Raises:
        OptionError: such an option is given without an ``ssh://`` target.
    """
    named = [flag for flag, value in given.items() if value is not None]
    if named and not any(t.kind is TargetKind.SSH for t in targets):
        kinds = ", ".join(t.name for t in targets) or "no --target"
        verb = "apply" if len(named) > 1 else "applies"
        raise OptionError(f"{', '.join(named)} {verb} only to ssh:// targets, and there are none ({kinds})")


@dataclass(frozen=True)
class RemoteOptions:
    """How to reach the targets.

    Attributes:
        python: the interpreter on the device (a name on its PATH, or a path).
        connect_timeout_s: how long ssh waits for a device to answer.
        ssh_config: an ssh config file to use instead of ``~/.ssh/config`` (``ssh -F``).
        local_python: the interpreter of the ``local`` target (default: the one running resnet-edge).
    """

    python: str = DEFAULT_PYTHON
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    ssh_config: Path | None = None
    local_python: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.connect_timeout_s <= MAX_CONNECT_TIMEOUT_S:  # refuses NaN and inf too
            raise OptionError(
                f"connect timeout must be more than 0 and at most {MAX_CONNECT_TIMEOUT_S:g} s,"
                f" got {self.connect_timeout_s}"
            )
        if not self.python or self.python.startswith("-"):
            raise OptionError(f"remote python {self.python!r} is not an interpreter name or path")
        if self.ssh_config is not None and not Path(self.ssh_config).is_file():
            raise OptionError(f"ssh config not found: {self.ssh_config}")


@dataclass
class Transfer:
    """What one run copied to the device."""

    models_uploaded: list[str] = field(default_factory=list)  # SHA-256 of each model sent
    models_cached: list[str] = field(default_factory=list)  # SHA-256 of each model the device already had
    bytes_uploaded: int = 0  # everything sent, runner and inputs included
    model_bytes_uploaded: int = 0


@dataclass
class JobFiles:
    """What a job needs on the device besides the runner: models (by SHA-256) and named input files."""

    models: dict[str, Path]  # sha256 -> a local file holding those bytes
    files: dict[str, bytes | Path]  # name in the temporary folder -> content or a file (run_job adds job.json)


def _machine_locks() -> Callable[[str], threading.Lock]:
    locks: dict[str, threading.Lock] = {}
    guard = threading.Lock()

    def lock_for(machine: str) -> threading.Lock:
        with guard:
            return locks.setdefault(machine, threading.Lock())

    return lock_for


_lock_for = _machine_locks()


class TargetSession:
    """One target, reached for one job; :meth:`run_job` does the four steps and always cleans up.

    The steps are the same for every kind of target; how a script is started there (:meth:`_argv`), which
    interpreter runs the runner, and what a failed connection says are each kind's own: :class:`SshSession`,
    :class:`LocalSession`, :class:`ExecSession` (:func:`target_session` picks one).
    """

    def __init__(self, target: Target, options: RemoteOptions, *, on_progress: Callable[[str], object] | None = None):
        self.target = target
        self.options = options
        self.progress = on_progress or (lambda message: None)
        self.remote_dir: str | None = None
        self.cancelled = threading.Event()
        self._process: subprocess.Popen | None = None
        self.python = self._interpreter()
        self.python_label = self.python  # how messages name the interpreter

    def _interpreter(self) -> str:
        raise NotImplementedError

    # -- the shell layer ------------------------------------------------------------------------------------------
    def _argv(self, script: str, args: Sequence[str]) -> list[str]:
        """The command that runs ``script`` with ``args`` on the target (here: on this machine)."""
        return ["sh", "-c", script, "resnet-edge", *args]

    def _connection_failure(self, code: int, err: str, step: str) -> str | None:
        """What a failed connection says, when ``code`` means the connection (not the script) failed."""
        return None

    def _before_job(self) -> None:
        """What a kind of target sets up before a job (an exec target's wrapper)."""

    def _start(self, script: str, args: Sequence[str], stdin: BinaryIO | int) -> subprocess.Popen:
        """The one way a step starts on the target: a process whose output is read back."""
        try:
            process = subprocess.Popen(
                self._argv(script, args), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except FileNotFoundError:
            raise TargetError(self.target.name, "no ssh client here: install OpenSSH's client") from None
        self._process = process
        return process

    def _call(
        self,
        script: str,
        args: Sequence[str],
        *,
        step: str,
        stdin: BinaryIO | None = None,
        timeout: float | None = None,
    ) -> tuple[str, str]:
        """Run a script on the target; stdout and stderr. Raises TargetError for an ssh-level failure."""
        if self.cancelled.is_set() and step != "cleanup":
            raise TargetError(self.target.name, "interrupted")
        # A file streams: no copy in memory.
        process = self._start(script, args, stdin if stdin is not None else subprocess.DEVNULL)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise TargetError(self.target.name, f"{step} took longer than {timeout:.0f} s") from None
        finally:
            self._process = None
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        out = done.stdout.decode("utf-8", "replace")
        err = done.stderr.decode("utf-8", "replace")
        failure = self._connection_failure(done.returncode, err, step)
        if failure:
            raise TargetError(self.target.name, failure)
        if done.returncode != 0:
            raise TargetError(self.target.name, self._script_failure(err, step, done.returncode))
        return out, err

    def _script_failure(self, err: str, step: str, code: int) -> str:
        if "no space left on device" in err.lower():
            return f"not enough space on the device during the {step}: {_last_line(err)}"
        if code in (137, -9):
            return f"the {step} was killed (SIGKILL): most likely the device ran out of memory; try a smaller batch"
        if code < 0:
            return f"the {step} was interrupted (signal {-code})"
        return f"{step} failed (exit {code}): {_last_line(err) or 'no message'}"

    # -- the four steps -------------------------------------------------------------------------------------------
    def prepare(self, shas: Sequence[str]) -> dict:
        self.progress("connecting")
        out, _ = self._call(_PREPARE, [self.python, *shas], step="connect", timeout=self._timeout(60))
        facts: dict = {"have": set(), "missing": []}
        for line in out.splitlines():
            if not line.startswith(_TAG):
                continue
            key, _, value = line[len(_TAG) :].partition(" ")
            if key == "have":
                facts["have"].add(value)
            elif key == "missing":
                facts["missing"] = value.split()
            else:
                facts[key] = value
        if "dir" in facts and _REMOTE_DIR.match(facts["dir"]):
            self.remote_dir = facts["dir"]  # from here on, cleanup() removes it whatever fails next
        python = self.python_label
        if "no-python" in facts:
            raise TargetError(self.target.name, f"no interpreter {python!r} on the device (--remote-python PATH)")
        if "python-failed" in facts or "python" not in facts:
            raise TargetError(self.target.name, f"{python!r} on the device does not run as Python")
        if tuple(int(v) for v in facts["python"].split(".")[:2]) < (3, 8):
            raise TargetError(self.target.name, f"{python} is Python {facts['python']}; the runner needs 3.8 or newer")
        if facts["missing"]:
            names = " ".join(facts["missing"])
            raise TargetError(
                self.target.name,
                f"{' and '.join(facts['missing'])} missing for {python} on the device; there run:"
                f" {python} -m pip install {names}",
            )
        if "no-tmp" in facts or "dir" not in facts:
            raise TargetError(self.target.name, "cannot create a temporary folder on the device (is its /tmp full?)")
        if self.remote_dir is None:
            raise TargetError(self.target.name, f"unexpected temporary folder {facts['dir']!r} on the device")
        return facts

    def _timeout(self, seconds: float) -> float:
        return self.options.connect_timeout_s + seconds

    def run_job(self, job: Job, files: JobFiles) -> tuple[dict, Transfer]:
        """Run ``job`` on the target with ``files``; the runner's JSON result and what was uploaded.

        Raises:
            TargetError: any failure, as one line naming the target (the runner's own JSON errors included).
        """
        from resnet_edge.device.bundle import runner_bytes

        try:
            self._before_job()
            facts = self.prepare(sorted(files.models))
            transfer = Transfer()
            members: dict[str, bytes | Path] = {"runner.pyz": runner_bytes(), **files.files}
            models = []
            for model in job.models:  # the job is shared by the targets: this one's copy says what it uploads
                if model.sha256 in facts["have"]:
                    models.append(dataclasses.replace(model, upload=None))
                    transfer.models_cached.append(model.sha256)
                else:
                    models.append(dataclasses.replace(model, upload=f"models/{model.sha256}.onnx"))
                    members[f"models/{model.sha256}.onnx"] = files.models[model.sha256]
                    transfer.models_uploaded.append(model.sha256)
            job = dataclasses.replace(job, models=models, cleanup=True, watch_stdin=True, cache_dir=facts.get("cache"))
            members["job.json"] = json.dumps(job.to_json()).encode()
            archive = _tar(members)
            transfer.bytes_uploaded = archive_size = os.fstat(archive.fileno()).st_size
            transfer.model_bytes_uploaded = sum(
                files.models[s].stat().st_size for s in dict.fromkeys(transfer.models_uploaded)
            )
            self._check_space(facts, archive_size, transfer.model_bytes_uploaded)
            cached = len(dict.fromkeys(transfer.models_cached))
            self.progress(
                f"uploading {_mib(archive_size)} ({len(set(transfer.models_uploaded))} model(s); {cached} cached)"
            )
            with archive:
                self._call(_UPLOAD, [self.remote_dir], step="upload", stdin=archive, timeout=self._timeout(600))
            self.progress(f"running (Python {facts.get('python', '?')})")
            # Two targets that are one machine (local and ssh://localhost, say) must not time each other: take turns.
            machine = facts.get("machine") or self.target.name
            with _lock_for(hashlib.sha256(machine.encode()).hexdigest()):
                result = self._run()
            self.remote_dir = None  # the runner removed it
            return result, transfer
        finally:
            self.cleanup()

    def _check_space(self, facts: dict, upload: int, model_bytes: int) -> None:
        free_kib = facts.get("free")
        if free_kib and free_kib.isdigit() and int(free_kib) * 1024 < upload * UPLOAD_MARGIN:
            raise TargetError(
                self.target.name,
                f"not enough space on the device: the upload needs {_mib(upload)} in {facts['dir'].rsplit('/', 1)[0]},"
                f" {_mib(int(free_kib) * 1024)} free (set TMPDIR there to a bigger folder)",
            )
        cache_free = facts.get("cache-free")
        if cache_free and cache_free.isdigit() and int(cache_free) * 1024 < model_bytes:
            raise TargetError(
                self.target.name,
                f"not enough space on the device for the model cache {facts.get('cache')}: needs {_mib(model_bytes)},"
                f" {_mib(int(cache_free) * 1024)} free",
            )

    def _run(self) -> dict:
        """Start the runner and wait for its one JSON line, keeping its stdin open: closing it means 'host gone'."""
        process = self._start(_RUN, [str(self.remote_dir), self.python], subprocess.PIPE)
        if self.cancelled.is_set():
            process.kill()
        chunks: dict[str, bytes] = {}

        def read(name: str, stream: io.BufferedReader) -> None:
            chunks[name] = stream.read()

        readers = [
            threading.Thread(target=read, args=(name, stream), daemon=True)
            for name, stream in (("out", process.stdout), ("err", process.stderr))
        ]
        for reader in readers:
            reader.start()
        try:
            code = process.wait()
            for reader in readers:
                reader.join()
        except BaseException:  # Ctrl-C: ssh dies with the terminal's SIGINT; make sure, then clean up
            process.kill()
            process.wait()
            raise
        finally:
            process.stdin.close()
            self._process = None
        out = chunks.get("out", b"").decode("utf-8", "replace").strip()
        err = chunks.get("err", b"").decode("utf-8", "replace")
        document = _last_json(out)
        if document is None:
            failure = self._connection_failure(code, err, "run")
            if failure:
                raise TargetError(self.target.name, failure)
            if code < 0:
                raise TargetError(self.target.name, f"the connection dropped during the run (signal {-code})")
            raise TargetError(self.target.name, self._script_failure(err, "run", code))
        if not document.get("ok"):
            error = document.get("error", {})
            kind = error.get("kind", "error")
            message = error.get("message", "the runner failed")
            if kind == "no_space":
                message = f"not enough space on the device: {message}"
            raise TargetError(self.target.name, message)
        return document

    def cancel(self) -> None:
        """Stop this target's current step now (from another thread, on Ctrl-C); its cleanup still runs."""
        self.cancelled.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()

    def cleanup(self) -> None:
        """Remove the temporary folder (best effort: a device that is gone has already removed it itself)."""
        if self.remote_dir is not None:
            remote_dir, self.remote_dir = self.remote_dir, None
            with contextlib.suppress(TargetError):
                self._call(_CLEANUP, [remote_dir], step="cleanup", timeout=self._timeout(CLEANUP_TIMEOUT_S))


class SshSession(TargetSession):
    """A device reached with ssh (``ssh://[user@]host[:port]``): every step is a script run through ssh."""

    def _interpreter(self) -> str:
        return self.options.python

    def _argv(self, script: str, args: Sequence[str]) -> list[str]:
        timeout = max(1, round(self.options.connect_timeout_s))  # ssh takes whole seconds
        ssh = ["ssh", "-T", "-x", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}"]
        ssh += ["-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL_S}", "-o", "ServerAliveCountMax=3"]
        if self.options.ssh_config is not None:
            ssh += ["-F", str(self.options.ssh_config)]
        if self.target.port:
            ssh += ["-p", str(self.target.port)]
        if self.target.user:
            ssh += ["-l", self.target.user]
        # ssh joins the words after the host into one command line for the remote login shell: quote each.
        return [*ssh, "--", str(self.target.host), " ".join(shlex.quote(w) for w in super()._argv(script, args))]

    def _connection_failure(self, code: int, err: str, step: str) -> str | None:
        return self._ssh_failure(err, step) if code == _SSH_FAILED else None

    def _ssh_failure(self, err: str, step: str) -> str:
        text = err.lower()
        last = _last_line(err)
        if "permission denied" in text or "too many authentication failures" in text:
            return (
                "authentication failed (ssh runs in batch mode and never asks for a password: set up a key, e.g."
                f" ssh-copy-id {self.target.host}, and check that `ssh {self.target.host}` logs in without a prompt)"
            )
        if "host key verification failed" in text:
            return f"host key verification failed: connect once with `ssh {self.target.host}` to check and accept it"
        if "could not resolve hostname" in text:
            return f"unknown host {self.target.host!r} (neither a DNS name nor an alias in the ssh config)"
        if "connection refused" in text:
            where = f"port {self.target.port}" if self.target.port else "its ssh port"
            return f"connection refused (is an ssh server listening on {where}?)"
        if "timed out" in text or "no route to host" in text or "network is unreachable" in text:
            return f"unreachable: no answer within {self.options.connect_timeout_s:g} s ({last})"
        if step in ("upload", "run"):
            return f"the connection dropped during the {step} ({last or 'ssh exited'})"
        return f"ssh failed during {step}: {last or 'no message'}"


class LocalSession(TargetSession):
    """This machine (``local``): the steps run here, the runner with this Python unless told otherwise."""

    def _interpreter(self) -> str:
        return self.options.local_python or sys.executable


class ExecSession(TargetSession):
    """A command prefix that starts the device's Python on this machine's files (``exec:PREFIX``, QEMU say): the
    runner's interpreter is a wrapper script around the prefix, written for one job."""

    def __init__(self, target: Target, options: RemoteOptions, *, on_progress: Callable[[str], object] | None = None):
        self._wrapper_dir: str | None = None  # the private folder of the wrapper script, for this run only
        super().__init__(target, options, on_progress=on_progress)
        self.python_label = target.command or ""  # the prefix, never the temporary wrapper

    def _interpreter(self) -> str:
        return ""  # the wrapper script, written by _before_job

    def _before_job(self) -> None:
        self.python = self._write_wrapper()

    def cleanup(self) -> None:
        """Remove the temporary folder and the wrapper script."""
        try:
            super().cleanup()
        finally:
            if self._wrapper_dir is not None:
                wrapper_dir, self._wrapper_dir = self._wrapper_dir, None
                shutil.rmtree(wrapper_dir, ignore_errors=True)

    def _write_wrapper(self) -> str:
        """An exec target's interpreter: ``#!/bin/sh`` + ``exec PREFIX "$@"``, every word of the prefix quoted, in
        a private folder that :meth:`cleanup` removes.

        Raises:
            TargetError: the prefix's first word is no command here.
        """
        words = self.target.argv
        if shutil.which(words[0]) is None:
            raise TargetError(self.target.name, f"{words[0]!r}: no such command here (an exec: prefix runs locally)")
        self._wrapper_dir = tempfile.mkdtemp(prefix="resnet-edge-exec-")  # mode 0700
        wrapper = os.path.join(self._wrapper_dir, "python")
        with open(os.open(wrapper, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700), "w", encoding="utf-8") as f:
            f.write(f'#!/bin/sh\nexec {" ".join(shlex.quote(w) for w in words)} "$@"\n')
        return wrapper


_SESSIONS: dict[TargetKind, type[TargetSession]] = {
    TargetKind.SSH: SshSession,
    TargetKind.LOCAL: LocalSession,
    TargetKind.EXEC: ExecSession,
}


def target_session(
    target: Target, options: RemoteOptions, *, on_progress: Callable[[str], object] | None = None
) -> TargetSession:
    """The session for ``target``, of its kind's class."""
    return _SESSIONS[target.kind](target, options, on_progress=on_progress)


def _tar(members: dict[str, bytes | Path]) -> BinaryIO:
    """The upload as an uncompressed tar in an anonymous temporary file (models and inputs can be large)."""
    archive = tempfile.TemporaryFile()  # noqa: SIM115 (returned open; the caller closes it)
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.mode = 0o600
            info.mtime = int(time.time())
            if isinstance(content, Path):
                info.size = content.stat().st_size
                with open(content, "rb") as f:
                    tar.addfile(info, f)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    archive.seek(0)
    return archive


def _last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 1024:.0f} KiB"
