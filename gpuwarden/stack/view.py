"""What ``gpuwarden up`` shows: a notification sink for on-call/chat, and the live view.

The live view polls the agent (GPU states, jobs, actions) and Prometheus (alerts). On a
terminal it redraws one screen every interval; otherwise (a pipe, CI, a log file) it prints one
line per change, so the same run reads well in both.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from gpuwarden.listener import Admit, Head, Limits, Listener, Reply
from gpuwarden.prom import PrometheusClient, PrometheusError
from gpuwarden.scheduler_agent.client import ApiError, Client


class _SinkEndpoint:
    """POST /{receiver}: an Alertmanager webhook notification, noted on the sink."""

    def __init__(self, sink: NotificationSink) -> None:
        self.sink = sink

    def admit(self, head: Head) -> Admit | Reply:
        if head.method != "POST":
            return Reply(405, b"POST only\n", "text/plain; charset=utf-8", {"allow": "POST"})
        return Admit(self.sink.max_body)

    def handle(self, head: Head, body: bytes, context: Any) -> Reply:
        try:
            doc = json.loads(body)
            for alert in doc.get("alerts", []):
                self.sink.note(head.path.strip("/"), alert)
        except (ValueError, AttributeError, TypeError):
            pass
        return Reply(200, b"", "text/plain; charset=utf-8")


class NotificationSink:
    """Receives Alertmanager's on-call and chat webhooks on a demo host (receiver = URL path).

    Binds 127.0.0.1 (at construction; port 0 picks a free one) through ``gpuwarden.listener``.
    """

    MAX_BODY = 8 << 20  # Alertmanager sends every alert of a group: 5,000 alerts are ~2 MB

    def __init__(self, port: int, limits: Limits = Limits(), max_body: int = MAX_BODY) -> None:
        self.received: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.total = 0  # ever received: the deque forgets, the live view must not re-print
        self.max_body = max_body
        self._lock = threading.Lock()
        self._listener = Listener(_SinkEndpoint(self), "127.0.0.1", port, name="sink", limits=limits)
        self.port = self._listener.port

    def note(self, receiver: str, alert: Any) -> None:
        entry = {
            "at": time.time(),
            "receiver": receiver,
            "status": alert.get("status"),
            "labels": alert.get("labels", {}),
        }
        with self._lock:  # handlers run in a thread pool
            self.received.append(entry)
            self.total += 1  # after the append: a reader of `total` finds the note

    def start(self) -> NotificationSink:
        self._listener.start()
        return self

    def stop(self) -> None:
        self._listener.stop()


# Rows of GPUs (and of alerts) one screen lists; a larger fleet is summarised (LiveView.render).
MAX_ROWS = 40


def _short(uuid: str) -> str:
    return uuid if len(uuid) <= 14 else uuid[:14] + "…"


def _gpu_label(labels: dict[str, Any]) -> str:
    return f"gpu {labels.get('gpu', '?')}"


class LiveView:
    """Polls the stack and renders it; ``step()`` does one poll (the caller owns the loop)."""

    def __init__(
        self,
        agent_url: str,
        prometheus_url: str,
        token: str,
        sink: NotificationSink,
        header: list[str],
        out: TextIO = sys.stdout,
        redraw: bool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent_url, self.prometheus_url, self.token = agent_url, prometheus_url, token
        self.agent = Client(agent_url, token, timeout=3.0)
        self.prometheus = PrometheusClient(prometheus_url, timeout=3.0)
        self.sink, self.header, self.out, self.clock = sink, header, out, clock
        self.redraw = out.isatty() if redraw is None else redraw
        self._seen_actions: set[Any] = set()
        self._seen_notes = 0
        self._last_states: dict[str, str] = {}
        self._last_alerts: set[tuple[str, str, str]] = set()

    def _poll(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"gpus": [], "jobs": [], "alerts": [], "actions": [], "breaker": None, "errors": []}
        try:
            snap["gpus"] = self.agent.call("GET", "/api/v1/gpus")
            snap["jobs"] = self.agent.call("GET", "/api/v1/jobs?limit=1000")
            acts = self.agent.call("GET", "/api/v1/actions?limit=50")
            snap["actions"], snap["breaker"] = acts.get("actions", []), acts.get("breaker")
        except (OSError, ApiError) as exc:
            snap["errors"].append(f"agent: {exc}")
        try:
            snap["alerts"] = self.prometheus.alerts()
        except PrometheusError as exc:
            snap["errors"].append(f"prometheus: {exc}")
        return snap

    def step(self) -> dict[str, Any]:
        snap = self._poll()
        if self.redraw:
            self.out.write("\x1b[H\x1b[2J" + self.render(snap))
        else:
            for line in self.changes(snap):
                self.out.write(line + "\n")
        self.out.flush()
        return snap

    @staticmethod
    def _jobs_by_gpu(jobs: list[dict[str, Any]]) -> dict[str, str]:
        by_gpu: dict[str, str] = {}
        for job in jobs:
            if job.get("state") in ("running", "stopping"):
                for uuid in job.get("gpu_uuids") or []:
                    by_gpu[uuid] = f"{job['name']}#{job['id']}"
        return by_gpu

    def render(self, snap: dict[str, Any]) -> str:
        """One screen. A fleet does not fit on one: past ``MAX_ROWS`` GPUs (or alerts) the view
        counts them by state (by rule) and lists only the GPUs that need a look (not healthy,
        alerting or running a job), so a redraw stays one screen at 8,192 GPUs."""
        lines = list(self.header) + [""]
        by_gpu = self._jobs_by_gpu(snap["jobs"])
        gpus = snap["gpus"]
        fleet = len(gpus) > MAX_ROWS
        if fleet:
            states = collections.Counter(g.get("state", "?") for g in gpus)
            nodes = len({g.get("node", "") for g in gpus})
            lines.append(
                f"{len(gpus)} GPUs on {nodes} nodes: "
                + ", ".join(f"{n} {state}" for state, n in sorted(states.items(), key=lambda kv: -kv[1]))
            )
            gpus = [g for g in gpus if g.get("state") != "healthy" or g.get("alerts") or g["uuid"] in by_gpu]
        shown = sorted(gpus, key=lambda g: (g.get("node", ""), g.get("index", 0)))[:MAX_ROWS]
        lines.append(f"{'GPU':<4} {'UUID':<16} {'STATE':<12} {'JOB':<16} ALERTS" + ("  NODE" if fleet else ""))
        for g in shown:
            alerts = ",".join(a["rule"] for a in g.get("alerts", []))
            lines.append(
                f"{g.get('index', '?'):<4} {_short(g['uuid']):<16} {g.get('state', '?'):<12} "
                f"{by_gpu.get(g['uuid'], '-'):<16} {alerts}" + (f"  {g.get('node', '')}" if fleet else "")
            )
        if len(gpus) > len(shown):
            lines.append(f"... and {len(gpus) - len(shown)} more")
        pending = sum(1 for j in snap["jobs"] if j.get("state") == "pending")
        lines += ["", f"jobs: {sum(1 for j in snap['jobs'] if j.get('state') == 'running')} running, {pending} pending"]
        lines += ["", "alerts (Prometheus):"]
        alerts = snap["alerts"]
        if len(alerts) > MAX_ROWS:
            counts = collections.Counter(
                (a["state"], a["labels"].get("rule", a["labels"].get("alertname", ""))) for a in alerts
            )
            for (state, rule), n in sorted(counts.items()):
                lines.append(f"  {state:<8} {rule:<20} x{n}")
        else:
            for a in sorted(alerts, key=lambda a: (a["labels"].get("gpu", ""), a["labels"].get("alertname", ""))):
                lab = a["labels"]
                lines.append(
                    f"  {a['state']:<8} {lab.get('rule', lab.get('alertname')):<20} {_gpu_label(lab):<7} "
                    f"{lab.get('severity', ''):<9} action={lab.get('action', '')}"
                )
        breaker = snap.get("breaker") or {}
        lines += ["", f"actions (agent; breaker {breaker.get('state', '?')}):"]
        for act in snap["actions"][:10]:
            lines.append("  " + self._action_line(act))
        lines += ["", "notifications (Alertmanager → on-call / chat):"]
        for note in list(self.sink.received)[-6:]:
            lines.append("  " + self._note_line(note))
        lines += [f"  ! {e}" for e in snap["errors"]]
        lines += ["", "Ctrl-C stops everything."]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _action_line(act: dict[str, Any]) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(act.get("at") or act.get("created_at") or 0))
        detail = act.get("error") or ""
        return (
            f"{when} {act.get('rule', '?'):<18} {act.get('status', ''):<8} {act.get('action', '?'):<10} "
            f"{act.get('outcome', '?'):<14} {_short(act.get('uuid', '') or '')} {detail}"
        ).rstrip()

    @staticmethod
    def _note_line(note: dict[str, Any]) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(note["at"]))
        lab = note["labels"]
        return f"{when} {note['receiver']:<7} {note['status']:<8} {lab.get('rule', lab.get('alertname'))} {_gpu_label(lab)}"

    def changes(self, snap: dict[str, Any]) -> list[str]:
        """One line per change since the last poll (for output that is not a terminal)."""
        out: list[str] = []
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        for g in snap["gpus"]:
            state = g.get("state", "?")
            if self._last_states.get(g["uuid"]) != state:
                if g["uuid"] in self._last_states or state != "healthy":
                    out.append(f"{stamp} gpu {g.get('index')} ({_short(g['uuid'])}) is {state}")
                self._last_states[g["uuid"]] = state
        alerts = {
            (a["labels"].get("rule", a["labels"].get("alertname", "")), a["labels"].get("gpu", ""), a["state"])
            for a in snap["alerts"]
        }

        def where(gpu: str) -> str:
            return f" gpu {gpu}" if gpu else ""  # monitoring alerts (exporter down...) have none

        for rule, gpu, state in sorted(alerts - self._last_alerts):
            out.append(f"{stamp} alert {rule}{where(gpu)} {state}")
        for rule, gpu, state in sorted(self._last_alerts - alerts):
            if state == "firing" and (rule, gpu, "firing") not in alerts:
                out.append(f"{stamp} alert {rule}{where(gpu)} resolved")
        self._last_alerts = alerts
        for act in reversed(snap["actions"]):
            key = act.get("id", json.dumps(act, sort_keys=True, default=str))
            if key not in self._seen_actions:
                self._seen_actions.add(key)
                out.append(f"{stamp} action " + self._action_line(act))
        total = self.sink.total
        notes = list(self.sink.received)
        new = min(len(notes), total - self._seen_notes)
        for note in notes[len(notes) - new :] if new else []:
            out.append(f"{stamp} notify " + self._note_line(note))
        self._seen_notes = total
        out += [f"{stamp} ! {e}" for e in snap["errors"]]
        return out
