"""The HTTP listener every gpuwarden server runs on: uvicorn (h11), plus what uvicorn leaves out.

The agent, the exporter, the simulator's control endpoint and ``gpuwarden up``'s notification
sink all serve through ``Listener``. uvicorn parses HTTP/1.1 with h11 (strict framing:
Content-Length must be digits, chunked bodies are decoded, a badly framed request is answered
400 and the connection closed; one that frames its body both ways, which h11 would read as
chunked, is refused here, as RFC 9112 allows, since a proxy in front may read it the other
way), caps a request's headers
(``max_header_bytes``) and closes keep-alive connections that go quiet. It does not bound how
long a client may take to *send* a request: its keep-alive timer restarts on every byte and a
fresh connection has no timer at all (uvicorn issue #157), and it never limits connections,
only concurrent requests. A few hundred clients sending one byte a minute would then hold every
file descriptor the process has. So the protocol class here adds, like nginx's
``client_header_timeout``/``client_body_timeout`` and Go's ``ReadHeaderTimeout``:

- a header deadline from the moment a connection opens (or its previous response ended) to the
  request's last header byte, and a body deadline from there to the last body byte; a client that
  misses one is disconnected (a handler waiting for its body sees a disconnect);
- a connection cap: past ``max_connections`` the oldest connection that is only waiting on its
  client (idle, still sending headers, then still sending a body) is closed to make room, so a
  flood of stalled connections can neither exhaust descriptors nor keep a real client (a
  Prometheus scrape, a health check) out;
- the TLS handshake bounded by the header deadline (asyncio's default is 60 s).

What a request may carry is decided before its body is read: ``Endpoint.admit`` sees the method,
path and headers and either answers at once (401, 404, 405, 413: the body is never used, only
drained a few seconds so the client reads the answer, and the connection is closed) or admits the request with a body limit for it (checked against
Content-Length first, then against what actually arrives, chunked or not). Then
``Endpoint.handle`` runs in a bounded thread pool (handlers are synchronous: SQLite, NVML), off
the event loop, so a slow handler never delays accepting or timing out connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import resource
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 2048  # the kernel's queue of connections not yet accepted
ACCEPT_BATCH = 64  # connections accepted per event-loop turn
LINGER_BYTES = 64 << 20  # a refused body read and dropped before closing (_linger)
LINGER_SECONDS = 5.0  # ... for at most this long


@dataclass(frozen=True)
class Limits:
    """How much time, how many connections and how many bytes a client may take."""

    header_timeout: float = 10.0  # connect (or last response) -> end of the request's headers
    body_timeout: float = 30.0  # end of headers -> end of the body
    idle_timeout: float = 5.0  # keep-alive: a silent connection is closed after this
    max_connections: int = 512  # well under systemd's default of 1,024 open files
    max_header_bytes: int = 16384  # request line and headers together
    threads: int = 8  # handlers running at once; more requests wait their turn


@dataclass
class Head:
    """A request before its body: what ``Endpoint.admit`` decides on."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    client: str = ""


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Admit:
    """Admits a request whose body may be up to ``max_body`` bytes; ``context`` (a route, say)
    is handed to ``Endpoint.handle`` as it is; ``limit_name`` (the setting behind ``max_body``)
    is named in the 413 so the operator knows what to raise."""

    max_body: int
    context: Any = None
    limit_name: str = ""


class Endpoint(Protocol):
    def admit(self, head: Head) -> Admit | Reply:
        """Runs on the event loop before any body byte is read: cheap checks only."""

    def handle(self, head: Head, body: bytes, context: Any) -> Reply:
        """Runs in the listener's thread pool with the whole body."""


def text_reply(status: int, message: str) -> Reply:
    return Reply(status, (message + "\n").encode(), "text/plain; charset=utf-8")


class _DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with header/body deadlines and the connection cap (module doc)."""

    limits: Limits = Limits()  # set on the per-listener subclass
    # Per listener too: the connections waiting on their client, by phase, oldest first (dicts
    # keep insertion order), so the cap finds the one to shed in O(1) however many are open.
    waiting: dict[str, dict[_DeadlineProtocol, None]] = {"lingering": {}, "headers": {}, "body": {}}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's own
        self._raw = transport
        self._linger_left = 0
        # A stand-in with the Transport's interface (it delegates every other attribute).
        super().connection_made(cast(asyncio.Transport, _LingeringTransport(transport, self)))
        self._timer: asyncio.TimerHandle | None = None
        self._arm("headers", self.limits.header_timeout)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == "lingering":
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self._close_now()
            return
        super().data_received(data)
        self._follow()

    def eof_received(self) -> None:
        if self._phase == "lingering":
            self._close_now()

    # -- lingering close (nginx's lingering_close)
    def _linger(self) -> None:
        """uvicorn closes the connection after an answer given before the body was read (401,
        413). Closing a socket with unread bytes makes the kernel send a reset, which can reach
        the client before the answer: it would see "connection reset" instead of the status that
        says what to do (and Alertmanager would retry a 413 it never read). So the answer goes
        out, the rest of the body is read and dropped (LINGER_BYTES at most, LINGER_SECONDS at
        most), then the connection is closed."""
        self._disarm()
        self._enter("lingering")
        self._linger_left = LINGER_BYTES
        self._timer = self.loop.call_later(LINGER_SECONDS, self._close_now)
        self._raw.resume_reading()

    def _close_now(self) -> None:
        self._disarm()
        self._raw.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm("headers", self.limits.header_timeout)
            self._follow()  # a pipelined request may already be complete

    # -- deadlines
    def _follow(self) -> None:
        state = self.conn.their_state
        if state is h11.SEND_BODY and self._phase == "headers":
            self._arm("body", self.limits.body_timeout)
        elif state is not h11.IDLE and state is not h11.SEND_BODY:
            self._disarm()  # the whole request is in: the handler's time is not the client's

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._enter(phase)
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
        self._timer = None
        self._enter("handling")

    def _enter(self, phase: str) -> None:
        """Moves the connection to ``phase``'s queue, as its newest member."""
        left = self.waiting.get(getattr(self, "_phase", "handling"))
        if left is not None:
            left.pop(self, None)
        self._phase = phase
        if phase in self.waiting:
            self.waiting[phase][self] = None

    def _expired(self) -> None:
        log.debug("closing %s: request %s not received within the deadline", self.client, self._phase)
        self._close_now()

    def shutdown(self) -> None:
        # uvicorn's graceful shutdown waits for every request in progress; one whose client is
        # still sending (or stalling) has nothing to wait for: close it now.
        if self._phase in ("headers", "body", "lingering"):
            self._close_now()
        else:
            super().shutdown()

    # -- connection cap
    def _make_room(self) -> None:
        # The oldest connection lingering after its answer, else still sending (or stalling on)
        # its headers, else its body: a request being handled is never the one dropped.
        victim = next(
            (c for phase in ("lingering", "headers", "body") for c in self.waiting[phase] if c is not self), self
        )
        log.debug("connection cap (%d) reached: closing %s", self.limits.max_connections, victim.client)
        victim._close_now()


class _LingeringTransport:
    """The transport as uvicorn sees it: ``close()`` lingers while the client is still sending
    its body (``_DeadlineProtocol._linger``); everything else is the real transport's."""

    def __init__(self, transport: asyncio.Transport, protocol: _DeadlineProtocol) -> None:
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._transport.is_closing() or self._protocol._phase == "lingering"

    def close(self) -> None:
        if self._protocol.conn.their_state is h11.SEND_BODY and not self.is_closing():
            self._protocol._linger()
        elif self._protocol._phase != "lingering":
            self._transport.close()


class _Loop(asyncio.SelectorEventLoop):
    """An event loop whose TLS handshakes get the listener's header deadline (uvicorn does not
    pass ``ssl_handshake_timeout`` and asyncio's default is 60 s)."""

    handshake_timeout: float = 10.0

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self.handshake_timeout)
        return await super().create_server(*args, **kwargs)


class _Asgi:
    """The ASGI application uvicorn calls: admit, read the body within its limit, handle."""

    def __init__(self, endpoint: Endpoint, pool: ThreadPoolExecutor) -> None:
        self.endpoint, self.pool = endpoint, pool

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not offered
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name, value = k.decode("latin-1"), v.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        client = scope.get("client")
        head = Head(
            scope["method"],
            scope["path"],
            scope["query_string"].decode("latin-1"),
            headers,
            f"{client[0]}:{client[1]}" if client else "",
        )
        if "content-length" in headers and "transfer-encoding" in headers:
            await self._send(send, text_reply(400, "Content-Length and Transfer-Encoding together"), close=True)
            return
        try:
            decision = self.endpoint.admit(head)
        except Exception:
            log.exception("%s %s: admitting the request failed", head.method, head.path)
            decision = text_reply(500, "internal error; see the server's log")
        if isinstance(decision, Reply):
            await self._send(send, decision, close=_has_body(headers))
            return
        declared = headers.get("content-length")
        if declared is not None and int(declared) > decision.max_body:  # h11 checked it is digits
            await self._send(send, _too_large(decision), close=True)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left or missed its body deadline: nothing to answer
            size += len(message.get("body", b""))
            if size > decision.max_body:  # a chunked body past its limit
                await self._send(send, _too_large(decision), close=True)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self.pool, self._handle, head, b"".join(chunks), decision.context)
        await self._send(send, reply)

    def _handle(self, head: Head, body: bytes, context: Any) -> Reply:
        try:
            return self.endpoint.handle(head, body, context)
        except Exception:
            log.exception("%s %s failed", head.method, head.path)
            return text_reply(500, "internal error; see the server's log")

    @staticmethod
    async def _send(send: Callable[..., Any], reply: Reply, close: bool = False) -> None:
        headers = [(b"content-type", reply.content_type.encode()), (b"content-length", str(len(reply.body)).encode())]
        headers += [(k.lower().encode(), v.encode("latin-1", "replace")) for k, v in reply.headers.items()]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})


def _has_body(headers: dict[str, str]) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def _too_large(admit: Admit) -> Reply:
    setting = f" ({admit.limit_name})" if admit.limit_name else ""
    message = f"request body over the limit of {admit.max_body} bytes{setting}"
    return Reply(413, json.dumps({"error": message, "field": "body"}).encode())


class Listener:
    """Serves ``endpoint`` on ``host:port`` (port 0 picks a free one) in a background thread.

    ``tls``: an ``ssl.SSLContext``, or an object whose ``current()`` returns the context to use
    for each new handshake (``scheduler_agent.tls.ReloadingContext``: renewed certificates are
    served without a restart).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        host: str,
        port: int,
        *,
        name: str = "http",
        limits: Limits = Limits(),
        tls: Any = None,
    ) -> None:
        limits = _within_open_files(limits, name)
        self.name, self.limits = name, limits
        self._pool = ThreadPoolExecutor(limits.threads, thread_name_prefix=f"{name}-handler")
        protocol = type(
            "Protocol",
            (_DeadlineProtocol,),
            {"limits": limits, "waiting": {"lingering": {}, "headers": {}, "body": {}}},
        )
        self._config = uvicorn.Config(
            _Asgi(endpoint, self._pool),
            http=protocol,
            lifespan="off",
            log_config=None,
            # error, not warning: uvicorn logs every malformed request at WARNING, which would
            # let any client fill the log.
            log_level="error",
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=max(1, round(limits.idle_timeout)),
            timeout_graceful_shutdown=5,
            h11_max_incomplete_event_size=limits.max_header_bytes,
            # asyncio accepts up to `backlog` connections per loop turn before any of them is
            # set up (and can be shed by the cap): a small batch keeps a flood from taking every
            # descriptor at once. The kernel's queue is set back to 2048 once serving (_serve).
            backlog=ACCEPT_BATCH,
        )
        self._config.load()
        self._config.ssl = _tls_context(tls)
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it every response's body waits for the client's delayed ACK (40 ms on Linux).
        self._sock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
        self._sock.listen(LISTEN_BACKLOG)
        self.host, self.port = self._sock.getsockname()[:2]
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def tls(self) -> bool:
        return self._config.ssl is not None

    def start(self) -> Listener:
        ready = threading.Event()

        def run() -> None:
            loop = _Loop()
            loop.handshake_timeout = self.limits.header_timeout
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # noqa: BLE001 - reported by start()/stop()
                self._error = exc
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"{self.name}: the HTTP listener did not start: {self._error}")
        return self

    async def _serve(self, ready: threading.Event) -> None:
        # uvicorn's own startup and shutdown (as Server._serve does them), on our socket. In
        # between we wait on an event stop() sets, not on uvicorn's main_loop, which polls
        # should_exit every 0.1 s: a test suite starts and stops hundreds of these.
        self._server.lifespan = self._config.lifespan_class(self._config)
        await self._server.startup(sockets=[self._sock])
        self._sock.listen(LISTEN_BACKLOG)  # startup listened with ACCEPT_BATCH; see __init__
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        ready.set()
        await self._stopping.wait()
        await self._shutdown()

    async def _shutdown(self, grace: float = 5.0) -> None:
        """uvicorn's Server.shutdown without its fixed 0.1 s sleeps: stop accepting, close idle and
        half-sent connections (``_DeadlineProtocol.shutdown``), let requests being handled finish
        within ``grace``, then cancel what is left."""
        for server in self._server.servers:
            server.close()
        state = self._server.server_state
        for connection in list(state.connections):
            connection.shutdown()
        deadline = asyncio.get_running_loop().time() + grace
        while (state.connections or state.tasks) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        for task in list(state.tasks):
            task.cancel()
        for server in self._server.servers:
            await server.wait_closed()

    def serve_forever(self) -> None:
        """Runs until ``stop()`` (from another thread or a signal handler)."""
        self.start()
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:
                pass  # the loop closed meanwhile: the thread is ending on its own
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sock.close()


def _within_open_files(limits: Limits, name: str) -> Limits:
    """``limits`` with the connection cap lowered to what the open-file limit leaves (a batch
    being accepted and ~128 descriptors for the database, logs and clients), so that the cap,
    not EMFILE, is what a flood meets."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = soft - ACCEPT_BATCH - 128
    if soft != resource.RLIM_INFINITY and limits.max_connections > room:
        log.warning(
            "%s: max_connections %d lowered to %d for an open-file limit of %d (raise LimitNOFILE to allow more)",
            name,
            limits.max_connections,
            max(room, 16),
            soft,
        )
        return dataclasses.replace(limits, max_connections=max(room, 16))
    return limits


def _tls_context(tls: Any) -> ssl.SSLContext | None:
    if tls is None or isinstance(tls, ssl.SSLContext):
        return tls
    first: ssl.SSLContext = tls.current()

    def pick(obj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        # Called in every handshake (with server_name None when the client sent no SNI): serve
        # the certificate loaded most recently.
        current = tls.current()
        if current is not ctx:
            obj.context = current

    first.sni_callback = pick
    return first
