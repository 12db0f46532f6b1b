"""``POST /webhook/alertmanager``: authenticate, validate, store durably, answer 202.

The request path does no remediation at all: the route checks the caller's credential before the
body is read (``Credentials`` is the route's ``auth``), then ``Intake`` parses the body, inserts the
notification and its alert instances in one fsync'd SQLite transaction and wakes the worker.
Acting happens in the worker, so a slow power-limit call never makes Alertmanager time out and
retry. Status codes follow Alertmanager's retry rules: 4xx is final (a bad token or a bad body
will not get better by resending), 5xx is retried (the database was locked or full).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import web
from .errors import IntakeError, PolicyConfigError
from .payload import Notification, parse_notification
from .store import transaction

log = logging.getLogger(__name__)


def read_secret(path: Path | str, what: str) -> bytes:
    """web.read_secret, its error as the remediation config's (it names the setting)."""
    try:
        return web.read_secret(path, what)
    except ValueError as exc:
        raise PolicyConfigError(str(exc)) from None


@dataclass(frozen=True)
class Credentials:
    """What a caller must present: a bearer token and/or a basic-auth user and password.

    ``None`` for both means no authentication, which only tests use: the agent refuses to start
    without the webhook's own credential (``remediation.auth``).
    """

    bearer_token: bytes | None = None
    basic_user: bytes | None = None
    basic_password: bytes | None = None

    @property
    def required(self) -> bool:
        return self.bearer_token is not None or self.basic_user is not None

    def __call__(self, req: Any) -> bool:
        """The route's ``auth`` check: whether the request's Authorization header matches."""
        try:
            self.check(req.headers.get("authorization"))
        except IntakeError:
            return False
        return True

    def secrets(self) -> tuple[bytes, ...]:
        """Every secret it holds (the agent refuses one that is also the operator's token)."""
        return tuple(s for s in (self.bearer_token, self.basic_password) if s is not None)

    def check(self, authorization: str | None) -> None:
        """Raises ``IntakeError(401)`` unless ``authorization`` matches; compares in constant time."""
        if not self.required:
            return
        header = (authorization or "").strip()
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.bearer_token is not None:
            # compare_digest on bytes of any length: its time depends on the length only.
            if hmac.compare_digest(value.strip().encode("utf-8", "replace"), self.bearer_token):
                return
        elif scheme == "basic" and self.basic_user is not None:
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).partition(b":")
            except ValueError:
                user, password = b"", b""
            ok_user = hmac.compare_digest(user, self.basic_user)
            ok_password = hmac.compare_digest(password, self.basic_password or b"")
            if ok_user & ok_password:  # both compared always, no short-circuit on the user
                return
        raise IntakeError(
            401,
            "missing or wrong credentials (Authorization: Bearer <token> from the agent's token file, or basic auth)",
        )


@dataclass(frozen=True)
class Accepted:
    notification_id: int
    alerts: int
    new_events: int
    truncated_alerts: int


class Intake:
    """Turns webhook bodies into inbox rows. Thread-safe: one writer connection, one lock.

    The caller was authenticated and the body's size bounded (``remediation.max_body_bytes``)
    by the route before the body was read."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        on_accepted: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._on_accepted = on_accepted
        self._clock = clock

    def accept(self, body: bytes) -> Accepted:
        """Validates and stores one delivery; returns once it is on disk."""
        notification = parse_notification(body)
        with self._lock:
            accepted = transaction(self._conn, lambda c: self._store(c, notification))
        assert isinstance(accepted, Accepted)
        if notification.truncated_alerts:
            # Alertmanager dropped alerts from this group to honour the receiver's max_alerts.
            # Those instances are not here, so nothing can be done for them from this
            # delivery; we keep the count on the notification row, log it and count it in
            # the metrics, and act on what we got. The routing we ship sets max_alerts: 0.
            log.warning(
                "Alertmanager truncated a notification",
                extra={
                    "event": "remediation.truncated",
                    "notification_id": accepted.notification_id,
                    "group_key": notification.group_key,
                    "truncated_alerts": notification.truncated_alerts,
                    "hint": "set max_alerts: 0 on the webhook "
                    "receiver so that Alertmanager sends every alert of the group",
                },
            )
        if self._on_accepted is not None and accepted.new_events:
            self._on_accepted()
        return accepted

    def _store(self, conn: sqlite3.Connection, n: Notification) -> Accepted:
        now = self._clock()
        cur = conn.execute(
            "INSERT INTO remediation_notifications (received_at, receiver, group_key, status, "
            "alert_count, new_events, truncated_alerts, external_url) VALUES (?,?,?,?,?,0,?,?)",
            (now, n.receiver, n.group_key, n.status, len(n.alerts), n.truncated_alerts, n.external_url),
        )
        nid = cur.lastrowid
        assert nid is not None  # set by the INSERT just made
        rows = []
        for a in n.alerts:
            labels = a.labels
            rows.append(
                (
                    nid,
                    a.fingerprint,
                    a.starts_at,
                    a.ends_at,
                    a.status,
                    a.rule,
                    a.severity,
                    labels.get("action", ""),
                    labels.get("uuid", ""),
                    labels.get("gpu", ""),
                    labels.get("instance", ""),
                    json.dumps(labels, sort_keys=True),
                    now,
                )
            )
        # Under BEGIN IMMEDIATE ids only grow, so the new rows are those past the last id.
        last = conn.execute("SELECT coalesce(max(id), 0) FROM remediation_events").fetchone()[0]
        conn.executemany(
            "INSERT INTO remediation_events (notification_id, fingerprint, starts_at, ends_at, "
            "status, rule, severity, action, uuid, gpu, instance, labels, received_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (fingerprint, starts_at, status) "
            "DO UPDATE SET deliveries = deliveries + 1",
            rows,
        )
        new = conn.execute("SELECT count(*) FROM remediation_events WHERE id > ?", (last,)).fetchone()[0]
        conn.execute("UPDATE remediation_notifications SET new_events = ? WHERE id = ?", (new, nid))
        return Accepted(nid, len(n.alerts), new, n.truncated_alerts)
