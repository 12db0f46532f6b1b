"""The remediation budget and its circuit breaker.

An alert storm (a bad rule, a flapping exporter, a cooling failure in a whole row) must not turn
into the agent quarantining the fleet. Before every throttle, preempt or quarantine the budget is
checked: actions in the last minute, the share of the fleet quarantined and the share throttled.
Past any cap the breaker opens. While it is open the agent acts on nothing (it still records
every alert, as ``skipped_breaker``), and only a person closes it again (API or CLI), because
the storm that opened it is exactly when an automatic close would do harm. Restores of power
limits we lowered are not blocked: they undo our own actions and only reduce the impact.
The breaker's state is a row in SQLite, so it stays open across restarts.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass

from .config import Budget
from .store import transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BreakerState:
    open: bool
    opened_at: float | None
    reason: str
    reset_at: float | None
    reset_by: str

    def to_dict(self) -> dict[str, object]:
        return {
            "state": "open" if self.open else "closed",
            "opened_at": self.opened_at,
            "reason": self.reason,
            "reset_at": self.reset_at,
            "reset_by": self.reset_by,
        }


def breaker(conn: sqlite3.Connection) -> BreakerState:
    r = conn.execute(
        "SELECT state, opened_at, reason, reset_at, reset_by FROM remediation_breaker WHERE id = 1"
    ).fetchone()
    return BreakerState(r[0] == "open", r[1], r[2], r[3], r[4])


def open_breaker(conn: sqlite3.Connection, reason: str, now: float) -> None:
    """Opens the breaker (inside the caller's transaction); a no-op when already open."""
    cur = conn.execute(
        "UPDATE remediation_breaker SET state = 'open', opened_at = ?, reason = ? WHERE id = 1 AND state = 'closed'",
        (now, reason),
    )
    if cur.rowcount:
        log.error(
            "remediation breaker open",
            extra={
                "event": "remediation.breaker_open",
                "reason": reason,
                "hint": "the agent acts on nothing until a person runs 'gpuwarden-agent breaker reset'",
            },
        )


def reset_breaker(conn: sqlite3.Connection, actor: str, now: float | None = None) -> bool:
    """Closes the breaker; returns whether it was open. Records the reset in the audit trail."""
    now = time.time() if now is None else now

    def reset(c: sqlite3.Connection) -> bool:
        was_open = breaker(c).open
        c.execute(
            "UPDATE remediation_breaker SET state = 'closed', reset_at = ?, reset_by = ? WHERE id = 1", (now, actor)
        )
        c.execute(
            "INSERT INTO remediation_actions (event_id, at, rule, severity, status, uuid, "
            "instance, action, outcome, detail) VALUES (NULL, ?, '', '', '', '', '', "
            "'breaker_reset', 'acted', ?)",
            (now, json.dumps({"actor": actor, "was_open": was_open})),
        )
        return was_open

    # store.transaction: a full disk is raised as itself, not as the failed ROLLBACK after it.
    was_open = bool(transaction(conn, reset))
    log.warning(
        "remediation breaker reset", extra={"event": "remediation.breaker_reset", "actor": actor, "was_open": was_open}
    )
    return was_open


def over_budget(
    conn: sqlite3.Connection, budget: Budget, action: str, uuid: str, fleet: dict[str, str], now: float
) -> str | None:
    """Why taking ``action`` on ``uuid`` now would exceed the budget, or None if it fits.

    The share caps need the fleet's size; with no inventory (an empty fleet) only the rate cap
    applies.
    """
    recent = conn.execute(
        "SELECT count(*) FROM remediation_actions WHERE at >= ? AND outcome IN "
        "('acted', 'pending', 'uncertain') AND action IN ('throttle', 'preempt', 'quarantine')",
        (now - 60.0,),
    ).fetchone()[0]
    if recent + 1 > budget.max_actions_per_minute:
        return f"{recent} actions in the last minute: max_actions_per_minute is {budget.max_actions_per_minute}"
    size = len(fleet)
    if not size:
        return None
    if action == "quarantine" and fleet.get(uuid) != "quarantined":
        quarantined = sum(1 for s in fleet.values() if s == "quarantined")
        if quarantined + 1 > budget.max_quarantined_ratio * size:
            return (
                f"quarantining {uuid} would make {quarantined + 1} of {size} GPUs "
                f"quarantined: max_quarantined_ratio is {budget.max_quarantined_ratio:g}"
            )
    if action == "throttle":
        throttled = {r[0] for r in conn.execute("SELECT uuid FROM remediation_throttles")}
        if uuid not in throttled and len(throttled) + 1 > budget.max_throttled_ratio * size:
            return (
                f"throttling {uuid} would make {len(throttled) + 1} of {size} GPUs "
                f"throttled: max_throttled_ratio is {budget.max_throttled_ratio:g}"
            )
    return None
