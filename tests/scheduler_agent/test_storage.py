"""The agent's database and the files it creates: one connection factory, 0600 files, a damaged,
read-only or unreachable database refused at start (exit 2, no traceback), SQLITE_FULL reported
as such, ``database.retention`` in the config, and local jobs' logs and environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuwarden.scheduler_agent.config import ConfigError, load
from gpuwarden.scheduler_agent.executor import JobRun, LocalExecutor
from gpuwarden.scheduler_agent.remediation import store as rem_store
from gpuwarden.scheduler_agent.slurm.journal import Journal
from gpuwarden.scheduler_agent.store import Database, DatabaseFull, StoreError, connect
from tests.helpers import console_script, free_port, wait_until, write_agent_config

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_TOKEN = "webhook-token-for-storage-tests"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -- one connection factory ---------------------------------------------------------------------


def _pragmas(conn: sqlite3.Connection) -> tuple:
    return tuple(conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "foreign_keys", "busy_timeout"))


def test_every_component_connects_through_one_factory_with_the_same_settings(tmp_path: Path):
    db = Database(tmp_path / "a.db")
    rem_store.migrate(db)
    journal = Journal(db)
    conns = [db.conn, rem_store.connect(db.path), rem_store.connect(db.path, "NORMAL"), journal.conn, connect(db.path)]
    try:
        assert {_pragmas(c) for c in conns} == {("wal", 1, 10000)}
        assert all(c.isolation_level is None and c.row_factory is sqlite3.Row for c in conns)
        assert rem_store.connect(db.path).execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        for c in conns[1:]:
            c.close()
        db.close()


def test_no_component_opens_sqlite_on_its_own():
    """sqlite3.connect appears in the factory only (scheduler_agent/store.py)."""
    offenders = []
    for path in (REPO / "scheduler_agent").rglob("*.py"):
        if path == REPO / "scheduler_agent" / "store.py":
            continue
        if re.search(r"sqlite3\.connect\(", path.read_text()):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_database_and_its_wal_and_shm_are_created_0600(tmp_path: Path):
    old = os.umask(0o022)
    try:
        db = Database(tmp_path / "sub" / "agent.db")
        rem_store.migrate(db)
        with db.transaction() as c:
            c.execute("INSERT INTO remediation_breaker (id, state) VALUES (1, 'closed') ON CONFLICT DO NOTHING")
        files = [tmp_path / "sub" / n for n in ("agent.db", "agent.db-wal", "agent.db-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        db.close()
    finally:
        os.umask(old)


def test_an_existing_database_keeps_its_mode(tmp_path: Path):
    p = tmp_path / "agent.db"
    Database(p).close()
    p.chmod(0o640)
    Database(p).close()
    assert _mode(p) == 0o640


# -- damaged, read-only, unreachable ------------------------------------------------------------


def _populated_database(path: Path) -> None:
    """A real agent database with tables and rows (some pages of them)."""
    db = Database(path)
    rem_store.migrate(db)
    with db.transaction() as c:
        c.execute(
            "INSERT INTO remediation_notifications (received_at, receiver, group_key, "
            "status, alert_count, new_events, truncated_alerts, external_url) VALUES "
            "(1, 'r', 'g', 'firing', 1, 1, 0, '')"
        )
        c.executemany(
            "INSERT INTO remediation_events (notification_id, fingerprint, starts_at, ends_at, "
            "status, rule, severity, action, uuid, gpu, instance, labels, received_at) VALUES "
            "(1, ?, 's', 'e', 'firing', 'THERMAL_CRITICAL', 'critical', 'notify', 'GPU-1', "
            "'0', 'n0', ?, 1)",
            [(f"fp{i}", "{}" + " " * 200) for i in range(2000)],
        )
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def _damage(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:  # overwrite 16 KiB in the middle of the file
        f.seek(size // 2)
        f.write(b"\xde\xad\xbe\xef" * 4096)


def test_a_damaged_database_is_refused_with_what_to_do(tmp_path: Path):
    p = tmp_path / "agent.db"
    _populated_database(p)
    _damage(p)
    with pytest.raises(StoreError) as e:
        Database(p)
    msg = str(e.value)
    assert str(p) in msg and "damaged" in msg and "quick_check" in msg
    assert "backup" in msg and "move it aside" in msg and "new, empty database" in msg


def _serve(cfg: Path, user: int | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    argv = [console_script("gpuwarden-agent"), "serve", "--config", str(cfg)]
    if user is not None:
        argv = [shutil.which("setpriv") or "setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cfg.parent)


def _config(directory: Path, db_path: str) -> Path:
    (directory / "webhook-token").write_text(WEBHOOK_TOKEN + "\n")
    # write_agent_config adds remediation.auth (webhook-token) itself: a second one would be a
    # duplicate key, which the config loader refuses.
    cfg = write_agent_config(directory, free_port(), "operator-token-for-storage-tests")
    cfg.write_text(cfg.read_text().replace("path: agent.db", f"path: {db_path}"))
    return cfg


def _refused(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "database.path" in res.stderr
    for w in words:
        assert w in res.stderr, (w, res.stderr[-3000:])


def test_agent_refuses_to_start_on_a_damaged_database(tmp_path: Path):
    p = tmp_path / "agent.db"
    _populated_database(p)
    _damage(p)
    before = p.read_bytes()
    res = _serve(_config(tmp_path, "agent.db"))
    _refused(res, str(p), "damaged", "backup", "move it aside")
    assert p.read_bytes() == before  # nothing written into the damaged file


def test_agent_exits_2_when_the_database_folder_cannot_be_created(tmp_path: Path):
    cfg = _config(tmp_path, "token/sub/agent.db")  # "token" is a file, not a folder
    _refused(_serve(cfg), "cannot create its folder", str(tmp_path / "token" / "sub"))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="gpuwarden-storage-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _unprivileged() -> int | None:
    """The uid to run the agent as so that file permissions apply (None: ourselves)."""
    if os.geteuid() != 0:
        return None
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: permissions cannot be tested")
    return 65534  # nobody


def _readable_by_all(d: Path) -> None:
    for f in d.iterdir():
        if f.is_file():
            f.chmod(0o644)


def test_agent_exits_2_on_a_read_only_database_file(shared_dir: Path):
    user = _unprivileged()
    cfg = _config(shared_dir, "agent.db")
    _populated_database(shared_dir / "agent.db")
    _readable_by_all(shared_dir)
    (shared_dir / "agent.db").chmod(0o444)
    res = _serve(cfg, user)
    _refused(res, str(shared_dir / "agent.db"), "cannot write the database", "writable")


def test_agent_exits_2_when_the_database_folder_is_not_writable(shared_dir: Path):
    user = _unprivileged()
    cfg = _config(shared_dir, "ro/agent.db")
    (shared_dir / "ro").mkdir(mode=0o555)
    (shared_dir / "ro").chmod(0o555)
    _readable_by_all(shared_dir)
    res = _serve(cfg, user)
    _refused(res, str(shared_dir / "ro" / "agent.db"), "cannot create the database file")


# -- SQLITE_FULL is reported as such --------------------------------------------------------------


def _cap(conn: sqlite3.Connection, extra_pages: int = 2) -> None:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


def test_database_full_is_not_masked_by_the_rollback(tmp_path: Path):
    db = Database(tmp_path / "full.db")
    with db.transaction() as c:
        c.execute("CREATE TABLE t (x TEXT)")
    _cap(db.conn)
    with pytest.raises(DatabaseFull, match=r"^database full: database or disk is full") as e:
        with db.transaction() as c:
            c.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 100)
    assert isinstance(e.value, sqlite3.OperationalError)  # still an sqlite3.Error: callers' 503
    assert not db.conn.in_transaction
    with db.transaction() as c:  # the connection is usable again
        c.execute("INSERT INTO t VALUES ('small')")
    assert db.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    db.close()


def test_remediation_transaction_keeps_the_original_error(tmp_path: Path):
    conn = connect(tmp_path / "r.db")
    conn.execute("CREATE TABLE t (x TEXT)")
    _cap(conn)
    with pytest.raises(DatabaseFull, match="database full"):
        rem_store.transaction(conn, lambda c: c.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 100))
    with pytest.raises(ZeroDivisionError):  # any error: rolled back, and that error raised
        rem_store.transaction(conn, lambda c: (c.execute("INSERT INTO t VALUES ('a')"), 1 / 0))
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    conn.close()


# -- database.retention -----------------------------------------------------------------------


def _retention_config(tmp_path: Path, body: str) -> Path:
    (tmp_path / "token").write_text("t")
    cfg = tmp_path / "a.yaml"
    cfg.write_text("web:\n  token_file: token\ndatabase:\n  path: a.db\n" + body)
    return cfg


def test_retention_config_defaults_and_durations(tmp_path: Path):
    r = load(_retention_config(tmp_path, "")).retention
    assert (r.enabled, r.max_age_seconds, r.interval_seconds, r.batch_size) == (True, 30 * 86400, 3600, 500)
    r = load(_retention_config(tmp_path, "  retention: {max_age: 1w2d, interval: 90s, batch_size: 100}\n")).retention
    assert (r.max_age_seconds, r.interval_seconds, r.batch_size) == (9 * 86400, 90, 100)
    assert load(_retention_config(tmp_path, "  retention: {max_age: 7200}\n")).retention.max_age_seconds == 7200
    assert load(_retention_config(tmp_path, "  retention: {enabled: false}\n")).retention.enabled is False


@pytest.mark.parametrize(
    "body,field",
    [
        ("  retention: {max_age: 10m}\n", "database.retention.max_age"),
        ("  retention: {max_age: thirty days}\n", "database.retention.max_age"),
        ("  retention: {batch_size: 0}\n", "database.retention.batch_size"),
        ("  retention: {keep: 1}\n", "database.retention"),
    ],
)
def test_retention_config_errors_name_the_field(tmp_path: Path, body: str, field: str):
    with pytest.raises(ConfigError, match=re.escape(field)):
        load(_retention_config(tmp_path, body))


def test_the_agent_hands_database_retention_to_the_remediation_worker(tmp_path: Path):
    from gpuwarden.scheduler_agent.server import Agent

    cfg = _config(tmp_path, "agent.db")
    cfg.write_text(
        cfg.read_text().replace("  path: agent.db\n", "  path: agent.db\n  retention: {max_age: 2h, batch_size: 50}\n")
    )
    agent = Agent(load(cfg))
    try:
        rem = next(p for p in agent.plugins if hasattr(p, "worker"))
        assert rem.worker.retention.max_age_seconds == 7200
        assert rem.worker.retention.batch_size == 50
    finally:
        for p in agent.plugins:
            p.close()
        agent.scheduler.close()
        agent.db.close()


# -- local jobs: logs 0600, a defined environment -------------------------------------------------


def test_local_job_log_is_0600_and_the_job_sees_no_agent_secrets(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GPUWARDEN_SECRET_TEST", "1")
    monkeypatch.setenv("HOME", "/home/agent-test")
    old = os.umask(0o022)
    try:
        ex = LocalExecutor(tmp_path / "logs")
        done: list[int | None] = []
        prog = "import json, os; print(json.dumps(dict(os.environ)))"
        job = JobRun(
            id=7,
            name="t",
            command=[sys.executable, "-c", prog],
            gpu_indexes=(1, 3),
            gpu_uuids=("GPU-a", "GPU-b"),
            node="n",
            env={"MY_JOB_VAR": "x"},
            key="test:7:1",
        )
        ex.start(job, lambda _id, rc: done.append(rc))
        wait_until(lambda: done, 10, what="job exit")
    finally:
        os.umask(old)
    log = ex.log_path(7)
    assert _mode(log) == 0o600 and done == [0]
    env = json.loads(log.read_text())
    assert "GPUWARDEN_SECRET_TEST" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3" and env["MY_JOB_VAR"] == "x"
    assert env["HOME"] == "/home/agent-test" and env["PATH"]
    assert env["GPUWARDEN_JOB_KEY"] == "test:7:1"
    assert set(env) - {
        "PATH",
        "HOME",
        "MY_JOB_VAR",
        "CUDA_VISIBLE_DEVICES",
        "GPUWARDEN_JOB_ID",
        "GPUWARDEN_GPU_UUIDS",
        "GPUWARDEN_JOB_KEY",
    } <= {"LC_CTYPE"}  # set by Python
