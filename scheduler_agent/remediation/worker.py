"""The asynchronous worker: turns inbox rows into decisions and actions, and restores limits.

One thread, one SQLite connection. For each unprocessed alert instance, in arrival order:

1. decide (policy: the action, escalation, dry-run, breaker, budget);
2. a decision without side effects is recorded and the row marked processed in one transaction;
3. a decision with side effects is first written as a ``pending`` action holding everything
   needed to carry it out (target watts, the limit to restore), then carried out, then
   completed together with the inbox row in one transaction.

A kill between 1 and 3 leaves the ``pending`` row: at start the worker resumes pending actions
first (same targets, so the side effects are idempotent: set a limit, quarantine, preempt what
is on the GPU now) and only then decides new ones. The result: one decision per alert instance,
and side effects that hold once however the process died.

A command hook (``remediation.commands``) is not idempotent as far as we know (it may page
someone, open a ticket, drain a node), so it runs at most once. Its argv is rendered, and every
label value in it checked (``command.render``), before any side effect of the action; then,
after the action's own side effects, its start is committed (fsync'd) into the pending row's
detail before it runs, and its end with the action's completion. A pending row found at start
whose hook had started but not finished is not carried out again: it is completed as
``uncertain`` (the hook may or may not have run). Every hook gets ``{action_id}``, the audit
row's id, so a receiving system can deduplicate.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, TracerProvider

from ..store import Retention
from . import budget as budget_mod
from . import command, store
from .actuators import GpuRef, PowerActuator
from .command import UnsafeValue
from .config import ACTIONS, RemediationConfig
from .errors import ActuatorError
from .port import REMEDIATION, ActionContext, SchedulerPort
from .store import transaction

log = logging.getLogger(__name__)

RESTORE_RETRY_SECONDS = 30.0


class Worker:
    def __init__(
        self,
        conn: sqlite3.Connection,
        config: RemediationConfig,
        scheduler: SchedulerPort,
        actuator: PowerActuator,
        tracer_provider: TracerProvider | None = None,
        clock: Callable[[], float] = time.time,
        actor: str = "gpuwarden-agent",
    ) -> None:
        self.conn = conn
        self.cfg = config
        self.scheduler = scheduler
        self.actuator = actuator
        self.tracer = (tracer_provider or NoOpTracerProvider()).get_tracer("gpuwarden.scheduler_agent.remediation")
        self.clock = clock
        self.actor = actor
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resumed = False

    # -- thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="remediation-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        # The delay lets the scheduler reconcile its jobs after a restart before we act.
        if self._stop.wait(self.cfg.start_delay_seconds):
            return
        while not self._stop.is_set():
            self._wake.clear()
            try:
                busy = self.run_once()
            except sqlite3.Error as exc:  # locked or full: the rows stay, retried next round
                log.error("remediation worker error", extra={"event": "remediation.worker_error", "error": str(exc)})
                busy = 0
            if not busy:
                self.prune_when_idle()
                self._wake.wait(self.cfg.poll_interval_seconds)

    def run_once(self, batch: int = 200) -> int:
        """One round: resume pending actions (first round), decide new alerts, restore due
        limits. Returns how many rows it handled (0 = idle). Tests call it directly."""
        handled = 0
        if not self._resumed:
            for (aid,) in self.conn.execute(
                "SELECT id FROM remediation_actions WHERE outcome = 'pending' ORDER BY id"
            ).fetchall():
                self._execute(aid)
                handled += 1
            self._resumed = True
        rows = self.conn.execute(
            "SELECT * FROM remediation_events WHERE processed_at IS NULL ORDER BY id LIMIT ?", (batch,)
        ).fetchall()
        for ev in rows:
            if self._stop.is_set():
                break
            self._process(dict(ev))
            handled += 1
        handled += self._restore_due()
        return handled

    # -- retention (database.retention) ----------------------------------------------------
    retention: Retention | None = None  # set by the plug-in from the agent's config
    _next_prune: float = 0.0

    def prune_when_idle(self) -> dict[str, int] | None:
        """Deletes old alerts and actions (``store.prune``) when due; called when the worker
        is idle, and yields (stops between batches) as soon as new alerts arrive."""
        r = self.retention
        now = self.clock()
        if r is None or not r.enabled or now < self._next_prune:
            return None
        # Never within the windows the decisions look back over (escalation, budget).
        cutoff = now - max(r.max_age_seconds, self.cfg.escalation.window_seconds, 3600.0)
        try:
            fleet = dict(self.scheduler.fleet())
        except Exception as exc:  # noqa: BLE001 - without the fleet, open quarantines are unknown
            log.warning("retention pruning skipped", extra={"event": "remediation.prune_skipped", "error": str(exc)})
            self._next_prune = now + r.interval_seconds
            return None
        try:
            done = store.prune(
                self.conn,
                cutoff,
                [u for u, st in fleet.items() if st == "quarantined"],
                r.batch_size,
                should_stop=lambda: self._wake.is_set() or self._stop.is_set(),
            )
        except sqlite3.Error as exc:
            log.error("retention pruning failed", extra={"event": "remediation.prune_error", "error": str(exc)})
            self._next_prune = now + r.interval_seconds
            return None
        if done.pop("done"):
            self._next_prune = now + r.interval_seconds
        if any(done.values()):
            log.info(
                "pruned old alerts and actions", extra={"event": "remediation.pruned", "older_than": cutoff, **done}
            )
        return done

    # -- deciding -------------------------------------------------------------------------
    def _process(self, ev: dict[str, Any]) -> None:
        action = self.cfg.rule_actions.get(ev["rule"]) or ev["action"] or "notify"
        attrs = {
            "alert.rule": ev["rule"],
            "alert.severity": ev["severity"],
            "alert.status": ev["status"],
            "alert.fingerprint": ev["fingerprint"],
            "alert.starts_at": ev["starts_at"],
            "gpu.uuid": ev["uuid"],
            "remediation.action": action,
        }
        with self.tracer.start_as_current_span(f"alert.{ev['rule'] or 'unknown'}", attributes=attrs):
            if ev["uuid"] and not self.cfg.dry_run:
                try:
                    self.scheduler.set_alert(ev["uuid"], ev["rule"], ev["severity"], ev["status"] == "firing")
                except Exception as exc:  # noqa: BLE001 - the scheduler's own errors vary;
                    # an unknown GPU must not stop the decision from being recorded.
                    log.warning(
                        "recording the alert on the GPU failed",
                        extra={"event": "remediation.set_alert_failed", "uuid": ev["uuid"], "error": str(exc)},
                    )
            if action not in ACTIONS:
                self._finish(
                    ev,
                    action,
                    "failed",
                    {},
                    f"action {action!r} is not one of "
                    f"{', '.join(ACTIONS)} (the alert's action label or remediation.rules)",
                )
            elif ev["status"] == "firing":
                self._firing(ev, action)
            else:
                self._resolved(ev, action)

    def _firing(self, ev: dict[str, Any], action: str) -> None:
        now = self.clock()
        uuid = ev["uuid"]
        if action == "notify":
            return self._finish(ev, action, "recorded", {})
        if not uuid:
            return self._finish(
                ev, action, "failed", {}, f"the alert has no uuid label, so there is no GPU to {action}"
            )
        if self.conn.execute(
            "SELECT 1 FROM remediation_events WHERE fingerprint = ? AND starts_at = ? AND status = 'resolved'",
            (ev["fingerprint"], ev["starts_at"]),
        ).fetchone():
            # A late firing delivery (the other Alertmanager of a pair) after the resolve.
            return self._finish(ev, action, "noop", {"reason": "this alert instance has already resolved"})
        detail: dict[str, Any] = {}
        esc = self.cfg.escalation
        if action in ("throttle", "preempt") and esc.enabled:
            prior = self.conn.execute(
                "SELECT count(*) FROM remediation_actions WHERE uuid = ? AND at >= ? AND "
                "action IN ('throttle', 'preempt') AND outcome IN ('acted', 'dry_run', "
                "'uncertain')",
                (uuid, now - esc.window_seconds),
            ).fetchone()[0]
            if prior >= esc.count:
                detail["escalated_from"] = action
                detail["reason"] = (
                    f"{prior} throttle/preempt actions on this GPU within "
                    f"{esc.window_seconds:g}s (escalation.count {esc.count})"
                )
                action = "quarantine"
        fleet = dict(self.scheduler.fleet())
        if action == "quarantine" and fleet.get(uuid) == "quarantined":
            return self._finish(ev, action, "noop", {**detail, "reason": "already quarantined"})
        gpu = GpuRef(uuid, ev["gpu"], ev["instance"], json.loads(ev["labels"]))
        if action == "throttle":
            try:
                plan = self._throttle_plan(gpu)
            except ActuatorError as exc:
                return self._finish(ev, action, "failed", {**detail, **_refused(exc)}, str(exc))
            if plan is None:
                return self._finish(
                    ev, action, "noop", {**detail, "reason": "the power limit is already at or below the target"}
                )
            detail.update(plan)
        if self.cfg.dry_run:
            return self._finish(ev, action, "dry_run", detail)
        state = budget_mod.breaker(self.conn)
        if state.open:
            return self._finish(ev, action, "skipped_breaker", {**detail, "breaker_reason": state.reason})
        why = budget_mod.over_budget(self.conn, self.cfg.budget, action, uuid, fleet, now)
        if why is not None:
            return self._finish(ev, action, "skipped_budget", {**detail, "reason": why}, open_breaker=why)
        detail["labels"] = gpu.labels
        aid = transaction(self.conn, lambda c: self._pending(c, ev, action, detail, gpu))
        assert isinstance(aid, int)
        self._execute(aid)

    def _throttle_plan(self, gpu: GpuRef) -> dict[str, Any] | None:
        held = self.conn.execute(
            "SELECT previous_watts, applied_watts FROM remediation_throttles WHERE uuid = ?", (gpu.uuid,)
        ).fetchone()
        if held is not None:  # already lowered by us: re-assert the same limit, keep the old one
            return {"previous_watts": held[0], "target_watts": held[1], "already_throttled": True}
        limits = self.actuator.read(gpu)
        want = (
            self.cfg.throttle_watts
            if self.cfg.throttle_watts is not None
            else limits.current_watts * (self.cfg.throttle_fraction or 1.0)
        )
        target = round(limits.clamp(want), 3)
        if target >= limits.current_watts:
            return None
        return {
            "previous_watts": limits.current_watts,
            "target_watts": target,
            "min_watts": limits.min_watts,
            "already_throttled": False,
        }

    def _resolved(self, ev: dict[str, Any], action: str) -> None:
        if action == "quarantine":
            return self._finish(ev, action, "noop", {"reason": "a quarantine holds until a person releases it"})
        if action != "throttle":
            return self._finish(ev, action, "recorded", {})
        if self.cfg.dry_run:
            return self._finish(
                ev,
                action,
                "dry_run",
                {"would": f"restore the power limit after {self.cfg.hold_down_seconds:g}s hold-down"},
            )
        key = [ev["fingerprint"], ev["starts_at"]]
        now = self.clock()

        def release(c: sqlite3.Connection) -> dict[str, Any]:
            row = c.execute("SELECT holders FROM remediation_throttles WHERE uuid = ?", (ev["uuid"],)).fetchone()
            if row is None:
                return {"reason": "no throttle held on this GPU"}
            holders = [h for h in json.loads(row[0]) if h != key]
            restore_after = now + self.cfg.hold_down_seconds if not holders else None
            c.execute(
                "UPDATE remediation_throttles SET holders = ?, restore_after = ? WHERE uuid = ?",
                (json.dumps(holders), restore_after, ev["uuid"]),
            )
            return {"restore_after": restore_after, "still_held_by": len(holders)}

        detail = transaction(self.conn, release)
        assert isinstance(detail, dict)
        self._finish(ev, action, "recorded", detail)

    # -- recording ------------------------------------------------------------------------
    def _finish(
        self,
        ev: dict[str, Any],
        action: str,
        outcome: str,
        detail: dict[str, Any],
        error: str = "",
        open_breaker: str | None = None,
    ) -> None:
        """Records a decision without side effects and marks its alert processed, atomically."""
        now = self.clock()
        trace_id = _trace_id()

        def body(c: sqlite3.Connection) -> None:
            if open_breaker is not None:
                budget_mod.open_breaker(c, open_breaker, now)
            c.execute(
                "INSERT INTO remediation_actions (event_id, at, rule, severity, status, uuid, "
                "instance, action, outcome, detail, error, trace_id) VALUES "
                "(?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    ev["id"],
                    now,
                    ev["rule"],
                    ev["severity"],
                    ev["status"],
                    ev["uuid"],
                    ev["instance"],
                    action,
                    outcome,
                    json.dumps(detail),
                    error,
                    trace_id,
                ),
            )
            c.execute("UPDATE remediation_events SET processed_at = ? WHERE id = ?", (now, ev["id"]))

        transaction(self.conn, body)
        _log_decision(ev, action, outcome, detail, error)

    def _pending(
        self, c: sqlite3.Connection, ev: dict[str, Any], action: str, detail: dict[str, Any], gpu: GpuRef
    ) -> int:
        now = self.clock()
        cur = c.execute(
            "INSERT INTO remediation_actions (event_id, at, rule, severity, status, uuid, "
            "instance, action, outcome, detail, trace_id) VALUES (?,?,?,?,?,?,?,?,'pending',?,?)",
            (
                ev["id"],
                now,
                ev["rule"],
                ev["severity"],
                ev["status"],
                gpu.uuid,
                gpu.instance,
                action,
                json.dumps({**detail, "gpu": gpu.gpu}),
                _trace_id(),
            ),
        )
        if action == "throttle":
            holder = [ev["fingerprint"], ev["starts_at"]]
            row = c.execute("SELECT holders FROM remediation_throttles WHERE uuid = ?", (gpu.uuid,)).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO remediation_throttles (uuid, gpu, instance, "
                    "previous_watts, applied_watts, since, holders, restore_after, labels) "
                    "VALUES (?,?,?,?,?,?,?,NULL,?)",
                    (
                        gpu.uuid,
                        gpu.gpu,
                        gpu.instance,
                        detail["previous_watts"],
                        detail["target_watts"],
                        now,
                        json.dumps([holder]),
                        json.dumps(dict(gpu.labels)),
                    ),
                )
            else:
                holders = json.loads(row[0])
                if holder not in holders:
                    holders.append(holder)
                c.execute(
                    "UPDATE remediation_throttles SET holders = ?, restore_after = NULL, restore_reason = '' WHERE uuid = ?",
                    (json.dumps(holders), gpu.uuid),
                )
        assert cur.lastrowid is not None
        return cur.lastrowid

    # -- acting ---------------------------------------------------------------------------
    def _execute(self, aid: int) -> None:
        """Carries out a pending action and completes it (with its alert) in one transaction.

        The action's hook, if any, is rendered (its values checked) before any side effect and
        run after them, its start committed first: a row whose hook started but never finished
        (the agent died meanwhile) is completed as ``uncertain`` and nothing is run again."""
        row = dict(self.conn.execute("SELECT * FROM remediation_actions WHERE id = ?", (aid,)).fetchone())
        detail = json.loads(row["detail"])
        action, uuid = row["action"], row["uuid"]
        gpu = GpuRef(uuid, str(detail.get("gpu", "")), row["instance"], detail.get("labels", {}))
        reason = f"{row['rule'] or 'restore'}: {detail.get('reason', row['severity'])}"
        error = ""  # the action's own side effects (or its hook's values) failed
        hook_error = ""  # the hook ran and failed
        uncertain = ""
        result: dict[str, Any] = {}
        started = detail.get("hook")
        with self.tracer.start_as_current_span(
            f"remediation.{action}",
            attributes={"gpu.uuid": uuid, "remediation.action": action, "remediation.action_id": aid},
        ) as span:
            if isinstance(started, dict) and "finished_at" not in started:
                # Resumed after a kill: the side effects were done before the hook started;
                # whether the hook ran is unknown, and running it again could do it twice.
                uncertain = (
                    f"the agent stopped while the {action} hook was running (action "
                    f"{aid}); it may or may not have run, and is not run again. A "
                    f"receiver can deduplicate on action_id {aid}"
                )
                result["hook"] = {**started, "outcome": "uncertain"}
            else:
                argv = None
                ctx = ActionContext(REMEDIATION, aid, gpu)
                try:
                    if action == "restore":
                        # Undoing our own throttle is always wanted, so a hook whose values fail
                        # must not keep the limit lowered: restore first, then render the hook.
                        self.actuator.set_limit(gpu, detail["previous_watts"])
                        self.scheduler.set_throttled(uuid, False, "power limit restored")
                        try:
                            argv = self._hook_argv(aid, action, gpu, detail)
                        except ActuatorError as exc:
                            hook_error = str(exc)
                            result.update(_refused(exc))
                    else:
                        argv = self._hook_argv(aid, action, gpu, detail)  # checked before acting
                    if action == "throttle":
                        self.actuator.set_limit(gpu, detail["target_watts"])
                        self.scheduler.set_throttled(uuid, True, reason)
                    elif action == "preempt":
                        result["preempted_jobs"] = self.scheduler.preempt_gpu(uuid, reason, ctx)
                    elif action == "quarantine":
                        result.update(self.scheduler.quarantine(uuid, reason, self.actor, ctx) or {})
                        if self.cfg.quarantine_preempts:
                            result["preempted_jobs"] = self.scheduler.preempt_gpu(uuid, reason, ctx)
                except Exception as exc:  # noqa: BLE001 - actuator and scheduler errors alike
                    # are recorded as the action's failure; the worker goes on with the next.
                    error = str(exc) or type(exc).__name__
                    result.update(_refused(exc))
                if argv is not None and not error:
                    hook_error, result["hook"] = self._run_hook(aid, detail, argv)
            if error or hook_error:
                span.set_status(trace.Status(trace.StatusCode.ERROR, error or hook_error))
        outcome = "uncertain" if uncertain else "failed" if error or hook_error else "acted"
        recorded = uncertain or error or (f"the {action} was done; its hook failed: {hook_error}" if hook_error else "")
        now = self.clock()

        def complete(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE remediation_actions SET outcome = ?, detail = ?, error = ? WHERE id = ?",
                (outcome, json.dumps({**detail, **result}), recorded, aid),
            )
            if row["event_id"] is not None:
                c.execute("UPDATE remediation_events SET processed_at = ? WHERE id = ?", (now, row["event_id"]))
            # The throttle bookkeeping follows the action's own side effects, not its hook's.
            if action == "restore":
                if error:
                    c.execute(
                        "UPDATE remediation_throttles SET restore_after = ? WHERE uuid = ?",
                        (now + RESTORE_RETRY_SECONDS, uuid),
                    )
                else:
                    c.execute("DELETE FROM remediation_throttles WHERE uuid = ? AND holders = '[]'", (uuid,))
            elif action == "throttle" and error and not detail.get("already_throttled"):
                c.execute("DELETE FROM remediation_throttles WHERE uuid = ?", (uuid,))

        transaction(self.conn, complete)
        src = (
            self.conn.execute(
                "SELECT fingerprint, starts_at FROM remediation_events WHERE id = ?", (row["event_id"],)
            ).fetchone()
            if row["event_id"] is not None
            else None
        )
        ev = {
            "rule": row["rule"],
            "severity": row["severity"],
            "status": row["status"],
            "uuid": uuid,
            "fingerprint": src[0] if src else "",
            "starts_at": src[1] if src else "",
            "id": row["event_id"],
        }
        _log_decision(ev, action, outcome, {**detail, **result}, recorded)

    # -- hooks ----------------------------------------------------------------------------
    def _hook_argv(self, aid: int, action: str, gpu: GpuRef, detail: dict[str, Any]) -> list[str] | None:
        """The action's hook argv, every value checked (``UnsafeValue`` names a refused label),
        or None without a hook. ``{action_id}`` is the audit row's id; ours override labels."""
        hook = self.cfg.commands.get(action)
        if not hook:
            return None
        values: dict[str, Any] = {
            **gpu.labels,
            "uuid": gpu.uuid,
            "gpu": gpu.gpu,
            "instance": gpu.instance,
            "action": action,
            "action_id": str(aid),
        }
        if action in ("throttle", "restore"):
            watts = detail["target_watts"] if action == "throttle" else detail["previous_watts"]
            values["watts"] = f"{watts:g}"
        return command.render(hook, values)

    def _run_hook(self, aid: int, detail: dict[str, Any], argv: list[str]) -> tuple[str, dict[str, Any]]:
        """Commits the hook's start (fsync'd, so neither a kill nor a power cut forgets it),
        runs it once, returns (its error or "", the record of its run)."""
        state: dict[str, Any] = {"argv": argv, "started_at": self.clock()}
        text = json.dumps({**detail, "hook": state})
        was = self.conn.execute("PRAGMA synchronous").fetchone()[0]
        self.conn.execute("PRAGMA synchronous=FULL")
        try:
            transaction(
                self.conn, lambda c: c.execute("UPDATE remediation_actions SET detail = ? WHERE id = ?", (text, aid))
            )
        finally:
            self.conn.execute(f"PRAGMA synchronous={int(was)}")
        error = ""
        try:
            command.run(argv)
        except Exception as exc:  # noqa: BLE001 - recorded on the action
            error = str(exc) or type(exc).__name__
        state.update(finished_at=self.clock(), outcome="failed" if error else "ok")
        if error:
            state["error"] = error
        return error, state

    def _restore_due(self) -> int:
        now = self.clock()
        due = self.conn.execute(
            "SELECT uuid, gpu, instance, previous_watts, labels, restore_reason FROM remediation_throttles "
            "WHERE restore_after IS NOT NULL AND restore_after <= ? AND holders = '[]'",
            (now,),
        ).fetchall()
        for uuid, gpu, instance, previous, labels, why in due:

            def pending(
                c: sqlite3.Connection,
                uuid: str = uuid,
                gpu: str = gpu,
                instance: str = instance,
                previous: float = previous,
                labels: str = labels,
                why: str = why,
            ) -> int:  # bound now: called inside this iteration
                cur = c.execute(
                    "INSERT INTO remediation_actions (event_id, at, rule, severity, status, uuid, "
                    "instance, action, outcome, detail) VALUES (NULL, ?, '', '', 'resolved', ?, ?, "
                    "'restore', 'pending', ?)",
                    (
                        now,
                        uuid,
                        instance,
                        json.dumps(
                            {
                                "previous_watts": previous,
                                "gpu": gpu,
                                "reason": why or "alert resolved for the hold-down time",
                                # The throttling alert's labels: the restore renders the same
                                # set_command and hook values the throttle did.
                                "labels": json.loads(labels),
                            }
                        ),
                    ),
                )
                # Taken off the due list now, so a failure is retried after a back-off only.
                c.execute("UPDATE remediation_throttles SET restore_after = NULL WHERE uuid = ?", (uuid,))
                assert cur.lastrowid is not None
                return cur.lastrowid

            aid = transaction(self.conn, pending)
            assert isinstance(aid, int)
            self._execute(aid)
        return len(due)


def _trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else ""


def _refused(exc: BaseException) -> dict[str, Any]:
    """``{"refused_label": name}`` for a label value a command template refused, else {}."""
    return {"refused_label": exc.label} if isinstance(exc, UnsafeValue) else {}


def _log_decision(ev: dict[str, Any], action: str, outcome: str, detail: dict[str, Any], error: str) -> None:
    """One structured line per decision (gpuwarden.logs renders the fields as logfmt or JSON)."""
    line = {
        "event": "remediation.decision",
        "rule": ev["rule"],
        "severity": ev["severity"],
        "status": ev["status"],
        "uuid": ev["uuid"],
        "fingerprint": ev["fingerprint"],
        "starts_at": ev["starts_at"],
        "action": action,
        "outcome": outcome,
        "detail": {k: v for k, v in detail.items() if k != "labels"},
    }
    if error:
        line["error"] = error
    log.log(
        logging.WARNING if outcome in ("failed", "skipped_budget", "uncertain") else logging.INFO,
        "remediation decision: %s %s",
        action,
        outcome,
        extra=line,
    )
