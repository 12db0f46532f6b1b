from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuwarden.scheduler_agent.remediation.config import parse
from gpuwarden.scheduler_agent.remediation.intake import Credentials
from gpuwarden.scheduler_agent.remediation.service import Remediation
from gpuwarden.scheduler_agent.web import App, BearerAuth
from tests.remediation.fakes import FakeActuator, FakeScheduler

TOKEN = "s3cret-token"  # the webhook's (Alertmanager's) credential
OPERATOR_TOKEN = "operator-token"  # the agent's API token (web.token_file)


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_rem(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., Remediation]]:
    """Builds a Remediation on a fresh database with a fake scheduler and actuator (worker not
    started: tests drive ``worker.run_once()`` so that every step is deterministic)."""
    made: list[Remediation] = []

    def _make(
        section: dict[str, Any] | None = None, uuids: int = 8, scheduler: Any = None, actuator: Any = None, **kw: Any
    ) -> Remediation:
        sched = scheduler or FakeScheduler([f"GPU-{i}" for i in range(uuids)])
        act = actuator or FakeActuator()
        rem = Remediation.create(
            str(tmp_path / "agent.db"),
            parse(section),
            sched,
            act,
            credentials=kw.pop("credentials", Credentials(TOKEN.encode())),
            clock=clock,
            **kw,
        )
        rem.sched, rem.act = sched, act  # type: ignore[attr-defined]
        made.append(rem)
        return rem

    yield _make
    for r in made:
        r.stop()


@pytest.fixture
def serve() -> Iterator[Callable[[Remediation], str]]:
    """Serves a Remediation's routes on a free port; returns the base URL."""
    apps: list[App] = []

    def _serve(rem: Remediation) -> str:
        app = App(BearerAuth(token=OPERATOR_TOKEN))
        rem.register_routes(app)
        server = app.serve("127.0.0.1", 0)
        apps.append(app)
        return f"http://127.0.0.1:{server.port}"

    yield _serve
    for a in apps:
        a.shutdown()


def post(
    url: str, body: bytes | dict, token: str | None = TOKEN, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw
