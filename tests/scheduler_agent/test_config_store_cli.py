"""Config errors name file/line/field; migrations per component; CLI verbs against a live agent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gpuwarden.scheduler_agent.config import ConfigError, load
from gpuwarden.scheduler_agent.scheduler import Scheduler
from gpuwarden.scheduler_agent.store import Database, StoreError
from tests.helpers import console_script, free_port, wait_until
from tests.scheduler_agent.test_api import TOKEN, Api, write_config


def test_config_errors_name_the_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    cfg = tmp_path / "a.yaml"
    cfg.write_text("web:\n  token_file: token\nscheduler:\n  max_preemptions: zero\n")
    with pytest.raises(ConfigError) as e:
        load(cfg)
    assert f"{cfg}:4: scheduler.max_preemptions" in str(e.value)
    cfg.write_text("web:\n  token_file: missing-token\n")
    with pytest.raises(ConfigError, match="web.token_file: .*does not exist"):
        load(cfg)
    cfg.write_text("web:\n  token_file: token\nremediation: {dry_run: true}\npredictor: {}\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load(cfg)
    # The job matcher is spliced into the inventory's PromQL: one matcher, its quotes balanced.
    cfg.write_text(
        "web:\n  token_file: token\ninventory:\n  prometheus:\n    url: http://p:9090\n"
        '    job_selector: \'job="a"} or vector(1) or x{y="b"\'\n'
    )
    with pytest.raises(ConfigError, match="inventory.prometheus.job_selector"):
        load(cfg)


def test_config_leaves_plugin_sections_to_their_owners(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    cfg = tmp_path / "a.yaml"
    cfg.write_text("web:\n  token_file: token\nremediation:\n  anything: [1, 2]\n")
    c = load(cfg)
    assert c.section("remediation") == {"anything": [1, 2]} and c.section("predictor") == {}
    assert str(c.error("remediation.anything", "bad")).startswith(f"{cfg}:4: remediation.anything: bad")
    assert c.listen_port == 9787 and c.database_path == tmp_path / "gpuwarden-agent.db"


def test_migrations_are_per_component_and_run_once(tmp_path: Path) -> None:
    db = Database(tmp_path / "m.db")
    calls = []
    steps = ["CREATE TABLE rem_a (x INTEGER);", lambda c: calls.append(1)]
    assert db.migrate("remediation", steps) == 2
    assert db.migrate("remediation", steps) == 2 and calls == [1]
    assert db.applied("remediation") == {1, 2}
    with pytest.raises(StoreError, match="version 2 but this build knows only 1"):
        db.migrate("remediation", steps[:1])
    with pytest.raises(StoreError, match="migration other v1 failed"):
        db.migrate("other", ["CREATE TABLE rem_a (y INTEGER);"])
    assert db.applied("other") == set()
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_state_survives_a_reopen(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")
    s = Scheduler(db)
    s.register_gpu("n", 0, "G0")
    s.register_gpu("n", 1, "G1")
    s.quarantine("G0", "ecc", "me")
    s.set_alert("G1", "POWER_CRITICAL", "critical", True)
    j = s.submit("tracked", 1)
    db.close()
    s2 = Scheduler(Database(tmp_path / "s.db"))
    assert s2.get_gpu("G0")["state"] == "quarantined" and s2.get_gpu("G1")["state"] == "alerting"
    assert s2.get_job(j["id"])["state"] == "pending" and s2.schedule_once() == []
    s2.set_alert("G1", "POWER_CRITICAL", "critical", False)
    assert s2.schedule_once() == [j["id"]]
    s2.db.close()


def test_cli_verbs_talk_to_a_live_agent(tmp_path: Path, spawn) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port)
    spawn([console_script("gpuwarden-agent"), "serve", "--config", str(cfg)], name="agent")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: Api(base).call("GET", "/healthz")[0] == 200, 20, what="agent up")
    cli = [console_script("gpuwarden-agent")]
    common = ["--url", base, "--token-file", str(tmp_path / "token")]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=30)

    out = run("jobs", "submit", *common, "--name", "cli", "--gpus", "2")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["name"] == "cli" and job["gpus"] == 2
    assert "cli" in run("jobs", "list", *common).stdout
    assert run("gpus", "quarantine", *common, "GPU-n1-0", "--reason", "ecc").returncode == 0
    listing = run("gpus", "list", *common).stdout
    assert any("GPU-n1-0" in line and "quarantined" in line for line in listing.splitlines())
    assert run("gpus", "release", *common, "GPU-n1-0").returncode == 0
    assert json.loads(run("jobs", "cancel", *common, str(job["id"])).stdout)["state"] == "cancelled"
    denied = run("jobs", "submit", "--url", base, "--name", "x", "--gpus", "1")
    assert denied.returncode == 1 and "401" in denied.stderr
    bad = run("jobs", "submit", *common, "--name", "x", "--gpus", "99")
    assert bad.returncode == 1 and "gpus" in bad.stderr
    assert TOKEN not in listing
