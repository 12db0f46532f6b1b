"""SlurmPort.allocations: the GPUs Slurm's running jobs hold, named by the agent's inventory
(uuid, Prometheus instance), from a stand-in scontrol. No Slurm needed (the real cluster's test
is in test_agent_slurm.py)."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuwarden.scheduler_agent.scheduler import Scheduler
from gpuwarden.scheduler_agent.slurm import backend
from gpuwarden.scheduler_agent.slurm.backend import SlurmPort
from gpuwarden.scheduler_agent.slurm.errors import SlurmError
from gpuwarden.scheduler_agent.slurm.journal import Journal
from gpuwarden.scheduler_agent.slurm.nodemap import NodeMap
from gpuwarden.scheduler_agent.slurm.runner import Runner
from gpuwarden.scheduler_agent.store import Database
from tests.slurm.test_units import JOBS, NODES


@pytest.fixture
def sched(tmp_path: Path) -> Iterator[Scheduler]:
    db = Database(tmp_path / "agent.db")
    s = Scheduler(db)
    yield s
    s.close()
    db.close()


def port(tmp_path: Path, scheduler, body: str = "") -> SlurmPort:
    (tmp_path / "nodes").write_text(NODES)
    (tmp_path / "jobs").write_text(JOBS)
    script = tmp_path / "scontrol"
    script.write_text(
        f"""#!/bin/sh
{body}
case "$2" in node) cat {tmp_path}/nodes ;; job) cat {tmp_path}/jobs ;; esac
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return SlurmPort(Runner([str(script)], timeout=5, attempts=1), Journal(scheduler.db), NodeMap(), scheduler)


def test_running_jobs_gpus_with_the_inventorys_uuid_and_instance(sched, tmp_path) -> None:
    s = sched
    # The inventory names node vm by its exporter target (NodeMap matches 127.0.0.1 to NodeAddr).
    for i in range(8):
        s.register_gpu("127.0.0.1:9786", i, f"GPU-vm-{i}")
    p = port(tmp_path, s)
    got = sorted(p.allocations())
    # Job 7 holds gpu01 and gpu02's 0 and 2 (not in the inventory) and vm's 4-5; job 1 is pending.
    assert [(a.instance, a.gpu, a.uuid, a.job_id, a.job_name) for a in got] == [
        ("127.0.0.1:9786", 4, "GPU-vm-4", "7", "train llm  v2"),
        ("127.0.0.1:9786", 5, "GPU-vm-5", "7", "train llm  v2"),
        ("gpu01", 0, "", "7", "train llm  v2"),
        ("gpu01", 2, "", "7", "train llm  v2"),
        ("gpu02", 0, "", "7", "train llm  v2"),
        ("gpu02", 2, "", "7", "train llm  v2"),
    ]
    p.close()


def test_a_slow_scontrol_gives_the_last_answer_in_bounded_time(sched, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(backend, "ALLOCATIONS_WAIT_SECONDS", 0.3)
    s = sched
    p = port(tmp_path, s, body=f"[ -e {tmp_path}/slow ] && sleep 2")
    first = p.allocations()
    assert len(first) == 6
    (tmp_path / "slow").touch()
    t0 = time.monotonic()
    assert p.allocations() == first  # the last answer, not a stalled scrape
    assert time.monotonic() - t0 < 1.5
    p.close()


def test_a_failing_scontrol_raises_so_the_scheduler_drops_slurms_series(sched, tmp_path) -> None:
    s = sched
    p = port(tmp_path, s, body='echo "slurm_load_jobs error: Access denied" >&2; exit 1')
    with pytest.raises(SlurmError, match="Access denied"):
        p.allocations()
    s.add_allocation_source(p.allocations)
    assert s.allocations() == []
    p.close()
