"""Bad input is a 4xx, never a 5xx: hypothesis drives every route of a real agent (the webhook
and the whole API, over HTTP through the listener) with hostile bodies, query strings and path
parameters: lone surrogates, integers of thousands of digits or past SQLite's range, NaN and
Infinity, odd time offsets, wrong types. Alertmanager retries a 5xx forever, so any 5xx here is
a bug; and a refused request must store nothing."""

from __future__ import annotations

import http.client
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuwarden.scheduler_agent.config import load
from gpuwarden.scheduler_agent.server import Agent
from tests.helpers import WEBHOOK_TOKEN, free_port, write_agent_config

TOKEN = "fuzz-operator-token"

# JSON text fragments a hostile client can send (built as text: json.dumps cannot write all).
huge_ints = st.sampled_from(["1" * 5000, str(2**70), str(-(2**70)), str(2**63), "-0", "1e400", "-1e400"])
constants = st.sampled_from(["NaN", "Infinity", "-Infinity"])
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3).map(
    lambda s: json.dumps("x" + s)
)  # ensure_ascii: a lone surrogate written as \\udxxx
times = st.sampled_from(
    [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00+99:99",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+00:01",
        "2026-02-30T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:00:00.1234567891Z",
        "0001-01-01T00:00:00Z",
    ]
).map(json.dumps)
scalars = st.one_of(
    huge_ints,
    constants,
    surrogates,
    times,
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.text(max_size=40).map(json.dumps),
    st.sampled_from(["true", "false", "null", '""']),
)


def obj(keys: list[str], values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A JSON object text over some of ``keys`` (and a stray one) with ``values``."""
    return st.dictionaries(st.sampled_from(keys + ["stray"]), values, max_size=len(keys) + 1).map(
        lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
    )


labels = obj(
    ["alertname", "rule", "severity", "action", "uuid", "gpu", "instance"],
    st.one_of(surrogates, st.text(max_size=20).map(json.dumps), huge_ints),
)
alert = st.tuples(st.sampled_from(["firing", "resolved", "pending"]), labels, times, times, scalars).map(
    lambda t: '{{"status":"{}","labels":{},"annotations":{{}},"startsAt":{},"endsAt":{},"fingerprint":{}}}'.format(*t)
)
notification = st.tuples(
    st.sampled_from(['"4"', '"3"', "4"]),
    st.sampled_from(['"firing"', '"resolved"']),
    st.lists(alert, max_size=3),
    scalars,
    scalars,
).map(
    lambda t: '{{"version":{},"status":{},"alerts":[{}],"truncatedAlerts":{},"groupKey":{},"receiver":"x"}}'.format(
        t[0], t[1], ",".join(t[2]), t[3], t[4]
    )
)
job = obj(
    ["name", "gpus", "priority", "command", "time_limit_seconds", "idempotency_key"],
    st.one_of(scalars, st.lists(scalars, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")),
)
gpu_change = obj(["reason", "actor", "preempt"], scalars)
bodies = st.one_of(notification, job, gpu_change, scalars, st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
path_values = st.one_of(
    st.sampled_from(["1", "0", "-1", str(2**63), "1" * 40, "GPU-n0-0", "%ff", "..", "a/b"]),
    st.text(max_size=12).map(lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="")),
)
queries = st.lists(
    st.tuples(
        st.sampled_from(["limit", "offset", "state", "before_id", "uuid", "outcome", "action"]),
        st.one_of(path_values, huge_ints),
    ),
    max_size=3,
).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, int, Path]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg = write_agent_config(
        tmp,
        free_port(),
        TOKEN,
        nodes="[{name: n0, count: 2}]",
        extra="remediation:\n  worker: {start_delay_seconds: 3600}\n",
    )
    a = Agent(load(cfg))
    _, port = a.start()
    yield a, port, tmp / "agent.db"
    a.close()


def _counts(db: Path) -> tuple[int, ...]:
    with sqlite3.connect(db) as c:
        return tuple(
            c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("jobs", "remediation_events", "remediation_notifications", "remediation_actions")
        )


def _send(port: int, method: str, path: str, body: str | None, token: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = body.encode("utf-8", "surrogatepass") if body is not None else None
        conn.request(
            method, path, body=data, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_no_route_answers_5xx_and_a_refused_request_stores_nothing(agent, data) -> None:
    a, port, db = agent
    route = data.draw(st.sampled_from(a.app.routes), label="route")
    path = route.template
    for name in route.names:
        path = path.replace(f"{{{name}}}", data.draw(path_values, label=name))
    query = data.draw(queries, label="query")
    body = data.draw(st.none() | bodies, label="body") if route.method != "GET" else None
    token = WEBHOOK_TOKEN if route.template == "/webhook/alertmanager" else TOKEN
    before = _counts(db)
    status, answer = _send(port, route.method, path + ("?" + query if query else ""), body, token)
    assert status < 500, (status, answer[:300])
    if status >= 400:
        assert _counts(db) == before, "a refused request stored something"
        assert json.loads(answer)["error"], answer  # says what was wrong


def test_the_examples_from_the_issue_are_400(agent) -> None:
    _, port, db = agent
    surrogate = (
        '{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"gpu":"\\ud800"},'
        '"startsAt":"2026-01-01T00:00:00Z","fingerprint":"a"}]}'
    )
    cases = [
        ("POST", "/webhook/alertmanager", surrogate, WEBHOOK_TOKEN),
        (
            "POST",
            "/webhook/alertmanager",
            f'{{"version":"4","status":"firing","alerts":[],"truncatedAlerts":{2**70}}}',
            WEBHOOK_TOKEN,
        ),
        (
            "POST",
            "/webhook/alertmanager",
            '{"version":"4","status":"firing","alerts":[],"truncatedAlerts":%s}' % ("9" * 5000),
            WEBHOOK_TOKEN,
        ),
        ("POST", "/api/v1/jobs", '{"name":"x","gpus":1,"time_limit_seconds":NaN}', TOKEN),
        ("GET", f"/api/v1/actions?before_id={2**70}", None, TOKEN),
    ]
    before = _counts(db)
    for method, path, body, token in cases:
        status, answer = _send(port, method, path, body, token)
        assert status == 400, (path, body and body[:80], status, answer)
    assert _counts(db) == before
