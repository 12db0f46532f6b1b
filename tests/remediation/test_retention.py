"""Remediation's storage: retention (old rows pruned in small batches, open ones kept), metrics
that neither scan the tables nor take made-up label values, SQLITE_FULL answered 503 "database
full", and the breaker-reset actor's length limit."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid as uuid_mod

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gpuwarden.scheduler_agent.remediation import store
from gpuwarden.scheduler_agent.store import Database, Retention
from tests.remediation import conftest
from tests.remediation.conftest import post
from tests.remediation.fakes import alert, notification

DAY = 86400.0
OPERATOR = getattr(conftest, "OPERATOR_TOKEN", conftest.TOKEN)


def deliver(rem, *alerts, run: bool = True) -> None:
    rem.intake.accept(json.dumps(notification(*alerts)).encode())
    if run:
        while rem.worker.run_once():
            pass


def count(rem, table: str, where: str = "1", args: tuple = ()) -> int:
    return rem._read.execute(f"SELECT count(*) FROM {table} WHERE {where}", args).fetchone()[0]


def scrape(rem) -> dict[tuple, float]:
    reg = CollectorRegistry()
    reg.register(rem.collector)
    return {(m.name, s.name, tuple(sorted(s.labels.items()))): s.value for m in reg.collect() for s in m.samples}


def old_world(make_rem, clock):
    """40 days ago: a finished notify alert, a throttle still held, a quarantine in force, an
    alert never processed, an alert still firing, and a hand-made pending action. Now: a fresh
    finished alert."""
    rem = make_rem({"throttle": {"fraction": 0.8}, "escalation": {"enabled": False}})
    now = clock.t
    clock.t = now - 40 * DAY
    deliver(rem, alert("GPU-1", action="notify", rule="XID_FATAL"))
    deliver(rem, alert("GPU-1", action="notify", rule="XID_FATAL", status="resolved"))
    deliver(rem, alert("GPU-2", action="throttle"))  # held: not resolved
    deliver(rem, alert("GPU-3", action="quarantine", rule="ECC_UNCORRECTABLE"))
    deliver(rem, alert("GPU-3", action="quarantine", rule="ECC_UNCORRECTABLE", status="resolved"))  # quarantine stays
    deliver(rem, alert("GPU-4", action="notify", rule="POWER_SPIKE"))  # still firing
    pending = store.transaction(
        rem.worker.conn,
        lambda c: (
            c.execute(
                "INSERT INTO remediation_actions (event_id, at, rule, severity, status, uuid, instance, "
                "action, outcome, detail) VALUES (NULL, ?, 'POWER_CRITICAL', 'critical', 'firing', "
                "'GPU-5', 'n', 'preempt', 'pending', '{}')",
                (clock.t,),
            ).lastrowid
        ),
    )
    deliver(rem, alert("GPU-6", action="notify", rule="THROTTLING"), run=False)  # unprocessed
    rem.intake._conn.execute("UPDATE remediation_events SET processed_at = NULL WHERE uuid = 'GPU-6'")
    clock.t = now
    deliver(rem, alert("GPU-7", action="notify", rule="XID_FATAL", starts_at="2024-06-01T10:00:00Z"))
    deliver(rem, alert("GPU-7", action="notify", rule="XID_FATAL", status="resolved", starts_at="2024-06-01T10:00:00Z"))
    # The GPU-6 alert stays unprocessed: the worker is not run again before pruning.
    rem.intake._conn.execute("UPDATE remediation_events SET processed_at = NULL WHERE uuid = 'GPU-6'")
    return rem, pending


def test_prune_deletes_old_finished_rows_and_keeps_open_ones(make_rem, clock):
    rem, pending = old_world(make_rem, clock)
    assert rem.sched.states["GPU-3"] == "quarantined"
    assert count(rem, "remediation_throttles", "uuid = 'GPU-2'") == 1
    before = scrape(rem)
    done = store.prune(rem.worker.conn, clock.t - 30 * DAY, ["GPU-3"])
    assert done["done"] == 1
    uuids = {r[0] for r in rem._read.execute("SELECT DISTINCT uuid FROM remediation_events")}
    # Gone: GPU-1's finished alert (firing and resolved together), GPU-3's resolved instance.
    assert uuids == {"GPU-2", "GPU-4", "GPU-6", "GPU-7"}
    assert count(rem, "remediation_events", "uuid = 'GPU-6' AND processed_at IS NULL") == 1
    assert count(rem, "remediation_events", "uuid = 'GPU-7'") == 2  # new: kept
    actions = {(r[0], r[1]) for r in rem._read.execute("SELECT uuid, action FROM remediation_actions")}
    assert ("GPU-1", "notify") not in actions and ("GPU-4", "notify") not in actions
    assert ("GPU-2", "throttle") in actions  # the throttle is still held
    assert ("GPU-3", "quarantine") in actions  # the quarantine is still in force
    assert count(rem, "remediation_actions", "id = ?", (pending,)) == 1  # pending
    assert ("GPU-7", "notify") in actions  # new
    assert count(rem, "remediation_notifications", "received_at < ?", (clock.t - 30 * DAY,)) == 0
    assert count(rem, "remediation_notifications") == 2
    # Counters never go back, and the active-alert gauge is unchanged.
    assert scrape(rem) == before
    # Once the throttle is released and the quarantine lifted, their actions go too.
    rem.worker.conn.execute("DELETE FROM remediation_throttles")
    store.prune(rem.worker.conn, clock.t - 30 * DAY, [])
    actions = {(r[0], r[1]) for r in rem._read.execute("SELECT uuid, action FROM remediation_actions")}
    assert ("GPU-2", "throttle") not in actions and ("GPU-3", "quarantine") not in actions
    assert count(rem, "remediation_actions", "id = ?", (pending,)) == 1


def test_prune_works_in_small_transactions(make_rem, clock):
    rem = make_rem()
    clock.t -= 40 * DAY
    for i in range(30):
        deliver(
            rem,
            alert("GPU-1", action="notify", starts_at=f"2024-05-01T10:{i:02d}:00Z"),
            alert("GPU-1", action="notify", starts_at=f"2024-05-01T10:{i:02d}:00Z", status="resolved"),
        )
    clock.t += 40 * DAY
    assert count(rem, "remediation_events") == 60 and count(rem, "remediation_actions") == 60
    statements: list[str] = []
    rem.worker.conn.set_trace_callback(statements.append)
    done = store.prune(rem.worker.conn, clock.t - DAY, [], batch=8)
    rem.worker.conn.set_trace_callback(None)
    assert done == {"remediation_events": 60, "remediation_notifications": 30, "remediation_actions": 60, "done": 1}
    commits = sum(1 for s in statements if s == "COMMIT")
    assert commits >= 60 / 8 * 2 + 30 / 8  # events, notifications, actions in batches
    # Each transaction deletes at most a batch.
    deletes_per_tx, n = [], 0
    for s in statements:
        if s.startswith("DELETE FROM remediation_actions"):
            n += 1
        elif s == "COMMIT":
            deletes_per_tx.append(n)
            n = 0
    assert max(deletes_per_tx) <= 8


def test_worker_prunes_when_idle_on_its_interval_and_yields_to_new_alerts(make_rem, clock):
    rem = make_rem()
    clock.t -= 40 * DAY
    for i in range(10):
        deliver(
            rem,
            alert(f"GPU-{i % 8}", action="notify", starts_at=f"2024-05-01T10:{i:02d}:00Z"),
            alert(f"GPU-{i % 8}", action="notify", starts_at=f"2024-05-01T10:{i:02d}:00Z", status="resolved"),
        )
    clock.t += 40 * DAY
    w = rem.worker
    assert w.prune_when_idle() is None  # no retention set: nothing
    w.retention = Retention(max_age_seconds=30 * DAY, interval_seconds=3600, batch_size=2)
    w.wake()  # new work pending: prune yields
    assert w.prune_when_idle() == {"remediation_events": 0, "remediation_notifications": 0, "remediation_actions": 0}
    assert count(rem, "remediation_events") == 20
    w._wake.clear()
    assert w.prune_when_idle() == {"remediation_events": 20, "remediation_notifications": 10, "remediation_actions": 20}
    deliver(rem, alert("GPU-1", action="notify", starts_at="2020-01-01T00:00:00Z"))
    rem.intake._conn.execute("UPDATE remediation_events SET received_at = 0, processed_at = 1")
    w._wake.clear()
    assert w.prune_when_idle() is None  # not due before the interval
    clock.t += 3601
    w.retention = Retention(enabled=False)
    assert w.prune_when_idle() is None


def test_counters_are_seeded_when_an_old_database_is_upgraded(tmp_path):
    path = tmp_path / "old.db"
    db = Database(path)
    db.migrate(store.COMPONENT, store.MIGRATIONS[:1])  # a database of the v1 schema
    with db.transaction() as c:
        c.execute(
            "INSERT INTO remediation_notifications (received_at, receiver, group_key, "
            "status, alert_count, new_events, truncated_alerts, external_url) VALUES "
            "(1, 'r', 'g', 'firing', 3, 3, 4, '')"
        )
        for fp, status, rule in (
            ("a", "firing", "THERMAL_CRITICAL"),
            ("a", "resolved", "THERMAL_CRITICAL"),
            ("b", "firing", "MADE_UP"),
        ):
            c.execute(
                "INSERT INTO remediation_events (notification_id, fingerprint, starts_at, "
                "ends_at, status, rule, severity, action, uuid, gpu, instance, labels, "
                "received_at, deliveries) VALUES (1, ?, 's', 'e', ?, ?, 'critical', 'x', "
                "'GPU-1', '0', 'n', '{}', 1, 2)",
                (fp, status, rule),
            )
        c.execute(
            "INSERT INTO remediation_actions (event_id, at, rule, severity, status, uuid, "
            "instance, action, outcome, detail) VALUES (1, 1, 'r', 's', 'firing', 'u', "
            "'n', 'bogus', 'failed', '{}')"
        )
    store.migrate(db)
    got = store.counters(db.conn)
    assert sorted(got["alerts_triggered"]) == [("THERMAL_CRITICAL", "critical", 1), ("other", "critical", 1)]
    assert got["alerts_active"] == [("", "", 1)] and got["alert_deliveries"] == [("", "", 6)]
    assert got["notifications"] == [("", "", 1)] and got["truncated_alerts"] == [("", "", 4)]
    assert got["actions"] == [("other", "failed", 1)]
    db.close()


# -- metrics --------------------------------------------------------------------------------------


def test_made_up_rule_and_action_values_add_at_most_a_handful_of_series(make_rem, serve):
    rem = make_rem()
    url = serve(rem) + "/webhook/alertmanager"
    status, _ = post(url, notification(alert("GPU-1")))
    assert status == 202
    while rem.worker.run_once():
        pass
    before = scrape(rem)
    junk = [
        alert("GPU-2", rule=f"R{uuid_mod.uuid4().hex}", action=f"A{i}", severity=f"S{i}", fingerprint=f"fp{i}")
        for i in range(2000)
    ]
    for i in range(0, len(junk), 500):
        status, body = post(url, notification(*junk[i : i + 500]))
        assert status == 202, body
    while rem.worker.run_once():
        pass
    after = scrape(rem)
    new = set(after) - set(before)
    assert len(new) <= 4, sorted(new)
    assert after[("alerts_triggered", "alerts_triggered_total", (("rule", "other"), ("severity", "other")))] == 2000
    assert (
        after[("remediation_actions", "remediation_actions_total", (("action", "other"), ("outcome", "failed")))]
        == 2000
    )
    text = generate_latest(_registry(rem)).decode()
    assert "R" + junk[0]["labels"]["rule"][1:] not in text and 'action="A1"' not in text
    # Known values are kept as they are.
    assert (
        after[("alerts_triggered", "alerts_triggered_total", (("rule", "THERMAL_CRITICAL"), ("severity", "critical")))]
        == 1
    )


def _registry(rem) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(rem.collector)
    return reg


def test_known_rules_come_from_the_shipped_thresholds_and_generated_rules():
    known = store.known_label_values()
    assert {"THERMAL_CRITICAL", "MEMORY_FORECAST", "EXPORTER_DOWN", "GPU_LOST", "XID_FATAL"} <= known["rule"]
    assert known["action"] == {"notify", "throttle", "preempt", "quarantine", "restore"}
    assert {"critical", "warning"} <= known["severity"]


def _vm_steps(conn: sqlite3.Connection, fn) -> int:
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(tick, 100)
    try:
        fn()
    finally:
        conn.set_progress_handler(None, 0)
    return steps[0]


def test_a_scrape_does_not_grow_with_the_number_of_stored_events(make_rem):
    rem = make_rem()
    reg = _registry(rem)

    def add(n: int, start: int) -> None:
        rows = [
            (
                1,
                f"fp{i}",
                "s",
                "e",
                "firing" if i % 2 else "resolved",
                "THERMAL_CRITICAL",
                "critical",
                "notify",
                "GPU-1",
                "0",
                "n",
                "{}",
                1.0,
                2.0,
            )
            for i in range(start, start + n)
        ]
        store.transaction(
            rem.intake._conn,
            lambda c: c.executemany(
                "INSERT INTO remediation_events (notification_id, fingerprint, starts_at, ends_at, "
                "status, rule, severity, action, uuid, gpu, instance, labels, received_at, "
                "processed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            ),
        )

    add(1000, 0)
    small = _vm_steps(rem._read, lambda: generate_latest(reg))
    add(30000, 1000)
    t0 = time.perf_counter()
    big = _vm_steps(rem._read, lambda: generate_latest(reg))
    elapsed = time.perf_counter() - t0
    assert big <= small + 5, (small, big)  # no per-event work (a GROUP BY scan would be 30x)
    assert elapsed < 0.5
    assert (
        scrape(rem)[
            ("alerts_triggered", "alerts_triggered_total", (("rule", "THERMAL_CRITICAL"), ("severity", "critical")))
        ]
        == 15500
    )


# -- SQLITE_FULL and field limits -----------------------------------------------------------------


def test_webhook_answers_503_database_full_when_the_disk_is_full(make_rem, serve):
    rem = make_rem()
    url = serve(rem) + "/webhook/alertmanager"
    conn = rem.intake._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    big = [alert(f"GPU-{i % 8}", fingerprint=f"full-{i}") for i in range(400)]
    status, body = post(url, notification(*big))
    assert status == 503, body
    assert "database full" in body["error"] and "no transaction is active" not in body["error"]
    assert count(rem, "remediation_events") == 0  # nothing half-stored
    conn.execute(f"PRAGMA max_page_count = {pages + 10000}")  # space again: accepted
    status, body = post(url, notification(*big))
    assert status == 202 and body["new"] == 400


def test_breaker_reset_actor_is_limited_to_200_characters(make_rem, serve):
    rem = make_rem()
    url = serve(rem) + "/api/v1/remediation/breaker/reset"
    status, body = post(url, {"actor": "a" * 201}, token=OPERATOR)
    assert status == 400 and body["field"] == "actor" and "200" in body["error"]
    assert rem.breaker()["reset_by"] == ""
    status, body = post(url, {"actor": "a" * 200}, token=OPERATOR)
    assert status == 200 and body["reset_by"] == "a" * 200


def test_breaker_reset_on_a_full_disk_says_database_full(make_rem, serve):
    """The reset's own transaction: SQLite has rolled back by itself, and the error is the disk."""
    rem = make_rem()
    url = serve(rem) + "/api/v1/remediation/breaker/reset"
    conn = rem._read
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0] + 1}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for _ in range(10_000):  # audit rows smaller than the reset's, until none fits
            conn.execute(
                "INSERT INTO remediation_actions (event_id, at, rule, severity, status, uuid, instance, "
                "action, outcome, detail) VALUES (NULL, 0, '', '', '', '', '', 'notify', 'acted', '{}')"
            )
    status, body = post(url, {"actor": "alice"}, token=OPERATOR)
    assert status == 503, body
    assert "database full" in body["error"] and "no transaction is active" not in body["error"]
    assert rem.breaker()["reset_by"] == ""
