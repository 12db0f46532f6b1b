"""The seams other packages use: router extension with its own auth and schema, tracing from env."""

from __future__ import annotations

import importlib.util
import logging

import pytest
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from gpuwarden.scheduler_agent.tracing import provider_from_env
from gpuwarden.scheduler_agent.web import App, BearerAuth, Request, Response


def _req(method: str, path: str, body: bytes = b"", token: str | None = None) -> Request:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return Request(method, path, headers, {}, body)


def test_an_added_route_gets_its_own_auth_schema_and_doc_entry() -> None:
    app = App(BearerAuth(token="main"))
    seen = []
    app.add_route(
        "POST",
        "/webhook/{kind}",
        lambda r: (seen.append(r.params), Response(202, {"ok": True}))[1],
        auth=BearerAuth(token="hook"),
        openapi={
            "operationId": "hook",
            "parameters": [{"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "required": ["version"], "properties": {"version": {"const": "4"}}}
                    }
                }
            },
            "responses": {"202": {"description": "accepted"}},
        },
    )
    assert app.dispatch(_req("POST", "/webhook/am", b'{"version": "4"}', "main")).status == 401
    bad = app.dispatch(_req("POST", "/webhook/am", b'{"version": "3"}', "hook"))
    assert bad.status == 400 and bad.body["field"] == "version"
    assert app.dispatch(_req("POST", "/webhook/am", b'{"version": "4"}', "hook")).status == 202
    assert seen == [{"kind": "am"}]
    doc = app.openapi_document()
    assert doc["paths"]["/webhook/{kind}"]["post"]["security"] == [{"bearer": []}]
    with pytest.raises(ValueError, match="already registered"):
        app.add_route("POST", "/webhook/{kind}", lambda r: Response())


def test_a_handler_bug_is_a_logged_500_not_a_crash(caplog) -> None:
    app = App(BearerAuth(token="main"))
    app.add_route("GET", "/boom", lambda r: 1 / 0, auth=False)
    with caplog.at_level(logging.ERROR):
        assert app.dispatch(_req("GET", "/boom")).status == 500
    assert "ZeroDivisionError" in caplog.text


def test_tracer_provider_from_otel_env(caplog) -> None:
    p = provider_from_env(env={"OTEL_TRACES_EXPORTER": "console"})
    procs = p._active_span_processor._span_processors
    assert len(procs) == 1 and isinstance(procs[0].span_exporter, ConsoleSpanExporter)
    p.shutdown()
    assert provider_from_env(env={})._active_span_processor._span_processors == ()
    try:
        have_otlp = importlib.util.find_spec("opentelemetry.exporter.otlp") is not None
    except ModuleNotFoundError:
        have_otlp = False
    if not have_otlp:
        with caplog.at_level(logging.WARNING):
            provider_from_env(env={"OTEL_TRACES_EXPORTER": "otlp"})
        assert "pip install opentelemetry-exporter-otlp" in caplog.text
