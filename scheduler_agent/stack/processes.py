"""The children of ``gpuwarden up``: started in their own process groups, stopped by pid.

Each child writes to its own log file under the working directory; stopping sends SIGTERM to
the child's process group, waits, then SIGKILL, so nothing outlives ``gpuwarden up``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence


class StackError(RuntimeError):
    """Something the stack needs is missing or did not start; the message says what to do."""


def console_script(name: str) -> str:
    """One of our console scripts, from the virtualenv running this Python first, then PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name} not installed: run 'make setup' (pip install -e .)")
    return found


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on the port now (TIME_WAIT leftovers do not count: our
    servers, Prometheus and Alertmanager all set SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(preferred: int, taken: set[int]) -> int:
    """The preferred port when free, else any free one (a second stack, a system Prometheus)."""
    if preferred not in taken and port_free(preferred):
        taken.add(preferred)
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen = field(repr=False)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Children:
    """Starts children and stops every one of them, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Child] = []

    def start(self, name: str, argv: Sequence[str], cwd: Path | None = None,
              env: dict[str, str] | None = None) -> Child:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=cwd, env=env, start_new_session=True)
        child = Child(name, list(argv), log, popen)
        self.started.append(child)
        return child

    def wait_ready(self, child: Child, url: str, timeout: float = 30.0) -> None:
        """Waits until ``url`` answers 2xx; a child that exits or never answers is a StackError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise StackError(f"{child.name} exited with status {child.popen.returncode}; "
                                 f"its log ({child.log}) ends with:\n{child.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if 200 <= resp.status < 300:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise StackError(f"{child.name} did not answer {url} within {timeout:.0f}s; see {child.log}")

    def dead(self) -> list[Child]:
        return [c for c in self.started if not c.alive()]

    def stop_all(self, grace: float = 10.0) -> None:
        for child in reversed(self.started):
            if child.alive():
                try:
                    os.killpg(child.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + grace
        for child in reversed(self.started):
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(child.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.popen.wait()
