"""The HTTP API in-process: auth, 4xx naming fields, OpenAPI-driven fuzzing, metrics, spans."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpuwarden.scheduler_agent.config import load
from gpuwarden.scheduler_agent.server import Agent
from tests.helpers import WEBHOOK_TOKEN, free_port, require_binary, wait_until, write_agent_config

TOKEN = "s3cret-token"


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload


def write_config(
    tmp_path: Path, port: int, nodes: str = "[{name: n0, count: 4}, {name: n1, count: 8}]", extra: str = ""
) -> Path:
    return write_agent_config(tmp_path, port, TOKEN, nodes, extra)


@pytest.fixture
def agent(tmp_path: Path, spans) -> Iterator[tuple[Agent, Api]]:
    a = Agent(load(write_config(tmp_path, free_port())), tracer_provider=spans[0])
    host, port = a.start()
    yield a, Api(f"http://{host}:{port}")
    a.close()


def test_every_operator_route_needs_the_operator_token_and_the_webhook_token_is_not_it(agent) -> None:
    """Credentials by role: jobs (which run commands), quarantine/release, the breaker and every
    read that shows commands or alert labels need web.token_file's token; Alertmanager's
    credential opens the webhook and nothing else; health, metrics and the OpenAPI document stay
    open for Prometheus and probes."""
    a, api = agent
    operator_routes = [r for r in a.app.routes if r.auth is None]
    open_paths = {r.template for r in a.app.routes if r.auth is False}
    assert open_paths == {"/healthz", "/metrics", "/api/v1/openapi.json"}
    assert {"/api/v1/jobs", "/api/v1/gpus", "/api/v1/actions", "/api/v1/remediation/breaker/reset"} <= {
        r.template for r in operator_routes
    }
    for r in operator_routes:
        path = r.template.replace("{id}", "1").replace("{uuid}", "GPU-n0-0")
        body = {"name": "x", "gpus": 1} if r.template == "/api/v1/jobs" else {}
        for token in (None, "wrong", TOKEN + "x", WEBHOOK_TOKEN):
            status, doc = api.call(r.method, path, body if r.method == "POST" else None, token=token)
            assert status == 401 and doc["field"] == "Authorization", (r.method, path, token)
    assert api.call("GET", "/api/v1/jobs")[1] == []  # nothing was created
    notification = {"version": "4", "status": "firing", "alerts": []}
    assert api.call("POST", "/webhook/alertmanager", notification, token=TOKEN)[0] == 401
    assert api.call("POST", "/webhook/alertmanager", notification, token=WEBHOOK_TOKEN)[0] == 202
    for path in sorted(open_paths):
        assert api.call("GET", path, token=None)[0] == 200, path


def test_bad_input_is_a_4xx_naming_the_field(agent) -> None:
    _, api = agent
    cases = [
        ({"name": "x", "gpus": "two"}, "gpus"),
        ({"gpus": 1}, "name"),
        ({"name": "x", "gpus": 0}, "gpus"),
        ({"name": "x", "gpus": 9}, "gpus"),
        ({"name": "x", "gpus": 1, "color": "red"}, "color"),
        ({"name": "x", "gpus": 1, "command": []}, "command"),
        ({"name": "x", "gpus": 1, "time_limit_seconds": -1}, "time_limit_seconds"),
    ]
    for body, field in cases:
        status, doc = api.call("POST", "/api/v1/jobs", body)
        assert status == 400 and doc["field"] == field, (body, doc)
        assert field in doc["error"]
    status, doc = api.call("POST", "/api/v1/jobs", raw=b"{not json")
    assert status == 400 and doc["field"] == "body"
    assert api.call("GET", "/api/v1/jobs/abc")[1]["field"] == "id"
    assert api.call("GET", "/api/v1/jobs?limit=0")[1]["field"] == "limit"
    assert api.call("GET", "/api/v1/jobs?state=bogus")[1]["field"] == "state"
    assert api.call("GET", "/api/v1/jobs/999")[0] == 404
    assert api.call("POST", "/api/v1/gpus/GPU-none/quarantine", {})[0] == 404
    assert api.call("POST", "/api/v1/gpus/GPU-n0-0/release", {})[0] == 409
    assert api.call("PUT", "/api/v1/jobs")[0] == 405


def test_job_lifecycle_and_idempotent_submit(agent) -> None:
    a, api = agent
    body = {"name": "train", "gpus": 4, "priority": 3, "idempotency_key": "k1"}
    status, job = api.call("POST", "/api/v1/jobs", body)
    assert status == 201 and job["state"] == "pending"
    status, again = api.call("POST", "/api/v1/jobs", body)
    assert status == 201 and again["id"] == job["id"]
    wait_until(lambda: api.call("GET", f"/api/v1/jobs/{job['id']}")[1]["state"] == "running", 5, what="placement")
    got = api.call("GET", f"/api/v1/jobs/{job['id']}")[1]
    assert got["node"] == "n0" and len(got["gpu_uuids"]) == 4
    status, q = api.call("POST", f"/api/v1/gpus/{got['gpu_uuids'][0]}/quarantine", {"reason": "ecc", "actor": "me"})
    assert status == 200 and q["preempted"] == [job["id"]] and q["quarantine_actor"] == "me"
    wait_until(lambda: api.call("GET", f"/api/v1/jobs/{job['id']}")[1]["node"] == "n1", 5, what="re-placement")
    assert api.call("DELETE", f"/api/v1/jobs/{job['id']}")[1]["state"] == "cancelled"
    assert api.call("DELETE", f"/api/v1/jobs/{job['id']}")[0] == 409
    assert len(api.call("GET", "/api/v1/jobs")[1]) == 1


@pytest.mark.binaries
def test_metrics_pass_promtool_and_count_jobs(agent, tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    a, api = agent
    api.call("POST", "/api/v1/jobs", {"name": "a", "gpus": 2})
    api.call("POST", "/api/v1/gpus/GPU-n1-7/quarantine", {"reason": "x"})
    wait_until(lambda: a.scheduler.list_jobs(state="running"), 5, what="placement")
    with urllib.request.urlopen(api.base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout == "" and check.stderr == "", check.stdout + check.stderr
    lines = set(text.splitlines())
    assert "jobs_submitted_total 1.0" in lines and "jobs_scheduled_total 1.0" in lines
    assert "cluster_gpus 12.0" in lines and "cluster_gpus_allocated 2.0" in lines
    assert "cluster_gpus_unhealthy 1.0" in lines and "cluster_gpus_available 9.0" in lines
    assert 'gpu_state{gpu="7",instance="n1",node="n1",state="quarantined",uuid="GPU-n1-7"} 1.0' in lines
    assert 'gpu_state{gpu="7",instance="n1",node="n1",state="healthy",uuid="GPU-n1-7"} 0.0' in lines
    assert sum(1 for line in lines if line.startswith("gpu_state{")) == 12 * 5
    assert api.call("GET", "/healthz")[0] == 200


def test_spans_carry_job_and_gpu_attributes(agent, spans) -> None:
    a, api = agent
    _, job = api.call("POST", "/api/v1/jobs", {"name": "traced", "gpus": 2})
    wait_until(lambda: a.scheduler.list_jobs(state="running"), 5, what="placement")
    api.call("DELETE", f"/api/v1/jobs/{job['id']}")
    finished = {s.name: s for s in spans[1].get_finished_spans()}
    assert {"job.submit", "job.schedule", "scheduler.placement", "job.run"} <= set(finished)
    assert finished["job.submit"].attributes["job.id"] == job["id"]
    sched = finished["job.schedule"]
    assert sched.attributes["job.name"] == "traced" and len(sched.attributes["gpu.uuids"]) == 2
    place = finished["scheduler.placement"]
    assert place.parent.span_id == sched.context.span_id and place.attributes["node"] == sched.attributes["node"]
    run = finished["job.run"]
    assert run.attributes["job.state"] == "cancelled" and list(run.attributes["gpu.uuids"]) == list(
        sched.attributes["gpu.uuids"]
    )


def _strategy(schema: dict, components: dict) -> st.SearchStrategy:
    """Hypothesis values near and across a JSON schema's edges (valid ones and broken ones)."""
    if "$ref" in schema:
        return _strategy(components[schema["$ref"].rsplit("/", 1)[1]], components)
    junk = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    )
    t = schema.get("type")
    types = t if isinstance(t, list) else [t]
    options = [junk]
    if schema.get("examples"):
        options.append(st.sampled_from(schema["examples"]))
    if "integer" in types:
        lo, hi = schema.get("minimum", -10), schema.get("maximum", 10**6)
        options.append(st.integers(lo - 2, min(hi + 2, lo + 50)))
    if "number" in types:
        options.append(st.floats(-10, 1e8, allow_nan=False))
    if "string" in types:
        options.append(st.text(max_size=schema.get("maxLength", 30) + 2))
    if "boolean" in types:
        options.append(st.booleans())
    if "array" in types:
        options.append(st.lists(_strategy(schema.get("items", {}), components), max_size=4))
    if "object" in types or "properties" in schema:
        props = {k: _strategy(v, components) for k, v in schema.get("properties", {}).items()}
        options.append(st.fixed_dictionaries({}, optional={**props, "extra": junk}))
        required = schema.get("required", [])
        if required:
            options.append(
                st.fixed_dictionaries(
                    {k: props[k] for k in required}, optional={k: v for k, v in props.items() if k not in required}
                )
            )
    return st.one_of(*options)


def _requests(doc: dict) -> st.SearchStrategy:
    comps = doc["components"]["schemas"]
    ops = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            params = {
                p["name"]: st.one_of(
                    _strategy(p.get("schema", {}), comps).map(str),
                    st.sampled_from(["1", "GPU-n0-0", "0", "-1", "%2F", "x" * 300]),
                )
                for p in op.get("parameters", [])
                if p["in"] == "path"
            }
            query = {
                p["name"]: _strategy(p.get("schema", {}), comps).map(str)
                for p in op.get("parameters", [])
                if p["in"] == "query"
            }
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
            ops.append(
                st.tuples(
                    st.just(method.upper()),
                    st.just(path),
                    st.fixed_dictionaries(params),
                    st.fixed_dictionaries({}, optional=query),
                    _strategy(body, comps) if body else st.none(),
                    st.booleans(),
                )
            )
    return st.one_of(*ops)


def test_fuzz_from_the_openapi_document_never_5xx(agent) -> None:
    a, api = agent
    status, doc = api.call("GET", "/api/v1/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/gpus",
        "/api/v1/gpus/{uuid}/quarantine",
        "/api/v1/gpus/{uuid}/release",
    } <= set(doc["paths"])
    from urllib.parse import quote, urlencode

    seen: set[int] = set()

    # The drawn requests rarely make a valid job; these examples pin one success per kind, so the
    # last assertion checks the agent's answers rather than the luck of the draw.
    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(_requests(doc))
    @example(("GET", "/api/v1/gpus", {}, {}, None, False))
    @example(("POST", "/api/v1/jobs", {}, {}, {"name": "fuzz-seed", "gpus": 1}, False))
    @example(("POST", "/api/v1/jobs", {}, {}, {"name": "fuzz-seed", "gpus": 1}, True))
    def fuzz(req) -> None:
        method, path, params, query, body, raw_garbage = req
        for k, v in params.items():
            path = path.replace("{" + k + "}", quote(v, safe="") or "x")
        if query:
            path += "?" + urlencode(query)
        if raw_garbage and body is not None:
            status, out = api.call(method, path, raw=json.dumps(body).encode()[:-1] or b"{")
        else:
            status, out = api.call(method, path, body)
        seen.add(status)
        assert status < 500, (method, path, body, out)
        if status >= 400:
            assert isinstance(out, dict) and out.get("error"), out

    fuzz()
    assert {200, 201, 400} <= seen
