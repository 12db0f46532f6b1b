"""The scheduler's REST API (/api/v1/jobs, /api/v1/gpus), /metrics, /healthz and the OpenAPI document.

``install(app, scheduler, registry)`` registers every route on a ``web.App``; the request
schemas below are both the OpenAPI document and the validation the router applies.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .models import GPU_STATES, JOB_STATES
from .scheduler import Scheduler
from .web import App, HttpError, Request, Response

ERROR = {"$ref": "#/components/schemas/Error"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "field": {"type": ["string", "null"]}},
    },
    "JobRequest": {
        "type": "object",
        "required": ["name", "gpus"],
        "additionalProperties": False,
        "examples": [
            {"name": "train-resnet", "gpus": 2, "priority": 5, "time_limit_seconds": 3600},
            {"name": "tracked", "gpus": 1, "idempotency_key": "batch-42"},
        ],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "gpus": {"type": "integer", "minimum": 1, "maximum": 1024},
            "priority": {"type": "integer", "minimum": -1000000, "maximum": 1000000, "default": 0},
            "command": {
                "type": ["array", "null"],
                "minItems": 1,
                "maxItems": 4096,
                "items": {"type": "string", "maxLength": 65536, "pattern": "^[^\\u0000]*$"},
                "description": "argv; omitted = tracking only (placed, not run here)",
            },
            "time_limit_seconds": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 31536000},
            "idempotency_key": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 200,
                "description": "a retry with the same key returns the first job",
            },
        },
    },
    "Job": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "gpus": {"type": "integer"},
            "priority": {"type": "integer"},
            "state": {"type": "string", "enum": list(JOB_STATES)},
            "command": {"type": ["array", "null"], "items": {"type": "string"}},
            "time_limit_seconds": {"type": ["number", "null"]},
            "reason": {"type": ["string", "null"]},
            "exit_code": {"type": ["integer", "null"]},
            "preemptions": {"type": "integer"},
            "runs": {"type": "integer"},
            "node": {"type": ["string", "null"]},
            "gpu_uuids": {"type": "array", "items": {"type": "string"}},
            "gpu_indexes": {"type": "array", "items": {"type": "integer"}},
            "submitted_at": {"type": "number"},
            "started_at": {"type": ["number", "null"]},
            "finished_at": {"type": ["number", "null"]},
            "idempotency_key": {"type": ["string", "null"]},
        },
    },
    "Gpu": {
        "type": "object",
        "properties": {
            "uuid": {"type": "string"},
            "node": {"type": "string"},
            "index": {"type": "integer"},
            "name": {"type": "string"},
            "state": {"type": "string", "enum": list(GPU_STATES)},
            "schedulable": {"type": "boolean"},
            "job_id": {"type": ["integer", "null"]},
            "quarantined": {"type": "boolean"},
            "quarantine_reason": {"type": ["string", "null"]},
            "throttled": {"type": "boolean"},
            "lost": {"type": "boolean"},
            "alerts": {"type": "array", "items": {"type": "object"}},
        },
    },
    "QuarantineRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "reason": {"type": "string", "minLength": 1, "maxLength": 1000},
            "actor": {"type": "string", "minLength": 1, "maxLength": 200},
            "preempt": {"type": "boolean", "default": True},
        },
    },
    "ReleaseRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"actor": {"type": "string", "minLength": 1, "maxLength": 200}},
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out.update(_json(schema))
    return out


JOB_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
GPU_UUID = {"name": "uuid", "in": "path", "required": True, "schema": {"type": "string"}}


def _actor(req: Request, body: dict[str, Any] | None = None) -> str:
    """Who asked (the audit trail's actor): the body's ``actor``, else X-Gpuwarden-Actor."""
    actor = (body or {}).get("actor") or req.headers.get("x-gpuwarden-actor") or "api"
    if len(actor) > 200:
        raise HttpError(400, "actor: more than 200 characters", "X-Gpuwarden-Actor")
    return actor


def install(app: App, sched: Scheduler, registry: CollectorRegistry) -> None:
    for name, schema in SCHEMAS.items():
        app.add_schema(name, schema)
    job = {"$ref": "#/components/schemas/Job"}
    gpu = {"$ref": "#/components/schemas/Gpu"}

    def submit(req: Request) -> Response:
        b = req.json()
        out = sched.submit(
            b["name"],
            b["gpus"],
            priority=b.get("priority") or 0,
            command=b.get("command"),
            time_limit=b.get("time_limit_seconds"),
            idempotency_key=b.get("idempotency_key"),
            actor=_actor(req),
        )
        return Response(201, out, headers={"Location": f"/api/v1/jobs/{out['id']}"})

    def list_jobs(req: Request) -> Response:
        state = _query(req, "state")
        limit = _int_query(req, "limit", 100, 1, 10000)
        offset = _int_query(req, "offset", 0, 0, 2**62)
        return Response(200, sched.list_jobs(state=state or None, limit=limit, offset=offset))

    app.add_route(
        "POST",
        "/api/v1/jobs",
        submit,
        openapi={
            "operationId": "submitJob",
            "summary": "Queue a job asking for N GPUs on one node",
            "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/JobRequest"})},
            "responses": {
                "201": _resp("queued (or the job an earlier request with the same idempotency_key made)", job),
                "400": _resp("bad input; `field` names it", ERROR),
            },
        },
    )
    app.add_route(
        "GET",
        "/api/v1/jobs",
        list_jobs,
        openapi={
            "operationId": "listJobs",
            "summary": "Jobs by id",
            "parameters": [
                {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(JOB_STATES)}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            ],
            "responses": {
                "200": _resp("jobs", {"type": "array", "items": job}),
                "400": _resp("bad query parameter", ERROR),
            },
        },
    )
    app.add_route(
        "GET",
        "/api/v1/jobs/{id}",
        lambda req: Response(200, sched.get_job(req.params["id"])),
        openapi={
            "operationId": "getJob",
            "parameters": [JOB_ID],
            "responses": {
                "200": _resp("the job", job),
                "400": _resp("bad id", ERROR),
                "404": _resp("no such job", ERROR),
            },
        },
    )
    app.add_route(
        "DELETE",
        "/api/v1/jobs/{id}",
        lambda req: Response(200, sched.cancel(req.params["id"], _actor(req))),
        openapi={
            "operationId": "cancelJob",
            "summary": "Cancel (running jobs get SIGTERM, then SIGKILL)",
            "parameters": [JOB_ID],
            "responses": {
                "200": _resp("cancelled or stopping", job),
                "400": _resp("bad id", ERROR),
                "404": _resp("no such job", ERROR),
                "409": _resp("already finished", ERROR),
            },
        },
    )

    def quarantine(req: Request) -> Response:
        b = req.json() if req.body else {}
        return Response(
            200,
            sched.quarantine(
                req.params["uuid"],
                b.get("reason") or "manual quarantine",
                _actor(req, b),
                preempt=b.get("preempt", True),
            ),
        )

    def release(req: Request) -> Response:
        b = req.json() if req.body else {}
        return Response(200, sched.release(req.params["uuid"], _actor(req, b)))

    app.add_route(
        "GET",
        "/api/v1/gpus",
        lambda req: Response(200, sched.list_gpus()),
        openapi={
            "operationId": "listGpus",
            "responses": {"200": _resp("every known GPU", {"type": "array", "items": gpu})},
        },
    )
    app.add_route(
        "GET",
        "/api/v1/gpus/{uuid}",
        lambda req: Response(200, sched.get_gpu(req.params["uuid"])),
        openapi={
            "operationId": "getGpu",
            "parameters": [GPU_UUID],
            "responses": {"200": _resp("the GPU", gpu), "404": _resp("no such GPU", ERROR)},
        },
    )
    app.add_route(
        "POST",
        "/api/v1/gpus/{uuid}/quarantine",
        quarantine,
        openapi={
            "operationId": "quarantineGpu",
            "summary": "Take a GPU out of scheduling (and preempt its job)",
            "parameters": [GPU_UUID],
            "requestBody": {"required": False, **_json({"$ref": "#/components/schemas/QuarantineRequest"})},
            "responses": {
                "200": _resp("quarantined", gpu),
                "400": _resp("bad input", ERROR),
                "404": _resp("no such GPU", ERROR),
            },
        },
    )
    app.add_route(
        "POST",
        "/api/v1/gpus/{uuid}/release",
        release,
        openapi={
            "operationId": "releaseGpu",
            "parameters": [GPU_UUID],
            "requestBody": {"required": False, **_json({"$ref": "#/components/schemas/ReleaseRequest"})},
            "responses": {
                "200": _resp("released", gpu),
                "400": _resp("bad input", ERROR),
                "404": _resp("no such GPU", ERROR),
                "409": _resp("not quarantined", ERROR),
            },
        },
    )

    app.add_route("GET", "/api/v1/openapi.json", lambda req: Response(200, app.openapi_document()), auth=False)
    app.add_route(
        "GET", "/healthz", lambda req: Response(200, b"ok\n", "text/plain; charset=utf-8"), auth=False, inline=True
    )
    app.add_route(
        "GET", "/metrics", lambda req: Response(200, generate_latest(registry), CONTENT_TYPE_LATEST), auth=False
    )


def _query(req: Request, name: str) -> str | None:
    """The first value of query parameter ``name``, if it has one."""
    values = req.query.get(name)
    return values[0] if values else None


def _int_query(req: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = _query(req, name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise HttpError(400, f"{name} must be an integer, got {raw[:40]!r}", name) from None
    if not lo <= v <= hi:
        raise HttpError(400, f"{name} must be between {lo} and {hi}", name)
    return v
