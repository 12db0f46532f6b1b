"""The agent's HTTP server: a small router other packages extend, bearer auth, OpenAPI.

Seam::

    app.add_route("POST", "/webhook/alertmanager", handler, auth=BearerAuth(token_file),
                  openapi={...operation object...})

``handler(req: Request) -> Response``. ``{name}`` path segments land in ``req.params`` (converted
to the type the operation's ``parameters`` declare). ``auth``: ``None`` (default) requires the
app's bearer token for every method that changes something (anything but GET/HEAD) and leaves
reads open; ``True`` requires it always; ``False`` never; or any ``Callable[[Request], bool]``
(e.g. ``BearerAuth(other_token_file)``). The ``openapi`` operation object goes into the document
at /api/v1/openapi.json, and when it has a JSON ``requestBody`` schema the router validates the
body with it before the handler runs: the document *is* the validation, so they cannot drift.

Errors: bad input is answered 4xx with ``{"error": message, "field": name}``; handlers raise
``models.SchedulerError`` subclasses (or ``HttpError``) and the router maps them. Anything else
a handler raises is a bug: 500, logged with its traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Union
from urllib.parse import parse_qs, unquote, urlsplit

import jsonschema

from .models import SchedulerError
from .tls import ReloadingContext, TLSHTTPServer

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20


class HttpError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]          # lower-cased names
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
                self._json = json.loads(self.body)
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
        auth = self.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return None


@dataclass
class Response:
    status: int = 200
    body: Any = None                  # JSON-able, or bytes with content_type set
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if self.body is None:
            return b""
        return json.dumps(self.body).encode()


Handler = Callable[[Request], Response]
AuthCheck = Union[None, bool, Callable[[Request], bool]]


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
        return got is not None and hmac.compare_digest(got.encode(), self._token)


@dataclass
class Route:
    method: str
    template: str
    regex: re.Pattern
    names: list[str]
    handler: Handler
    auth: AuthCheck
    openapi: dict | None
    validator: jsonschema.Draft202012Validator | None


class App:
    """Routes, auth and the OpenAPI document; ``serve`` puts it behind a ThreadingHTTPServer."""

    def __init__(self, auth: Callable[[Request], bool] | None, title: str = "gpuwarden agent",
                 version: str = "0.1.0") -> None:
        self.default_auth = auth
        self.routes: list[Route] = []
        self.components: dict[str, dict] = {}
        self.info = {"title": title, "version": version}
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------------- routing
    def add_route(self, method: str, path: str, handler: Handler, *, auth: AuthCheck = None,
                  openapi: dict | None = None) -> None:
        method = method.upper()
        names = re.findall(r"{(\w+)}", path)
        pattern = "^" + re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", re.escape(path).replace(r"\{", "{").replace(r"\}", "}")) + "$"
        for r in self.routes:
            if r.method == method and r.template == path:
                raise ValueError(f"route {method} {path} is already registered")
        validator = None
        schema = (((openapi or {}).get("requestBody") or {}).get("content") or {}).get(
            "application/json", {}).get("schema")
        if schema is not None:
            validator = jsonschema.Draft202012Validator(self._resolve(schema))
        self.routes.append(Route(method, path, re.compile(pattern), names, handler, auth, openapi, validator))

    def add_schema(self, name: str, schema: dict) -> None:
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

    def openapi_document(self) -> dict:
        paths: dict[str, dict] = {}
        for r in self.routes:
            if r.openapi is None:
                continue
            op = dict(r.openapi)
            if self._needs_auth(r):
                op.setdefault("security", [{"bearer": []}])
                op.setdefault("responses", {}).setdefault("401", {"description": "missing or wrong bearer token"})
            paths.setdefault(r.template, {})[r.method.lower()] = op
        return {
            "openapi": "3.1.0", "info": self.info, "paths": paths,
            "components": {"schemas": self.components,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        }

    def _needs_auth(self, r: Route) -> bool:
        if r.auth is None:
            return r.method not in ("GET", "HEAD") and self.default_auth is not None
        return r.auth is not False

    def _check_auth(self, r: Route, req: Request) -> None:
        if r.auth is False:
            return
        if r.auth is None:
            if r.method in ("GET", "HEAD") or self.default_auth is None:
                return
            check = self.default_auth
        elif r.auth is True:
            check = self.default_auth
            if check is None:
                return
        else:
            check = r.auth
        if not check(req):
            raise HttpError(401, "missing or wrong bearer token", "Authorization",
                            {"WWW-Authenticate": 'Bearer realm="gpuwarden"'})

    def dispatch(self, req: Request) -> Response:
        try:
            allowed = []
            for r in self.routes:
                m = r.regex.match(req.path)
                if not m:
                    continue
                if r.method != req.method and not (r.method == "GET" and req.method == "HEAD"):
                    allowed.append(r.method)
                    continue
                self._check_auth(r, req)
                req.params = self._params(r, {k: unquote(v) for k, v in m.groupdict().items()})
                if r.validator is not None:
                    self._validate(r, req.json())
                return r.handler(req)
            if allowed:
                raise HttpError(405, f"{req.method} not allowed on {req.path}; use {', '.join(sorted(set(allowed)))}",
                                headers={"Allow": ", ".join(sorted(set(allowed)))})
            raise HttpError(404, f"no route for {req.path}")
        except HttpError as exc:
            return Response(exc.status, {"error": exc.message, "field": exc.field}, headers=exc.headers)
        except SchedulerError as exc:
            return Response(exc.status, {"error": exc.message, "field": exc.field})
        except Exception:  # noqa: BLE001 - a handler bug: answer 500 and keep serving
            log.exception("%s %s failed", req.method, req.path)
            return Response(500, {"error": "internal error; see the agent's log", "field": None})

    def _params(self, r: Route, raw: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = dict(raw)
        for p in (r.openapi or {}).get("parameters", []):
            if p.get("in") == "path" and p["name"] in raw and p.get("schema", {}).get("type") == "integer":
                v = raw[p["name"]]
                if not re.fullmatch(r"-?\d{1,18}", v):
                    raise HttpError(400, f"{p['name']} must be an integer, got {v[:40]!r}", p["name"])
                out[p["name"]] = int(v)
        return out

    def _validate(self, r: Route, body: Any) -> None:
        err = jsonschema.exceptions.best_match(r.validator.iter_errors(body))
        if err is None:
            return
        path = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", err.message)
            path = ".".join(filter(None, [path, missing[0] if missing else ""]))
        elif err.validator == "additionalProperties":
            extra = re.findall(r"'([^']+)' was unexpected", err.message)
            path = ".".join(filter(None, [path, extra[0] if extra else ""]))
        msg = err.message if len(err.message) < 300 else err.message[:300] + "..."
        raise HttpError(400, f"{path or 'body'}: {msg}", path or "body")

    # -------------------------------------------------------------------------- serving
    def serve(self, host: str, port: int, tls: ssl.SSLContext | ReloadingContext | None = None) -> ThreadingHTTPServer:
        """Starts serving in a daemon thread; returns the server (``server_address`` has the port).

        With ``tls`` (an SSLContext, or a ``tls.ReloadingContext``) it serves HTTPS only, handshaking per connection.
        """
        app = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes; with Nagle on, the body waits for the
            # client's delayed ACK (40 ms on Linux) on every keep-alive request.
            disable_nagle_algorithm = True
            server_version = "gpuwarden-agent"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s " + fmt, self.address_string(), *args)

            def _handle(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if length < 0 or length > MAX_BODY:
                    resp = Response(413 if length > MAX_BODY else 400,
                                    {"error": f"Content-Length must be 0-{MAX_BODY}", "field": "Content-Length"})
                    self.close_connection = True
                    body = b""
                else:
                    body = self.rfile.read(length) if length else b""
                    url = urlsplit(self.path)
                    req = Request(self.command, url.path, {k.lower(): v for k, v in self.headers.items()},
                                  parse_qs(url.query, keep_blank_values=True), body)
                    resp = app.dispatch(req)
                data = resp.encode()
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        server = ThreadingHTTPServer((host, port), _H) if tls is None else TLSHTTPServer((host, port), _H, tls)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        return server

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def json_response(body: Any, status: int = 200) -> Response:
    return Response(status, body)
