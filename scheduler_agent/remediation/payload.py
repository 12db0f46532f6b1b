"""Alertmanager webhook body, version 4: parsing and validation.

The structure is checked by hand rather than through JSON Schema so that each refusal names the
exact field (``alerts[3].startsAt``) and so that a 100-alert body is checked in well under a
millisecond. Unknown fields are ignored, as Alertmanager's docs ask of receivers.

Only the structure is validated here. An alert that lacks our own labels (``uuid``, ``action``)
is still accepted: refusing it would make Alertmanager drop the whole notification (4xx is never
retried), and the policy records such an alert as one it could not act on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import IntakeError

STATUSES = ("firing", "resolved")

# Bounds on what one alert may carry. Alertmanager's own values sit far below them (a fingerprint
# is 16 hex digits, our label values are short); they keep a hostile sender from filling the
# database or the logs through one field. A body over them is refused with the field named.
MAX_LABEL_NAME = 256
MAX_LABEL_VALUE = 4096
MAX_LABELS = 128
MAX_FIELD = 8192  # fingerprint, receiver, groupKey, externalURL, annotation values
MAX_INT = 2**63 - 1  # SQLite's INTEGER

# RFC 3339 as Go's time.Time marshals it: up to nine fractional digits, "Z" or an offset.
_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)$")


@dataclass(frozen=True)
class Alert:
    """One entry of ``alerts[]``; ``starts_at`` is normalised (UTC, nine fractional digits)."""

    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str
    ends_at: str
    fingerprint: str

    @property
    def rule(self) -> str:
        return self.labels.get("rule") or self.labels.get("alertname", "")

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")


@dataclass(frozen=True)
class Notification:
    """A whole webhook delivery: the group it belongs to and its alerts."""

    receiver: str
    status: str
    group_key: str
    external_url: str
    truncated_alerts: int
    alerts: tuple[Alert, ...]


def normalise_time(value: str, field: str) -> str:
    """RFC 3339 time to a canonical UTC string with nanoseconds, so that the dedupe key does not
    depend on how one Alertmanager of a pair happened to format the same instant."""
    m = _RFC3339.match(value)
    if not m:
        raise IntakeError(400, f"{field}: {value[:64]!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    try:
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC)
        if tz not in ("Z", "z"):
            sign = 1 if tz[0] == "+" else -1
            dt -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    except (ValueError, OverflowError):
        raise IntakeError(400, f"{field}: {value[:64]!r} is not a valid date and time") from None
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + "." + (frac or "").ljust(9, "0") + "Z"


def _text(value: str, field: str, limit: int) -> str:
    """``value`` if it is storable text within ``limit`` characters; 400 naming ``field``."""
    if len(value) > limit:
        raise IntakeError(400, f"{field}: {len(value)} characters, more than the {limit} allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON can spell a lone UTF-16 surrogate (\ud800); UTF-8 cannot
        raise IntakeError(400, f"{field}: holds an unpaired UTF-16 surrogate") from None
    return value


def _str_map(value: Any, field: str, value_limit: int = MAX_LABEL_VALUE) -> dict[str, str]:
    if not isinstance(value, dict):
        raise IntakeError(400, f"{field}: expected an object of strings, got {type(value).__name__}")
    if len(value) > MAX_LABELS:
        raise IntakeError(400, f"{field}: {len(value)} entries, more than the {MAX_LABELS} allowed")
    for k, v in value.items():
        name = _text(k, f"{field} (a name)", MAX_LABEL_NAME)
        if not isinstance(v, str):
            raise IntakeError(400, f"{field}.{name}: expected a string, got {type(v).__name__}")
        _text(v, f"{field}.{name}", value_limit)
    return value


def _str(obj: Mapping[str, Any], key: str, field: str, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        what = "missing" if value is None else f"expected a string, got {type(value).__name__}"
        raise IntakeError(400, f"{field}{key}: {what}")
    return _text(value, f"{field}{key}", MAX_FIELD)


def parse_alert(raw: Any, index: int) -> Alert:
    where = f"alerts[{index}]."
    if not isinstance(raw, dict):
        raise IntakeError(400, f"alerts[{index}]: expected an object, got {type(raw).__name__}")
    status = _str(raw, "status", where)
    if status not in STATUSES:
        raise IntakeError(400, f"{where}status: {status[:32]!r} is not 'firing' or 'resolved'")
    labels = _str_map(raw.get("labels"), where + "labels")
    annotations = _str_map(raw.get("annotations") or {}, where + "annotations", MAX_FIELD)
    fingerprint = _str(raw, "fingerprint", where)
    if not fingerprint:
        raise IntakeError(400, f"{where}fingerprint: empty")
    starts_at = normalise_time(_str(raw, "startsAt", where), where + "startsAt")
    ends_raw = _str(raw, "endsAt", where, required=False)
    ends_at = normalise_time(ends_raw, where + "endsAt") if ends_raw else ""
    return Alert(status, labels, annotations, starts_at, ends_at, fingerprint)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_notification(body: bytes) -> Notification:
    """Parses and validates a webhook v4 body; raises ``IntakeError(400, reason)``."""
    try:
        doc = json.loads(body, parse_constant=_no_constant)
    except ValueError as exc:  # not UTF-8, not JSON, or an integer of more than 4,300 digits
        raise IntakeError(400, f"body is not JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise IntakeError(400, "body is not JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise IntakeError(400, f"body: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("version")
    if version != "4":
        raise IntakeError(400, f'version: {version!r} is not "4" (Alertmanager webhook v4)')
    status = _str(doc, "status", "")
    if status not in STATUSES:
        raise IntakeError(400, f"status: {status[:32]!r} is not 'firing' or 'resolved'")
    alerts = doc.get("alerts")
    if not isinstance(alerts, list):
        raise IntakeError(400, "alerts: expected a list")
    truncated = doc.get("truncatedAlerts", 0)
    if type(truncated) is not int or not 0 <= truncated <= MAX_INT:  # bool is an int: refused too
        raise IntakeError(400, f"truncatedAlerts: {str(truncated)[:40]} is not an integer from 0 to {MAX_INT}")
    parsed = tuple(parse_alert(a, i) for i, a in enumerate(alerts))
    return Notification(
        receiver=_str(doc, "receiver", "", required=False),
        status=status,
        group_key=_str(doc, "groupKey", "", required=False),
        external_url=_str(doc, "externalURL", "", required=False),
        truncated_alerts=truncated,
        alerts=parsed,
    )
