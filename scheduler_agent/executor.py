"""Running jobs: the ``Executor`` seam, the local process runner and the tracking-only runner.

Seam (Slurm, Kubernetes stand in here later)::

    class Executor(Protocol):
        def start(self, job: JobRun, on_exit: ExitCallback) -> dict   # handle, stored durably
        def stop(self, job_id: int, grace_seconds: float) -> None      # async; on_exit follows
        def recover(self, job: JobRun, handle: dict | None) -> None     # after an agent restart
        def close(self) -> None

``start`` launches the work and returns a JSON-able handle (pid, batch id, pod name...) that the
scheduler commits with the placement. When the work ends the executor calls
``on_exit(job_id, exit_code)`` from any thread (``None`` = no exit status, e.g. killed by a
signal the executor sent, or the job was never a process). ``stop`` asks the work to end and
returns at once. ``recover`` is called on start-up for every job the database says was running
when the previous agent died: it must make sure the old work is no longer running (it is then
requeued, so at-least-once execution, never two copies at a time).

``LocalExecutor`` runs each job as its own process group (``start_new_session``) with a defined
environment, not the agent's (which may hold credentials): ``PATH`` and ``HOME`` (the agent's, or
defaults), the job's own ``env``, then ``CUDA_VISIBLE_DEVICES`` set to the job's GPU indexes and
``GPUWARDEN_JOB_ID``/``GPUWARDEN_GPU_UUIDS``/``GPUWARDEN_JOB_KEY``. Output goes to
``<log_dir>/job-<id>.log``, created 0600 (a job's output is its owner's business) in a folder
created 0700;
``stop`` sends SIGTERM to the group, waits the grace, then SIGKILL. A process cannot wait for a
child of a dead parent, so ``recover`` kills a still-running orphan group (checked by pid *and*
start time, so a recycled pid is never killed) before the job is requeued.

``TrackingExecutor`` is for jobs without a command (a cluster's own scheduler runs the work):
it only records the placement; ``stop`` reports the exit at once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

ExitCallback = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class JobRun:
    """What an executor needs to start a job."""

    id: int
    name: str
    command: list[str] | None
    gpu_indexes: tuple[int, ...]
    gpu_uuids: tuple[str, ...]
    node: str
    env: dict[str, str] | None = None
    key: str = ""  # unique per agent database, job and run: finds orphans after a crash


class Executor(Protocol):
    def start(self, job: JobRun, on_exit: ExitCallback) -> dict[str, Any]: ...
    def stop(self, job_id: int, grace_seconds: float) -> None: ...
    def recover(self, job: JobRun, handle: dict[str, Any] | None) -> None: ...
    def close(self) -> None: ...


class TrackingExecutor:
    """Placement and bookkeeping only; the work runs elsewhere."""

    def __init__(self) -> None:
        self._callbacks: dict[int, ExitCallback] = {}
        self._lock = threading.Lock()

    def start(self, job: JobRun, on_exit: ExitCallback) -> dict[str, Any]:
        with self._lock:
            self._callbacks[job.id] = on_exit
        return {"executor": "tracking"}

    def stop(self, job_id: int, grace_seconds: float) -> None:
        with self._lock:
            cb = self._callbacks.pop(job_id, None)
        if cb is not None:
            cb(job_id, None)

    def recover(self, job: JobRun, handle: dict[str, Any] | None) -> None:
        return None

    def close(self) -> None:
        return None


LOG_MODE = 0o600
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def job_environment(job: JobRun) -> dict[str, str]:
    """The whole environment a local job gets: ``PATH`` and ``HOME`` (the agent's, else
    defaults), the job spec's ``env``, then the variables the agent sets (which the spec cannot
    override). Nothing else of the agent's environment (tokens, proxies, ...) is passed on."""
    env = {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "HOME": os.environ.get("HOME") or "/"}
    env.update(job.env or {})
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in job.gpu_indexes)
    env["GPUWARDEN_JOB_ID"] = str(job.id)
    env["GPUWARDEN_GPU_UUIDS"] = ",".join(job.gpu_uuids)
    env["GPUWARDEN_JOB_KEY"] = job.key
    return env


def _proc_start_time(pid: int) -> int | None:
    """Start time of pid in clock ticks since boot (/proc/<pid>/stat field 22), None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(")") + 2 :].split()
    try:
        if fields[0] == "Z":
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


class LocalExecutor:
    """One process group per job on this host."""

    def __init__(self, log_dir: str | Path, kill_check_interval: float = 0.05) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._interval = kill_check_interval

    def log_path(self, job_id: int) -> Path:
        return self.log_dir / f"job-{job_id}.log"

    def start(self, job: JobRun, on_exit: ExitCallback) -> dict[str, Any]:
        if not job.command:
            raise ValueError(f"job {job.id}: LocalExecutor needs a command")
        env = job_environment(job)
        path = self.log_path(job.id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), LOG_MODE)
        with open(fd, "ab") as out:
            proc = subprocess.Popen(
                job.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        with self._lock:
            self._procs[job.id] = proc
        handle = {"executor": "local", "pid": proc.pid, "start_time": _proc_start_time(proc.pid), "log": str(path)}
        threading.Thread(
            target=self._wait, args=(job.id, proc, on_exit), name=f"job-{job.id}-wait", daemon=True
        ).start()
        return handle

    def _wait(self, job_id: int, proc: subprocess.Popen[bytes], on_exit: ExitCallback) -> None:
        rc = proc.wait()
        with self._lock:
            self._procs.pop(job_id, None)
        try:
            on_exit(job_id, rc)
        except Exception:
            log.exception("job %s: exit callback failed", job_id)

    def stop(self, job_id: int, grace_seconds: float) -> None:
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        threading.Thread(
            target=self._escalate, args=(proc, grace_seconds), name=f"job-{job_id}-kill", daemon=True
        ).start()

    def _escalate(self, proc: subprocess.Popen[bytes], grace: float) -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(self._interval)
        # Kill the whole group even if the leader exited: its children may linger on the GPU.
        _signal_group(proc.pid, signal.SIGKILL)

    def recover(self, job: JobRun, handle: dict[str, Any] | None) -> None:
        """Ends work a dead agent left running: by the handle's pid, else by the job's env key.

        The handle is missing when the agent died between committing the placement and
        committing the handle; the process (if it started) carries GPUWARDEN_JOB_KEY then.
        """
        groups: set[int] = set()
        pid = (handle or {}).get("pid")
        started = (handle or {}).get("start_time")
        if isinstance(pid, int) and pid > 0 and started is not None and _proc_start_time(pid) == started:
            groups.add(pid)
        if job.key:
            groups.update(_find_by_key(job.key))
        for pgid in groups:
            log.warning("job %s: process group %s outlived the agent; killing it before requeue", job.id, pgid)
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while groups and time.monotonic() < deadline:
            groups = {g for g in groups if _group_alive(g)}
            time.sleep(0.02)
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)

    def close(self) -> None:
        return None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _find_by_key(key: str) -> set[int]:
    """Process groups whose processes carry GPUWARDEN_JOB_KEY=key (readable for our own uid)."""
    needle = b"\0" + f"GPUWARDEN_JOB_KEY={key}".encode() + b"\0"
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
            if needle in b"\0" + env + b"\0" and _proc_start_time(int(entry.name)) is not None:
                found.add(os.getpgid(int(entry.name)))
        except (OSError, ProcessLookupError):
            continue
    return found
