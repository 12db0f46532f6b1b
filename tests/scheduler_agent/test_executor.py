"""The local runner with real processes: env, exit codes, SIGTERM honoured, SIGKILL after grace."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from gpuwarden.scheduler_agent.executor import JobRun, LocalExecutor
from tests.helpers import wait_until

PY = sys.executable


def _run(job_id: int, *argv: str, indexes: tuple[int, ...] = (0,)) -> JobRun:
    return JobRun(
        id=job_id,
        name="t",
        command=list(argv),
        gpu_indexes=indexes,
        gpu_uuids=tuple(f"GPU-{i}" for i in indexes),
        node="n",
        key=f"test:{job_id}:1",
    )


def test_scheduler_runs_a_command_with_its_gpus_and_logs_output(make_scheduler, tmp_path: Path) -> None:
    ex = LocalExecutor(tmp_path / "logs")
    s = make_scheduler({"n": 4}, executor=ex)
    s.submit("busy", 1)  # tracking only: holds one GPU, so indexes are not 0,1
    j = s.submit("env", 2, command=[PY, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"])
    s.schedule_once()
    done = wait_until(
        lambda: s.get_job(j["id"])["state"] == "completed" and s.get_job(j["id"]), 10, what="job to complete"
    )
    assert done["exit_code"] == 0
    want = ",".join(str(i) for i in done["gpu_indexes"])
    assert (tmp_path / "logs" / f"job-{j['id']}.log").read_text().strip() == want
    assert len(done["gpu_indexes"]) == 2


def test_exit_code_decides_completed_or_failed(make_scheduler, tmp_path: Path) -> None:
    s = make_scheduler({"n": 2}, executor=LocalExecutor(tmp_path / "logs"))
    ok = s.submit("ok", 1, command=[PY, "-c", "pass"])
    bad = s.submit("bad", 1, command=[PY, "-c", "raise SystemExit(3)"])
    s.schedule_once()
    wait_until(
        lambda: s.get_job(bad["id"])["state"] == "failed" and s.get_job(ok["id"])["state"] == "completed",
        10,
        what="both jobs to end",
    )
    got = s.get_job(bad["id"])
    assert got["exit_code"] == 3 and got["reason"] == "exit code 3"
    assert s.get_gpu("GPU-n-0")["job_id"] is None and s.get_gpu("GPU-n-1")["job_id"] is None


def test_missing_program_fails_the_job_with_a_reason(make_scheduler, tmp_path: Path) -> None:
    s = make_scheduler({"n": 1}, executor=LocalExecutor(tmp_path / "logs"))
    j = s.submit("nope", 1, command=[str(tmp_path / "no-such-program")])
    s.schedule_once()
    got = s.get_job(j["id"])
    assert got["state"] == "failed" and got["reason"].startswith("could not start")
    assert s.get_gpu("GPU-n-0")["job_id"] is None


def test_sigterm_is_honoured_and_the_preempted_job_requeued(tmp_path: Path, make_scheduler) -> None:
    marker = tmp_path / "got-term"
    prog = (
        f"import signal, sys, time\n"
        f"def h(*a):\n open({str(marker)!r}, 'w').write('term'); sys.exit(0)\n"
        f"signal.signal(signal.SIGTERM, h)\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    ex = LocalExecutor(tmp_path / "logs")
    s = make_scheduler({"n": 1}, executor=ex, stop_grace_seconds=10)
    j = s.submit("term", 1, command=[PY, "-c", prog])
    s.schedule_once()
    log = tmp_path / "logs" / f"job-{j['id']}.log"
    wait_until(lambda: "ready" in log.read_text(), 10, what="job to install its handler")
    t0 = time.monotonic()
    assert s.preempt_gpu("GPU-n-0", "test") == [j["id"]]
    wait_until(lambda: s.get_job(j["id"])["state"] == "pending", 10, what="requeue after SIGTERM")
    assert time.monotonic() - t0 < 5  # well before the 10 s grace: SIGTERM did it
    assert marker.read_text() == "term"


def test_sigkill_after_the_grace_when_sigterm_is_ignored(tmp_path: Path) -> None:
    prog = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    ex = LocalExecutor(tmp_path / "logs")
    exits: list[int | None] = []
    handle = ex.start(_run(1, PY, "-c", prog), lambda _id, rc: exits.append(rc))
    wait_until(lambda: "ready" in ex.log_path(1).read_text(), 10, what="job ready")
    t0 = time.monotonic()
    ex.stop(1, grace_seconds=0.5)
    wait_until(lambda: exits, 10, what="exit after SIGKILL")
    assert exits == [-9]
    assert 0.4 < time.monotonic() - t0 < 5
    assert (
        not os.path.exists(f"/proc/{handle['pid']}/cmdline")
        or Path(f"/proc/{handle['pid']}/stat").read_text().split(") ")[1][0] == "Z"
    )


def test_recover_kills_an_orphan_found_by_its_key(tmp_path: Path) -> None:
    prog = "import time\nprint('ready', flush=True)\ntime.sleep(60)\n"
    first = LocalExecutor(tmp_path / "logs")
    exits: list[int | None] = []
    first.start(_run(5, PY, "-c", prog), lambda _id, rc: exits.append(rc))
    wait_until(lambda: "ready" in first.log_path(5).read_text(), 10, what="job ready")
    # A fresh executor (the restarted agent) with no handle: it must find the process by its key.
    LocalExecutor(tmp_path / "logs").recover(_run(5, PY, "-c", prog), None)
    wait_until(lambda: exits, 10, what="orphan killed")
    assert exits[0] in (-15, -9)
