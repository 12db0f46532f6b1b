"""The agent's HTTP API: a small router other packages extend, bearer auth by role, OpenAPI.

Seam::

    app.add_route("POST", "/webhook/alertmanager", handler, auth=webhook_credentials,
                  max_body=config.max_body_bytes, openapi={...operation object...})

``handler(req: Request) -> Response``. ``{name}`` path segments land in ``req.params`` (converted
to the type the operation's ``parameters`` declare). ``auth``: ``None`` (default) requires the
operator's credential (the app's ``BearerAuth(web.token_file)``) for every method, reads
included, since jobs show their commands and GPUs their alerts' labels; ``False`` leaves a route
open (``/healthz``, ``/metrics``, the OpenAPI document: what Prometheus and probes need); any
``Callable[[Request], bool]`` is that route's own credential (the webhook's, which can do nothing
else). Credentials are checked on the request's headers before its body is read (the listener's
``admit``), and ``max_body`` (default 1 MiB) is enforced against Content-Length and again
against what arrives. The ``openapi`` operation object goes into the document at
/api/v1/openapi.json, and when it has a JSON ``requestBody`` schema the router validates the
body with it before the handler runs: the document *is* the validation, so they cannot drift.

Errors: bad input is answered 4xx with ``{"error": message, "field": name}``; handlers raise
``models.SchedulerError`` subclasses (or ``HttpError``) and the router maps them. Anything else
a handler raises is a bug: 500, logged with its traceback.

Serving is ``gpuwarden.listener`` (uvicorn with deadlines and a connection cap), with TLS when
``web.tls`` is set.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import jsonschema

from gpuwarden.listener import Admit, Head, Limits, Listener, Reply

from .models import SchedulerError
from .store import DatabaseFull
from .tls import ReloadingContext

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20


class HttpError(Exception):
    def __init__(
        self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    query: dict[str, list[str]]
    body: bytes
    params: dict[str, Any] = field(default_factory=dict)
    _json: Any = None

    def json(self) -> Any:
        """The body parsed as JSON (400 naming the body when it is not JSON)."""
        if self._json is None:
            if not self.body:
                raise HttpError(400, "request body must be a JSON document", "body")
            try:
                self._json = json.loads(self.body, parse_constant=_no_constant)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise HttpError(400, f"request body is not valid JSON: {str(exc)[:200]}", "body") from exc
            try:
                # JSON may spell lone UTF-16 surrogates (\ud800) that no UTF-8 store accepts.
                json.dumps(self._json, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                self._json = None
                raise HttpError(400, "request body holds an unpaired UTF-16 surrogate", "body") from None
        return self._json

    def bearer(self) -> str | None:
        return bearer(self.headers)


_BOUNDS = {
    "maxLength": "must be at most this many characters:",
    "minLength": "must be at least this many characters:",
    "maxItems": "must have at most this many items:",
    "minItems": "must have at least this many items:",
    "maximum": "must be at most",
    "minimum": "must be at least",
    "exclusiveMaximum": "must be below",
    "exclusiveMinimum": "must be above",
}


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON does not have and which slip past
    # JSON Schema's minimum/maximum (every comparison with NaN is false).
    raise ValueError(f"{name} is not a JSON number")


def bearer(headers: dict[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (names lower-cased)."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-able, or bytes with content_type set
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if self.body is None:
            return b""
        return json.dumps(self.body).encode()


Handler = Callable[[Request], Response]
AuthCheck = None | bool | Callable[[Request], bool]


def read_secret(path: str | Path, what: str) -> bytes:
    """A secret from a file, surrounding whitespace stripped; ValueError names ``what`` (the
    setting that named the file) when it cannot be read or is empty."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise ValueError(f"{what}: {path} is empty; put the shared secret in it")
    return secret


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` against a token file (read once, stripped)."""

    def __init__(self, token_file: str | Path | None = None, token: str | None = None) -> None:
        if token is not None:
            if not token:
                raise ValueError("BearerAuth: the token is empty")
            self._token = token.encode()
        elif token_file is not None:
            self._token = read_secret(token_file, "token file")
        else:
            raise ValueError("BearerAuth needs token_file or token")

    def __call__(self, req: Request) -> bool:
        got = req.bearer()
        # compare_digest on bytes of any length: its time depends on the length only.
        return got is not None and hmac.compare_digest(got.encode("utf-8", "replace"), self._token)

    def same_secret(self, secret: bytes | None) -> bool:
        """Whether ``secret`` is this token (the agent refuses one token for two roles)."""
        return secret is not None and hmac.compare_digest(secret, self._token)


@dataclass
class Route:
    method: str
    template: str
    regex: re.Pattern[str]
    names: list[str]
    handler: Handler
    auth: AuthCheck
    openapi: dict[str, Any] | None
    validator: jsonschema.Draft202012Validator | None
    max_body: int
    max_body_setting: str
    inline: bool = False


class App:
    """Routes, auth and the OpenAPI document; an ``Endpoint`` for ``gpuwarden.listener``."""

    def __init__(self, auth: Callable[[Request], bool], title: str = "gpuwarden agent", version: str = "0.1.0") -> None:
        self.default_auth = auth
        self.routes: list[Route] = []
        self.components: dict[str, dict[str, Any]] = {}
        self.info = {"title": title, "version": version}
        self._listener: Listener | None = None

    # ------------------------------------------------------------------------- routing
    def add_route(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        auth: AuthCheck = None,
        openapi: dict[str, Any] | None = None,
        max_body: int = MAX_BODY,
        max_body_setting: str = "",
        inline: bool = False,
    ) -> None:
        """``inline``: the handler is trivial (no I/O, no body) and answers on the listener's
        event loop, without a hop to a handler thread: ``/healthz`` stays quick under load."""
        method = method.upper()
        names = re.findall(r"{(\w+)}", path)
        pattern = (
            "^" + re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", re.escape(path).replace(r"\{", "{").replace(r"\}", "}")) + "$"
        )
        for r in self.routes:
            if r.method == method and r.template == path:
                raise ValueError(f"route {method} {path} is already registered")
        validator = None
        schema = (
            (((openapi or {}).get("requestBody") or {}).get("content") or {}).get("application/json", {}).get("schema")
        )
        if schema is not None:
            validator = jsonschema.Draft202012Validator(self._resolve(schema))
        self.routes.append(
            Route(
                method,
                path,
                re.compile(pattern),
                names,
                handler,
                auth,
                openapi,
                validator,
                0 if inline else max_body,
                max_body_setting,
                inline,
            )
        )

    def add_schema(self, name: str, schema: dict[str, Any]) -> None:
        """Adds ``#/components/schemas/<name>`` to the document (for $ref in operations)."""
        self.components[name] = schema

    def _resolve(self, schema: Any) -> Any:
        """Inlines ``#/components/schemas`` references so jsonschema validates standalone."""
        if isinstance(schema, dict):
            ref = schema.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                return self._resolve(self.components[ref.rsplit("/", 1)[1]])
            return {k: self._resolve(v) for k, v in schema.items()}
        if isinstance(schema, list):
            return [self._resolve(v) for v in schema]
        return schema

    def openapi_document(self) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        for r in self.routes:
            if r.openapi is None:
                continue
            op = dict(r.openapi)
            if self._needs_auth(r):
                op.setdefault("security", [{"bearer": []}])
                op.setdefault("responses", {}).setdefault("401", {"description": "missing or wrong bearer token"})
            paths.setdefault(r.template, {})[r.method.lower()] = op
        return {
            "openapi": "3.1.0",
            "info": self.info,
            "paths": paths,
            "components": {
                "schemas": self.components,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
        }

    def _needs_auth(self, r: Route) -> bool:
        return r.auth is not False

    def _check_auth(self, r: Route, req: Request) -> None:
        if r.auth is False:
            return
        check = self.default_auth if r.auth is None or r.auth is True else r.auth
        if not check(req):
            raise HttpError(
                401,
                "missing or wrong credentials for this route",
                "Authorization",
                {"WWW-Authenticate": 'Bearer realm="gpuwarden"'},
            )

    def _match(self, req: Request) -> tuple[Route, dict[str, str]]:
        """The route for ``req`` (404, 405 otherwise) with its raw path parameters."""
        allowed = []
        for r in self.routes:
            m = r.regex.match(req.path)
            if not m:
                continue
            if r.method != req.method and not (r.method == "GET" and req.method == "HEAD"):
                allowed.append(r.method)
                continue
            return r, {k: unquote(v) for k, v in m.groupdict().items()}
        if allowed:
            raise HttpError(
                405,
                f"{req.method} not allowed on {req.path}; use {', '.join(sorted(set(allowed)))}",
                headers={"Allow": ", ".join(sorted(set(allowed)))},
            )
        raise HttpError(404, f"no route for {req.path}")

    def dispatch(self, req: Request) -> Response:
        """Routes, authenticates, validates and handles a whole request (tests call it directly;
        the listener splits it into ``admit`` and ``handle``)."""
        try:
            route, raw = self._match(req)
            self._check_auth(route, req)
        except HttpError as exc:
            return _error(exc)
        return self._run(route, raw, req)

    def _run(self, r: Route, raw: dict[str, str], req: Request) -> Response:
        try:
            req.params = self._params(r, raw)
            body_optional = not ((r.openapi or {}).get("requestBody") or {}).get("required", False)
            if r.validator is not None and not (body_optional and not req.body.strip()):
                self._validate(r.validator, req.json())
            return r.handler(req)
        except HttpError as exc:
            return _error(exc)
        except SchedulerError as exc:
            return Response(exc.status, {"error": exc.message, "field": exc.field})
        except DatabaseFull as exc:
            # Nothing was stored (the transaction rolled back): the caller may retry once there is room.
            log.error("%s %s: %s", req.method, req.path, exc)
            return Response(503, {"error": str(exc), "field": None}, headers={"Retry-After": "30"})
        except Exception:
            log.exception("%s %s failed", req.method, req.path)
            return Response(500, {"error": "internal error; see the agent's log", "field": None})

    # ------------------------------------------------------------ gpuwarden.listener.Endpoint
    def admit(self, head: Head) -> Admit | Reply:
        """Route and credentials from the headers alone: a caller without the route's credential
        never gets its body read."""
        req = _request(head, b"")
        try:
            route, raw = self._match(req)
            self._check_auth(route, req)
        except HttpError as exc:
            return _reply(_error(exc))
        if route.inline and "content-length" not in head.headers and "transfer-encoding" not in head.headers:
            return _reply(self._run(route, raw, req))
        return Admit(route.max_body, (route, raw), route.max_body_setting)

    def handle(self, head: Head, body: bytes, context: Any) -> Reply:
        route, raw = context
        return _reply(self._run(route, raw, _request(head, body)))

    def _params(self, r: Route, raw: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = dict(raw)
        for p in (r.openapi or {}).get("parameters", []):
            if p.get("in") == "path" and p["name"] in raw and p.get("schema", {}).get("type") == "integer":
                v = raw[p["name"]]
                if not re.fullmatch(r"-?\d{1,18}", v):
                    raise HttpError(400, f"{p['name']} must be an integer, got {v[:40]!r}", p["name"])
                out[p["name"]] = int(v)
        return out

    def _validate(self, validator: jsonschema.Draft202012Validator, body: Any) -> None:
        err = jsonschema.exceptions.best_match(validator.iter_errors(body))
        if err is None:
            return
        path = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", err.message)
            path = ".".join(filter(None, [path, missing[0] if missing else ""]))
        elif err.validator == "additionalProperties":
            extra = re.findall(r"'([^']+)' was unexpected", err.message)
            path = ".".join(filter(None, [path, extra[0] if extra else ""]))
        if err.validator in _BOUNDS:  # jsonschema's message repeats the value, which may be huge
            msg = f"{_BOUNDS[err.validator]} {err.validator_value}"
        else:
            msg = err.message if len(err.message) < 300 else err.message[:300] + "..."
        raise HttpError(400, f"{path or 'body'}: {msg}", path or "body")

    # -------------------------------------------------------------------------- serving
    def serve(self, host: str, port: int, tls: ReloadingContext | None = None, limits: Limits = Limits()) -> Listener:
        """Starts serving in a background thread; returns the listener (``port`` has the port).
        With ``tls`` it serves HTTPS only."""
        self._listener = Listener(self, host, port, name="agent-http", limits=limits, tls=tls).start()
        return self._listener

    def shutdown(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


def _error(exc: HttpError) -> Response:
    return Response(exc.status, {"error": exc.message, "field": exc.field}, headers=exc.headers)


def _request(head: Head, body: bytes) -> Request:
    return Request(head.method, head.path, head.headers, parse_qs(head.query, keep_blank_values=True), body)


def _reply(resp: Response) -> Reply:
    # HEAD keeps the body here: uvicorn sends its Content-Length and drops the bytes.
    return Reply(resp.status, resp.encode(), resp.content_type, resp.headers)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(status, body)
