"""Remediation assembled: intake, worker, audit API, metrics, and the adapter to the scheduler.

The agent's start-up does, in order::

    rem = Remediation.create(db, config, SchedulerAdapter(scheduler), tracer_provider=tp)
    rem.register_routes(app)              # /webhook/alertmanager, /api/v1/actions, breaker
    registry.register(rem.collector)
    rem.start()                           # the worker (resumes what a kill left pending)
    ...
    rem.stop()

It uses its own SQLite connections to the agent's database file (``db.path``): one for the
intake's writes (fsync'd: a 202 means the alert is on disk), one for the worker, one for reads.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import TracerProvider

from . import budget as budget_mod
from . import store
from .actuators import PowerActuator, from_config
from .config import RemediationConfig
from .errors import IntakeError
from .intake import Credentials, Intake, read_secret
from .metrics import RemediationCollector
from .port import ActionContext, SchedulerPort
from .worker import Worker

if TYPE_CHECKING:
    from ..scheduler import Scheduler
    from ..store import Database
    from ..web import App, Request

log = logging.getLogger(__name__)

OUTCOMES = (
    "pending",
    "acted",
    "recorded",
    "noop",
    "dry_run",
    "skipped_budget",
    "skipped_breaker",
    "failed",
    "uncertain",
)


class SchedulerAdapter:
    """The embedded ``Scheduler`` seen through ``SchedulerPort``: the agent's port when no
    cluster scheduler (``slurm:``) is configured. A preemption's actor in the scheduler's events
    is the context's source (``remediation``, ``predictor``), else ``actor``."""

    def __init__(self, scheduler: Scheduler, actor: str = "remediation") -> None:
        self._s = scheduler
        self._actor = actor

    def quarantine(self, uuid: str, reason: str, actor: str, context: ActionContext | None = None) -> None:
        # The worker preempts separately so that it can record which jobs it stopped.
        self._s.quarantine(uuid, reason, actor, preempt=False)

    def preempt_gpu(self, uuid: str, reason: str, context: ActionContext | None = None) -> list[int]:
        actor = context.source if context is not None else self._actor
        return list(self._s.preempt_gpu(uuid, reason, actor))

    def set_throttled(self, uuid: str, throttled: bool, reason: str) -> None:
        self._s.set_throttled(uuid, throttled, reason)

    def set_alert(self, uuid: str, rule: str, severity: str, firing: bool) -> None:
        self._s.set_alert(uuid, rule, severity, firing)

    def fleet(self) -> Mapping[str, str]:
        return {g["uuid"]: "quarantined" if g.get("quarantined") else g["state"] for g in self._s.list_gpus()}


def credentials_from(config: RemediationConfig) -> Credentials:
    token = (
        read_secret(config.bearer_token_file, "remediation.auth.bearer_token_file")
        if config.bearer_token_file
        else None
    )
    user = config.basic_username.encode() if config.basic_username else None
    password = (
        read_secret(config.basic_password_file, "remediation.auth.basic_auth.password_file")
        if config.basic_password_file
        else None
    )
    return Credentials(token, user, password)


# An operator's state change names who made it: kept in the audit trail and shown by the API and
# the CLI, so bounded.
_ACTOR_BODY: dict[str, Any] = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"actor": {"type": "string", "minLength": 1, "maxLength": 200}},
            }
        }
    },
}
_DATABASE_FULL = {"description": "database full: nothing changed; retry once there is room"}


@dataclass
class Remediation:
    config: RemediationConfig
    intake: Intake
    worker: Worker
    collector: RemediationCollector
    credentials: Credentials  # the webhook's (Alertmanager's), never the operator's
    _read: sqlite3.Connection
    _read_lock: threading.Lock
    _conns: tuple[sqlite3.Connection, ...]
    clock: Callable[[], float] = time.time

    @classmethod
    def create(
        cls,
        db: Database | str,
        config: RemediationConfig,
        scheduler: SchedulerPort,
        actuator: PowerActuator | None = None,
        tracer_provider: TracerProvider | None = None,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Remediation:
        """Migrates our tables and builds the parts (nothing runs until ``start``).

        ``db`` is the agent's ``Database`` (its migrations seam is used) or a file path.
        """
        if isinstance(db, str):
            from ..store import Database

            shared = Database(db)
            store.migrate(shared)
            shared.close()
            path = db
        else:
            store.migrate(db)
            path = db.path
        creds = credentials if credentials is not None else credentials_from(config)
        w_conn = store.connect(path, "NORMAL")
        i_conn, r_conn = store.connect(path), store.connect(path)
        worker = Worker(w_conn, config, scheduler, actuator or from_config(config.actuator), tracer_provider, clock)
        intake = Intake(i_conn, worker.wake, clock)
        lock = threading.Lock()
        return cls(
            config,
            intake,
            worker,
            RemediationCollector(r_conn, lock),
            creds,
            r_conn,
            lock,
            (w_conn, i_conn, r_conn),
            clock,
        )

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()
        for c in self._conns:
            c.close()

    close = stop  # the agent's plug-in seam calls close()

    # -- queries (API and CLI) --------------------------------------------------------------
    def actions(
        self,
        limit: int = 100,
        uuid: str | None = None,
        outcome: str | None = None,
        action: str | None = None,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """The audit trail, newest first."""
        where: list[str] = []
        args: list[object] = []
        for column, value in (("uuid", uuid), ("outcome", outcome), ("action", action)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        sql = (
            "SELECT * FROM remediation_actions"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY id DESC LIMIT ?"
        )
        with self._read_lock:
            rows = self._read.execute(sql, (*args, limit)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["detail"] = json.loads(d["detail"])
            d["detail"].pop("labels", None)
            out.append(d)
        return out

    def breaker(self) -> dict[str, Any]:
        with self._read_lock:
            state = budget_mod.breaker(self._read).to_dict()
            skipped = self._read.execute(
                "SELECT count(*) FROM remediation_actions WHERE outcome IN "
                "('skipped_budget', 'skipped_breaker') AND at >= coalesce(?, 0)",
                (state["opened_at"] if state["state"] == "open" else None,),
            ).fetchone()[0]
        state["skipped_since_open" if state["state"] == "open" else "skipped_total"] = skipped
        return state

    def reset_breaker(self, actor: str) -> dict[str, Any]:
        with self._read_lock:
            was_open = budget_mod.reset_breaker(self._read, actor, self.clock())
        self.worker.wake()
        return {**self.breaker(), "was_open": was_open}

    def restore_throttle(self, uuid: str, actor: str) -> dict[str, Any] | None:
        """An operator's restore: every alert still holding ``uuid``'s throttle is let go and the
        worker restores the recorded limit at its next round, as for a resolved alert but with
        no hold-down (an alert that never resolves; a throttle judged wrong). None: the agent
        holds no throttle on ``uuid``. An alert that fires anew throttles again."""
        now = self.clock()

        def release(c: sqlite3.Connection) -> dict[str, Any] | None:
            row = c.execute(
                "SELECT previous_watts, applied_watts, holders FROM remediation_throttles WHERE uuid = ?", (uuid,)
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE remediation_throttles SET holders = '[]', restore_after = ?, restore_reason = ? WHERE uuid = ?",
                (now, f"restore requested by {actor}", uuid),
            )
            return {"uuid": uuid, "previous_watts": row[0], "applied_watts": row[1], "released": json.loads(row[2])}

        with self._read_lock:
            out = store.transaction(self._read, release)
        self.worker.wake()
        return out if isinstance(out, dict) else None

    # -- HTTP -------------------------------------------------------------------------------
    def register_routes(self, app: App) -> None:
        from ..web import Response

        def webhook(req: Request) -> Response:
            try:
                a = self.intake.accept(req.body)
            except IntakeError as exc:
                return Response(exc.status, {"error": exc.reason, "field": None})
            except sqlite3.Error as exc:
                # Not stored: 503 makes Alertmanager retry, so nothing is lost.
                log.error(
                    "could not store a notification", extra={"event": "remediation.intake_error", "error": str(exc)}
                )
                return Response(
                    503,
                    {"error": f"could not store the notification: {exc}", "field": None},
                    headers={"Retry-After": "5"},
                )
            return Response(
                202,
                {
                    "status": "accepted",
                    "notification_id": a.notification_id,
                    "alerts": a.alerts,
                    "new": a.new_events,
                    "truncated_alerts": a.truncated_alerts,
                },
            )

        def list_actions(req: Request) -> Response:
            q = {k: v[-1] for k, v in req.query.items() if v}
            try:
                limit = int(q.get("limit", "100"))
                before = int(q["before_id"]) if "before_id" in q else None
            except ValueError:
                return Response(400, {"error": "limit and before_id must be integers", "field": "limit"})
            if not 1 <= limit <= 10000:
                return Response(400, {"error": "limit must be 1-10000", "field": "limit"})
            if before is not None and not 1 <= before < 2**63:  # SQLite's INTEGER range
                return Response(400, {"error": f"before_id must be 1-{2**63 - 1}", "field": "before_id"})
            if q.get("outcome") and q["outcome"] not in OUTCOMES:
                return Response(400, {"error": f"outcome must be one of {', '.join(OUTCOMES)}", "field": "outcome"})
            return Response(
                200,
                {
                    "actions": self.actions(limit, q.get("uuid"), q.get("outcome"), q.get("action"), before),
                    "breaker": self.breaker(),
                },
            )

        def get_breaker(req: Request) -> Response:
            return Response(200, self.breaker())

        def reset(req: Request) -> Response:
            # The body (optional) was validated against the operation's schema by the router.
            actor = (req.json() if req.body.strip() else {}).get("actor") or "api"
            return Response(200, self.reset_breaker(actor))

        def restore(req: Request) -> Response:
            actor = (req.json() if req.body.strip() else {}).get("actor") or "api"
            out = self.restore_throttle(req.params["uuid"], actor)
            if out is None:
                return Response(404, {"error": "the agent holds no throttle on this GPU", "field": "uuid"})
            return Response(202, out)

        # Alertmanager's own credential, checked before the body is read; the body may be as
        # large as remediation.max_body_bytes allows (a storm's notification can be megabytes,
        # and a 413 is final for Alertmanager: it would drop those alerts).
        app.add_route(
            "POST",
            "/webhook/alertmanager",
            webhook,
            auth=self.credentials if self.credentials.required else False,
            max_body=self.config.max_body_bytes,
            max_body_setting="remediation.max_body_bytes",
            openapi={
                "summary": "Alertmanager webhook (v4): stored durably, acted on asynchronously",
                "security": [{"bearer": []}],
                "responses": {
                    "202": {"description": "accepted"},
                    "400": {"description": "malformed or invalid body (the reason)"},
                    "401": {"description": "missing or wrong credentials"},
                    "413": {"description": "body over remediation.max_body_bytes"},
                },
            },
        )
        app.add_route(
            "GET",
            "/api/v1/actions",
            list_actions,
            openapi={
                "summary": "Remediation audit trail, newest first",
                "parameters": [
                    {"name": n, "in": "query", "schema": {"type": t}}
                    for n, t in (
                        ("limit", "integer"),
                        ("before_id", "integer"),
                        ("uuid", "string"),
                        ("outcome", "string"),
                        ("action", "string"),
                    )
                ],
                "responses": {"200": {"description": "actions and the breaker's state"}},
            },
        )
        app.add_route(
            "GET",
            "/api/v1/remediation/breaker",
            get_breaker,
            openapi={
                "summary": "The remediation budget's breaker",
                "responses": {"200": {"description": "state, reason, skipped count"}},
            },
        )
        app.add_route(
            "POST",
            "/api/v1/remediation/breaker/reset",
            reset,
            openapi={
                "summary": "Close the breaker (a person decides the storm is over)",
                "requestBody": _ACTOR_BODY,
                "responses": {
                    "200": {"description": "the breaker, now closed"},
                    "503": _DATABASE_FULL,
                },
            },
        )
        app.add_route(
            "POST",
            "/api/v1/remediation/throttles/{uuid}/restore",
            restore,
            openapi={
                "summary": "Restore a throttled GPU's power limit now (its alerts stop holding it)",
                "parameters": [{"name": "uuid", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": _ACTOR_BODY,
                "responses": {
                    "202": {"description": "released; the worker restores the limit at its next round"},
                    "404": {"description": "the agent holds no throttle on this GPU"},
                    "503": _DATABASE_FULL,
                },
            },
        )
