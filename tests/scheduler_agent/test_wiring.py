"""The agent's wiring: one scheduler port, built by the agent, handed to every plug-in that acts.

No plug-in sets an attribute another reads, so the order of ``server.PLUGINS`` changes nothing;
the action's context reaches the port as a parameter; the predictor's migrations get a stable
key of their own (``predictor.migrations``) that never meets remediation's in Slurm's journal.
"""

from __future__ import annotations

import itertools
import json
import types
from pathlib import Path
from typing import Any

import pytest

from gpuwarden.scheduler_agent import config as agent_config
from gpuwarden.scheduler_agent import server
from gpuwarden.scheduler_agent.predictor import plugin as predictor_plugin
from gpuwarden.scheduler_agent.predictor.health import GpuHealth
from gpuwarden.scheduler_agent.predictor.migrations import PortMigrator
from gpuwarden.scheduler_agent.remediation import plugin as remediation_plugin
from gpuwarden.scheduler_agent.remediation.actuators import GpuRef
from gpuwarden.scheduler_agent.remediation.port import ActionContext
from gpuwarden.scheduler_agent.remediation.service import SchedulerAdapter
from gpuwarden.scheduler_agent.slurm.backend import SlurmPort
from gpuwarden.scheduler_agent.slurm.journal import Journal
from gpuwarden.scheduler_agent.store import Database


def _config(tmp: Path, slurm: bool) -> Path:
    (tmp / "token").write_text("operator-secret\n")
    (tmp / "webhook-token").write_text("webhook-secret\n")
    path = tmp / "agent.yml"
    # scontrol is never run while the agent is built: a path that does not exist proves it.
    path.write_text(
        """
web: {listen_address: "127.0.0.1:0", token_file: token}
remediation: {auth: {bearer_token_file: webhook-token}}
database: {path: agent.db}
executor: {kind: tracking}
inventory: {nodes: [{name: "n1:9786", count: 2}]}
predictor: {prometheus_url: "http://127.0.0.1:9", migrate: true}
"""
        + (
            f"""slurm: {{scontrol: ["{tmp / "no-such-scontrol"}"]}}
"""
            if slurm
            else ""
        )
    )
    return path


def _recording(module: Any, seen: list[tuple[str, Any]]) -> Any:
    """The plug-in module with its install() recording the port it was handed."""

    def install(agent: Any, port: Any) -> Any:
        seen.append((module.__name__.rsplit(".", 2)[-2], port))
        return module.install(agent, port)

    return types.SimpleNamespace(install=install, __name__=module.__name__)


@pytest.mark.parametrize("slurm", [True, False], ids=["slurm", "embedded"])
@pytest.mark.parametrize(
    "order",
    list(itertools.permutations([predictor_plugin, remediation_plugin])),
    ids=["predictor-first", "remediation-first"],
)
def test_the_same_port_reaches_remediation_and_the_predictor_in_any_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slurm: bool, order: tuple
) -> None:
    seen: list[tuple[str, Any]] = []
    monkeypatch.setattr(server, "PLUGINS", tuple(_recording(m, seen) for m in order))
    agent = server.Agent(agent_config.load(_config(tmp_path, slurm)))
    try:
        port = agent.port
        assert isinstance(port, SlurmPort if slurm else SchedulerAdapter)
        assert [name for name, _ in seen] == [m.__name__.rsplit(".", 2)[-2] for m in order]
        assert all(p is port for _, p in seen)
        rem = next(p for p in agent.plugins if hasattr(p, "worker"))
        svc = next(p for p in agent.plugins if hasattr(p, "risk"))
        assert rem.worker.scheduler is port  # remediation acts through it
        assert isinstance(svc.migrator, PortMigrator)
        assert svc.migrator.port is port  # and so do the predictor's migrations
        # The port is closed after the plug-ins that use it (listed first, closed last).
        assert (agent.plugins[0] is port) == slurm
        assert not hasattr(agent, "scheduler_port")
    finally:
        agent.close()


def test_the_seam_imports_its_plugins_plainly() -> None:
    src = Path(server.__file__).read_text()
    assert "find_spec" not in src and "import_module" not in src
    assert "CURRENT_ACTION" not in Path(server.__file__).parent.joinpath("remediation", "port.py").read_text()


class Port:
    """A scheduler port recording the context of every preemption."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ActionContext | None]] = []
        self.answers: list[Any] = []

    def preempt_gpu(self, uuid: str, reason: str, context: ActionContext | None = None) -> list[int]:
        self.calls.append((uuid, context))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _gpu(uuid: str = "GPU-a") -> GpuHealth:
    return GpuHealth(uuid, "3", "n1:9786", at=0.0)


def test_a_predictor_migration_keeps_its_key_until_it_has_moved_jobs(tmp_path: Path) -> None:
    db = Database(tmp_path / "agent.db")
    port = Port()
    port.answers = [RuntimeError("scontrol: controller down"), [], [41], [42]]
    mig = PortMigrator(db, port)  # type: ignore[arg-type]
    try:
        with pytest.raises(RuntimeError):
            mig.migrate(_gpu(), "predicted THERMAL_CRITICAL")  # failed half-way: key kept
        assert mig.migrate(_gpu(), "predicted THERMAL_CRITICAL") == []  # idle: key kept
        assert mig.migrate(_gpu(), "predicted THERMAL_CRITICAL") == [41]  # moved: closed
        ctxs = [c for _, c in port.calls]
        assert all(c is not None and c.source == "predictor" for c in ctxs)
        assert len({c.action_id for c in ctxs if c}) == 1
        assert ctxs[0] == ActionContext(
            "predictor",
            ctxs[0].action_id,  # type: ignore[union-attr]
            GpuRef("GPU-a", "3", "n1:9786", {"instance": "n1:9786", "gpu": "3"}),
        )
        mig.migrate(_gpu(), "predicted again")  # the next episode: a new key
        assert port.calls[-1][1].action_id != ctxs[0].action_id  # type: ignore[union-attr]
        rows = mig.rows()
        assert [(r["outcome"], r["jobs"]) for r in rows] == [("moved", [42]), ("moved", [41])]
        assert "controller down" not in rows[1]["error"]  # cleared once it worked
    finally:
        mig.close()
        db.close()


def test_a_key_survives_a_restart_and_ends_when_the_prediction_clears(tmp_path: Path) -> None:
    db = Database(tmp_path / "agent.db")
    port = Port()
    port.answers = [RuntimeError("killed"), [], []]
    first = PortMigrator(db, port)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        first.migrate(_gpu(), "r")
    first.close()
    again = PortMigrator(db, port)  # type: ignore[arg-type]   # the agent restarted
    try:
        again.migrate(_gpu(), "r")
        assert port.calls[0][1] == port.calls[1][1]  # same key after the restart
        again.predicted({"GPU-other"})  # GPU-a's prediction cleared
        assert again.rows()[0]["outcome"] == "cleared"
        again.migrate(_gpu(), "r")
        assert port.calls[2][1].action_id != port.calls[0][1].action_id  # type: ignore[union-attr]
    finally:
        again.close()
        db.close()


def test_the_embedded_adapter_preempts_as_the_contexts_source() -> None:
    class Scheduler:
        def __init__(self) -> None:
            self.actors: list[str] = []

        def preempt_gpu(self, uuid: str, reason: str, actor: str) -> list[int]:
            self.actors.append(actor)
            return [1]

    s = Scheduler()
    port = SchedulerAdapter(s)  # type: ignore[arg-type]
    port.preempt_gpu("GPU-a", "r", ActionContext("predictor", 1, GpuRef("GPU-a")))
    port.preempt_gpu("GPU-a", "r", ActionContext("remediation", 1, GpuRef("GPU-a")))
    port.preempt_gpu("GPU-a", "r")
    assert s.actors == ["predictor", "remediation", "remediation"]


def test_slurm_journal_keys_remediation_and_predictor_apart(tmp_path: Path) -> None:
    db = Database(tmp_path / "agent.db")
    journal = Journal(db)
    try:
        made = []

        def plan(v: list) -> Any:
            made.append(v)
            return v

        assert journal.plan(("remediation", 1), "preempt n 0", lambda: plan([[7, 0]])) == [[7, 0]]
        assert journal.plan(("predictor", 1), "preempt n 0", lambda: plan([[8, 0]])) == [[8, 0]]
        assert journal.plan(("remediation", 1), "preempt n 0", lambda: plan([[9, 0]])) == [[7, 0]]
        # An empty plan is not kept: the same key looks again (a job placed since is found).
        assert journal.plan(("predictor", 2), "preempt n 1", lambda: plan([])) == []
        assert journal.plan(("predictor", 2), "preempt n 1", lambda: plan([[5, 0]])) == [[5, 0]]
        row = journal.begin(("predictor", 1), "requeue", "8", ["scontrol", "requeue", "8"])
        journal.finish(row, "ok", 1, 0)
        assert journal.previous(("remediation", 1), "requeue", "8") is None
        assert journal.previous(("predictor", 1), "requeue", "8")["id"] == row
        assert journal.rows()[0]["source"] == "predictor"
    finally:
        journal.close()
        db.close()


def test_slurm_journal_migration_keeps_remediations_rows(tmp_path: Path) -> None:
    from gpuwarden.scheduler_agent.slurm import journal as journal_mod

    db = Database(tmp_path / "agent.db")
    db.migrate(journal_mod.COMPONENT, journal_mod.MIGRATIONS[:1])  # an agent of before
    with db.transaction() as c:
        c.execute(
            "INSERT INTO slurm_commands (at, action_id, op, target, argv, outcome) "
            "VALUES (1, 5, 'requeue', '9', '[]', 'ok')"
        )
        c.execute("INSERT INTO slurm_plans VALUES (5, 'preempt n 0', ?)", (json.dumps([[9, 0]]),))
    journal = Journal(db)
    try:
        assert journal.previous(("remediation", 5), "requeue", "9") is not None
        assert journal.previous(("predictor", 5), "requeue", "9") is None
        assert journal.plan(("remediation", 5), "preempt n 0", list) == [[9, 0]]
    finally:
        journal.close()
        db.close()
