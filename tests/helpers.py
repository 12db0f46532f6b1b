"""Shared test helpers: real binaries, console scripts, polling, agent configs; free ports and
processes stopped by pid come from ``gpuwarden.procs`` (the one helper the launcher uses too).

Servers under test bind to 127.0.0.1 on a free port and are stopped by the test that started
them. In CI (``CI=true``) a missing binary fails the test; elsewhere it skips with the command
that installs it.
"""

from __future__ import annotations

import contextvars
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from gpuwarden.procs import Proc, free_port

__all__ = [
    "Proc",
    "free_port",
    "REPO",
    "VENV_BIN",
    "WEBHOOK_TOKEN",
    "console_script",
    "http_get",
    "require_binary",
    "wait_until",
    "with_webhook_auth",
    "write_agent_config",
]

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"

T = TypeVar("T")


# The test running now (set by an autouse fixture in tests/conftest.py): require_binary checks
# its markers, so that `-m "not binaries"` (make test-fast) can trust them.
SYSTEM_BINARIES = {
    "promtool",
    "amtool",
    "prometheus",
    "alertmanager",
    "prometheus-alertmanager",
    "victoria-metrics",
    "vmagent",
    "vmalert",
    "kubectl",
}
CURRENT_TEST: contextvars.ContextVar[pytest.Item | None] = contextvars.ContextVar("current_test", default=None)


def require_binary(name: str) -> str:
    """Path of a real binary (promtool, amtool, prometheus, prometheus-alertmanager, Slurm's).

    Debian ships Alertmanager as ``prometheus-alertmanager``; upstream as ``alertmanager``. A test
    that asks for one of the monitoring stack's (``SYSTEM_BINARIES``) must be marked ``binaries``:
    it fails here otherwise. Tools every machine has (openssl, cc) need no marker.
    """
    item = CURRENT_TEST.get()
    if name in SYSTEM_BINARIES and item is not None and item.get_closest_marker("binaries") is None:
        pytest.fail(
            f"{item.nodeid} runs the real {name} but is not marked binaries: add "
            "@pytest.mark.binaries (or pytestmark) so that make test-fast leaves it out"
        )
    candidates = [name]
    if name == "alertmanager":
        candidates.insert(0, "prometheus-alertmanager")
    for c in candidates:
        path = shutil.which(c)
        if path:
            return path
    msg = f"{name} not found on PATH: run 'make binaries' (.ci/install-binaries installs it from Debian's packages)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)


def console_script(name: str) -> str:
    """Path of one of our console scripts (gpuwarden-exporter, ...) in the test's virtualenv."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"console script {name} not installed: run 'make setup'")
    return found


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> T:
    """Polls ``predicate`` until it returns a truthy value; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled services may not be up yet
            last_exc = exc
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))


def http_get(url: str, timeout: float = 5.0, token: str | None = None) -> tuple[int, bytes]:
    """GET ``url`` (with ``Authorization: Bearer token`` when given): (status, body), 4xx/5xx too."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# Alertmanager's credential in the agents tests start (the operator's is the ``token`` they pass).
WEBHOOK_TOKEN = "alertmanager-webhook-token"


def with_webhook_auth(extra: str) -> str:
    """``extra`` (top-level agent YAML) with ``remediation.auth`` pointing at ``webhook-token``."""
    auth = "  auth: {bearer_token_file: webhook-token}\n"
    if "remediation:" in extra:
        return extra.replace("remediation:\n", "remediation:\n" + auth, 1)
    return extra + "\nremediation:\n" + auth


def write_agent_config(
    directory: Path, port: int, token: str, nodes: str = "[{name: n0, count: 4}, {name: n1, count: 8}]", extra: str = ""
) -> Path:
    """A minimal ``gpuwarden-agent serve`` config (static inventory, tracking executor, fast ticks)
    and its token files in ``directory`` (``token``, the operator's, and ``webhook-token``,
    Alertmanager's: ``WEBHOOK_TOKEN``); ``extra`` is YAML appended at the top level."""
    (directory / "token").write_text(token + "\n")
    (directory / "webhook-token").write_text(WEBHOOK_TOKEN + "\n")
    extra = with_webhook_auth(extra)
    cfg = directory / "agent.yaml"
    cfg.write_text(f"""
web:
  listen_address: 127.0.0.1:{port}
  token_file: token
database:
  path: agent.db
inventory:
  nodes: {nodes}
executor:
  kind: tracking
scheduler:
  tick_seconds: 0.05
{extra}""")
    return cfg
