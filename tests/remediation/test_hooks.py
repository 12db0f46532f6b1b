"""Command hooks (``remediation.commands``): ``{action_id}``, at most once across a kill -9, the
hook's own outcome in the audit, values checked before any side effect."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from gpuwarden.scheduler_agent.remediation.actuators import CommandActuator
from gpuwarden.scheduler_agent.remediation.config import parse
from gpuwarden.scheduler_agent.remediation.intake import Credentials
from gpuwarden.scheduler_agent.remediation.service import Remediation
from tests.helpers import wait_until
from tests.remediation.fakes import FakeScheduler, alert, notification

REPO = Path(__file__).resolve().parents[2]


def deliver(rem, *alerts):
    rem.intake.accept(json.dumps(notification(*alerts)).encode())
    rem.worker.run_once()


def recorder(out: Path, *args: str, then: str = "") -> list[str]:
    """A hook that appends its arguments (one line) to ``out``, then runs ``then``."""
    code = "import sys, time; f = open(sys.argv[1], 'a'); f.write(' '.join(sys.argv[2:]) + '\\n'); f.close(); " + then
    return [sys.executable, "-c", code, str(out), *args]


def test_every_hook_gets_the_action_id(make_rem, tmp_path: Path):
    out = tmp_path / "hook.log"
    rem = make_rem(
        {
            "commands": {"quarantine": recorder(out, "{action}", "id={action_id}", "{uuid}", "{gpu}", "{instance}")},
            "budget": {"max_quarantined_ratio": 0.5},
        }
    )
    deliver(rem, alert("GPU-1", action="quarantine", rule="ECC_UNCORRECTABLE"))
    row = rem.actions(limit=1)[0]
    assert row["outcome"] == "acted", row
    assert out.read_text() == f"quarantine id={row['id']} GPU-1 0 node1:9786\n"
    hook = row["detail"]["hook"]
    assert hook["outcome"] == "ok" and hook["argv"][-4] == f"id={row['id']}"
    assert hook["started_at"] <= hook["finished_at"]


def test_an_alert_label_cannot_override_the_action_id(make_rem, tmp_path: Path):
    out = tmp_path / "hook.log"
    rem = make_rem({"commands": {"preempt": recorder(out, "id={action_id}")}})
    a = alert("GPU-2", action="preempt")
    a["labels"]["action_id"] = "999"
    deliver(rem, a)
    assert out.read_text() == f"id={rem.actions(limit=1)[0]['id']}\n"


CHILD = """
import json, sys
from gpuwarden.scheduler_agent.remediation.config import parse
from gpuwarden.scheduler_agent.remediation.intake import Credentials
from gpuwarden.scheduler_agent.remediation.service import Remediation
from tests.remediation.fakes import FakeActuator, FakeScheduler, alert, notification

section = json.loads(sys.argv[2])
rem = Remediation.create(sys.argv[1], parse(section), FakeScheduler(["GPU-1", "GPU-2"]),
                         FakeActuator(), credentials=Credentials(b"t"))
rem.intake.accept(json.dumps(notification(alert("GPU-1", action="quarantine"))).encode())
rem.worker.run_once()   # blocks in the hook until killed
"""


def test_a_hook_running_at_a_kill_9_is_not_run_again_and_is_recorded_uncertain(tmp_path: Path, spawn):
    db, out = tmp_path / "agent.db", tmp_path / "hook.log"
    # The hook records that it ran, then hangs: the agent is killed while it runs.
    section = {
        "commands": {"quarantine": recorder(out, "drain", "id={action_id}", then="time.sleep(60)")},
        "budget": {"max_quarantined_ratio": 0.5},
    }
    child = spawn([sys.executable, "-c", CHILD, str(db), json.dumps(section)], name="agent", cwd=REPO)
    wait_until(
        lambda: out.exists() and out.read_text().endswith("\n") or not child.alive(), 20, what="the hook to start"
    )
    assert child.alive(), child.output()
    child.kill9()  # the agent and the hook with it (one process group)

    with sqlite3.connect(db) as c:
        aid, outcome, detail = c.execute("SELECT id, outcome, detail FROM remediation_actions").fetchone()
    assert outcome == "pending" and "started_at" in json.loads(detail)["hook"]

    sched = FakeScheduler(["GPU-1", "GPU-2"])
    rem = Remediation.create(str(db), parse(section), sched, credentials=Credentials(b"t"))
    try:
        rem.worker.run_once()
        rem.worker.run_once()
        row = rem.actions(limit=1)[0]
        assert (row["id"], row["action"], row["outcome"]) == (aid, "quarantine", "uncertain")
        assert "may or may not have run" in row["error"] and f"action_id {aid}" in row["error"]
        assert row["detail"]["hook"]["outcome"] == "uncertain"
        assert row["detail"]["hook"]["argv"][-1] == f"id={aid}"
        assert out.read_text() == f"drain id={aid}\n", "the hook ran once, not again"
        assert sched.calls == [], "nothing of the action was redone"
        assert rem.actions(outcome="pending") == []
        assert len(rem.actions()) == 1
    finally:
        rem.stop()


def test_a_pending_action_whose_hook_had_not_started_runs_it_once_on_resume(tmp_path: Path, clock):
    db, out = tmp_path / "agent.db", tmp_path / "hook.log"
    section = parse({"commands": {"preempt": recorder(out, "id={action_id}")}})
    first = Remediation.create(str(db), section, FakeScheduler(["GPU-1"]), credentials=Credentials(b"t"), clock=clock)
    first.worker._execute = lambda aid: None  # killed after the pending row, before acting
    deliver(first, alert("GPU-1", action="preempt"))
    first.stop()
    assert not out.exists()

    sched = FakeScheduler(["GPU-1"])
    rem = Remediation.create(str(db), section, sched, credentials=Credentials(b"t"), clock=clock)
    try:
        rem.worker.run_once()
        rem.worker.run_once()
        row = rem.actions(limit=1)[0]
        assert row["outcome"] == "acted", row
        assert out.read_text() == f"id={row['id']}\n"
        assert sched.count("preempt") == 1
    finally:
        rem.stop()


def test_a_failed_hook_is_recorded_and_the_throttle_still_tracked(make_rem, clock, tmp_path):
    rem = make_rem(
        {
            "commands": {"throttle": [sys.executable, "-c", "import sys; sys.exit('pager down')"]},
            "throttle": {"fraction": 0.5, "hold_down_seconds": 10},
        }
    )
    deliver(rem, alert("GPU-1"))
    row = rem.actions(limit=1)[0]
    assert row["outcome"] == "failed"
    assert "the throttle was done; its hook failed" in row["error"] and "pager down" in row["error"]
    assert row["detail"]["hook"]["outcome"] == "failed"
    # The limit was lowered, so it is still held and restored after the alert resolves.
    assert rem.act.limits["GPU-1"] == 200.0
    deliver(rem, alert("GPU-1", status="resolved"))
    clock.t += 11
    rem.worker.run_once()
    assert rem.act.limits["GPU-1"] == 400.0


def test_a_refused_hook_value_stops_the_action_before_any_side_effect(make_rem, tmp_path):
    out = tmp_path / "hook.log"
    rem = make_rem({"commands": {"throttle": recorder(out, "--node={node}")}})
    a = alert("GPU-1")
    a["labels"]["node"] = "n1 $(touch x)"
    deliver(rem, a)
    row = rem.actions(limit=1)[0]
    assert row["outcome"] == "failed" and row["detail"]["refused_label"] == "node"
    assert row["error"].startswith("label node='n1 $(touch x)' refused")
    assert "GPU-1" not in rem.act.limits and rem.sched.calls == []
    assert not out.exists()


def test_a_restore_renders_the_labels_of_the_alert_that_throttled(make_rem, clock, tmp_path):
    """deploy/README.md's set_command names ``{node}``, a label only the alert has. No alert asks
    for a restore: it renders the throttling alert's labels, so the limit does come back."""
    limits, hook = tmp_path / "set.log", tmp_path / "hook.log"
    act = CommandActuator(recorder(limits, "{node}", "-i", "{gpu}", "-pl", "{watts}"), default_watts=400)
    rem = make_rem(
        {
            "commands": {"restore": recorder(hook, "--node={node}", "--id={action_id}")},
            "throttle": {"fraction": 0.5, "hold_down_seconds": 10},
        },
        actuator=act,
    )
    a = alert("GPU-1")
    a["labels"]["node"] = "gpu-node-7"
    deliver(rem, a)
    deliver(rem, {**a, "status": "resolved"})
    clock.t += 11
    rem.worker.run_once()
    assert limits.read_text().splitlines() == ["gpu-node-7 -i 0 -pl 200", "gpu-node-7 -i 0 -pl 400"]
    restore = rem.actions(limit=1)[0]
    assert (restore["action"], restore["outcome"]) == ("restore", "acted"), restore
    assert hook.read_text() == f"--node=gpu-node-7 --id={restore['id']}\n"


def test_a_restore_whose_hook_fails_its_checks_still_restores_the_limit(make_rem, clock, tmp_path):
    """Values are checked when the hook is rendered. An actuator that sets limits by UUID (NVML)
    never checks the alert's gpu label, so a hostile one is first refused by the restore's hook:
    the limit still comes back, and the restore is not retried."""
    out = tmp_path / "hook.log"
    rem = make_rem(
        {
            "commands": {"restore": recorder(out, "--gpu={gpu}")},
            "throttle": {"fraction": 0.5, "hold_down_seconds": 10},
        }
    )
    a = alert("GPU-1")
    a["labels"]["gpu"] = "0; touch x"
    deliver(rem, a)
    assert rem.act.limits["GPU-1"] == 200.0
    deliver(rem, {**a, "status": "resolved"})
    clock.t += 11
    rem.worker.run_once()
    assert rem.act.limits["GPU-1"] == 400.0, "a hook refusing a value kept the power limit lowered"
    row = rem.actions(limit=1)[0]
    assert (row["action"], row["outcome"], row["detail"]["refused_label"]) == ("restore", "failed", "gpu")
    assert row["error"].startswith("the restore was done; its hook failed: label gpu='0; touch x' refused")
    assert not out.exists()
    clock.t += 600
    rem.worker.run_once()
    assert [r["action"] for r in rem.actions()].count("restore") == 1, "a done restore is not retried"
