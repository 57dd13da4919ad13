"""A real, throwaway OpenSSH server on 127.0.0.1 for the target tests.

Everything lives in one temporary folder: its own config, a free port, a generated host key, a throwaway client
key, authorized-keys and known-hosts files, and an ``ssh -F`` client config with aliases. The machine's own sshd
and ``~/.ssh`` are never touched. Sessions get ``TMPDIR`` and ``XDG_CACHE_HOME`` inside the folder, so the "device"
writes nowhere else either.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
_START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SshServer:
    root: Path
    port: int
    process: subprocess.Popen
    # aliases: "device" (works), "wrongkey" (an unauthorised key), "closed" (nothing listens), "strangehost" (a
    # known-hosts entry that does not match), "unreachable" (a port that accepts and never answers)
    client_config: Path
    remote_tmp: Path  # the device's TMPDIR
    remote_cache: Path  # the device's XDG_CACHE_HOME
    silent: socket.socket

    def session_pids(self) -> list[int]:
        """The sshd processes serving connections now (descendants of this server named sshd), by id."""
        children: dict[int, list[int]] = {}
        names: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
            names[int(entry.name)] = name
        found, todo = [], list(children.get(self.process.pid, []))
        while todo:
            pid = todo.pop()
            if names.get(pid, "").startswith("sshd"):
                found.append(pid)
            todo += children.get(pid, [])
        return found

    def drop_connections(self) -> None:
        """Kill every connection's sshd processes: what the host sees as a dropped link."""
        for pid in self.session_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[Path]:
        return sorted(self.remote_tmp.glob("resnet-edge.*"))

    def stop(self) -> None:
        self.silent.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_sshd(root: Path, *, remote_tmp: Path | None = None) -> SshServer:
    """Start sshd in the foreground on a free port with everything under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    remote_tmp = remote_tmp or root / "device-tmp"
    remote_cache = root / "device-cache"
    remote_tmp.mkdir(exist_ok=True)
    remote_cache.mkdir(exist_ok=True)
    for name in ("host_key", "client_key", "wrong_key"):
        if not (root / name).exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "resnet-edge-test", "-f", str(root / name)],
                check=True,
            )
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root / "host_key"}
PidFile {root / "sshd.pid"}
AuthorizedKeysFile {root / "authorized_keys"}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
SetEnv TMPDIR={remote_tmp} XDG_CACHE_HOME={remote_cache}
LogLevel ERROR
"""
    )
    host_key = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    other_key = (root / "wrong_key.pub").read_text().split()  # not the server's key: a host key mismatch
    (root / "other_known_hosts").write_text(f"[127.0.0.1]:{port} {other_key[0]} {other_key[1]}\n")
    closed = free_port()
    # A port that accepts connections and never answers: a hung or half-dead device (ssh times out in its banner).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    user = getpass.getuser()
    common = f"""  HostName 127.0.0.1
  User {user}
  IdentitiesOnly yes
  UserKnownHostsFile {root / "known_hosts"}
  StrictHostKeyChecking yes
  LogLevel ERROR
"""
    client = root / "ssh_config"
    client.write_text(
        f"Host device\n  Port {port}\n  IdentityFile {root / 'client_key'}\n{common}\n"
        f"Host wrongkey\n  Port {port}\n  IdentityFile {root / 'wrong_key'}\n{common}\n"
        f"Host closed\n  Port {closed}\n  IdentityFile {root / 'client_key'}\n{common}\n"
        f"Host strangehost\n  Port {port}\n  IdentityFile {root / 'client_key'}\n"
        + common.replace(str(root / "known_hosts"), str(root / "other_known_hosts"))
        + f"\nHost unreachable\n  Port {silent.getsockname()[1]}\n  IdentityFile {root / 'client_key'}\n{common}"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder (Debian's default)
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=open(root / "sshd.log", "wb"))  # noqa: SIM115
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError("sshd did not start listening")
    return SshServer(root, port, process, client, remote_tmp, remote_cache, silent)
