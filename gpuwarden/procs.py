"""Child processes and ports: the one helper every launcher, benchmark, generator and test uses.

- ports: ``free_port`` / ``free_ports`` (distinct, on 127.0.0.1), ``port_free`` and
  ``pick_port`` (a preferred port when free, else any);
- ``Proc``: a child started in its own session (so its process group is its own), its output in
  a log file, stopped by pid: SIGTERM to the group, a grace period, then SIGKILL;
- ``stop_all``: many children stopped together (all signalled first, then waited for), newest
  first;
- ``wait_http``: until a URL answers 2xx, failing early when the child serving it has exited;
- ``console_script``: one of gpuwarden's console scripts, from the running interpreter's
  environment first.

Failures raise ``ProcError`` with a message that says what happened and where the log is.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ProcError(RuntimeError):
    """A child did not start, exited, or never became ready; the message says where to look."""


# -- ports ------------------------------------------------------------------------------------
def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now (all held open at once while picked)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could listen on the port now (TIME_WAIT leftovers do not count: our
    servers, Prometheus and Alertmanager all set SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(preferred: int, taken: set[int], host: str = LOOPBACK) -> int:
    """The preferred port when free and not yet ``taken``, else any free one; added to ``taken``."""
    if preferred not in taken and port_free(preferred, host):
        taken.add(preferred)
        return preferred
    while True:
        port = free_port(host)
        if port not in taken:
            taken.add(port)
            return port


# -- processes --------------------------------------------------------------------------------
def console_script(name: str) -> str:
    """Path of one of our console scripts: beside the running interpreter (its virtualenv), else
    on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise ProcError(f"{name} not installed: run 'make setup' (pip install -e .)")
    return found


class Proc:
    """A child in its own session (process group), writing stdout and stderr to ``log``.

    ``append`` keeps what an earlier run wrote to the log (a working directory reused); by
    default the log starts empty. Stopping is by pid and reaches the whole group, so nothing the
    child started outlives it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        name: str | None = None,
        append: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.name = name or Path(self.argv[0]).name
        self.log = Path(log)
        with open(self.log, "ab" if append else "wb") as out:  # the child keeps its own descriptor
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    @property
    def log_path(self) -> Path:
        return self.log

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def __repr__(self) -> str:
        return f"Proc({self.name!r}, pid={self.pid}, log={str(self.log)!r})"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything the child has written so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def exited(self) -> str:
        """Why the child is gone, with the end of its log."""
        return f"{self.name} exited with status {self.popen.returncode}; its log ({self.log}) ends with:\n{self.tail()}"

    def signal(self, sig: int) -> bool:
        """Sends ``sig`` to the child's process group; False when it is already gone."""
        try:
            os.killpg(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM to the group, up to ``grace`` seconds, then SIGKILL; the exit status."""
        stop_all([self], grace)
        return self.popen.returncode

    def kill9(self) -> None:
        """SIGKILL to the group at once (a crash, as tests simulate one)."""
        self.signal(signal.SIGKILL)
        self.popen.wait()

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        wait_http(url, timeout, self)


def stop_all(procs: Iterable[Proc], grace: float = 10.0) -> None:
    """Stops every child, newest (last) first: SIGTERM to each live group, then one shared
    ``grace`` period, then SIGKILL to the groups of those still running."""
    procs = list(procs)[::-1]
    for p in procs:
        if p.alive():
            p.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.signal(signal.SIGKILL)
            p.popen.wait()


def wait_http(url: str, timeout: float = 30.0, proc: Proc | None = None, interval: float = 0.1) -> None:
    """Waits until ``url`` answers 2xx. ProcError when ``proc`` (the child serving it) exits
    first or nothing answers within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise ProcError(proc.exited())
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if 200 <= resp.status < 300:
                    return
        except OSError:
            pass
        time.sleep(interval)
    who = f"{proc.name} did not answer" if proc else "no answer from"
    raise ProcError(f"{who} {url} within {timeout:.0f}s" + (f"; see {proc.log}" if proc else ""))
