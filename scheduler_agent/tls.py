"""Optional TLS for the agent's HTTP server (``web.tls`` in the agent's config).

The settings follow Prometheus' web config (``tls_server_config``) in its simplest useful form:
``cert_file`` and ``key_file`` (PEM; the cert file may hold the chain), and ``client_ca_file``
which, when set, makes every client present a certificate signed by one of those CAs
(Prometheus' ``client_auth_type: RequireAndVerifyClientCert``). TLS 1.2 is the minimum.

Files are loaded at start-up: a file that is missing, unreadable or not what it should be stops
the agent with an error naming the field and the file, never later on the first request. They
are then watched like Prometheus' exporter-toolkit does: a handshake after a file changed (a
certificate rotated by cert-manager or certbot) loads them again, so no restart is needed; a
set that does not load (half written, a key not matching yet) is logged and the previous one
kept serving until the files change again.

The handshake is done in the connection's own thread (``TLSHTTPServer.finish_request``), with a
time limit, not in ``accept()``: a client that connects and never finishes its handshake would
otherwise hold up every other connection (the listening socket's accept loop is one thread).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

# Long enough for a client on a slow link; short enough that idle half-open connections (port
# scanners, load-balancer probes that only open TCP) do not pile up threads.
HANDSHAKE_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class TlsFiles:
    """Resolved paths of ``web.tls`` (relative paths already resolved against the config file)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key,
    # which hangs a service that has none.
    raise _EncryptedKey()


def server_context(files: TlsFiles, error: Callable[[str, str], Exception]) -> ssl.SSLContext:
    """The server's SSLContext; problems raise ``error(field, message)`` naming the file.

    ``error`` is ``AgentConfig.error`` in the agent, so the message carries the config file,
    its line and the field (``web.tls.key_file``).
    """
    for name, path in (("cert_file", files.cert_file), ("key_file", files.key_file),
                       ("client_ca_file", files.client_ca_file)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise error(f"web.tls.{name}", f"cannot read {path}: {exc.strerror or exc}") from None
    # Load the certificate on its own first (as a trust anchor, which only parses it) so that a
    # bad certificate is blamed on cert_file and a bad or mismatched key on key_file.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(files.cert_file))
    except ssl.SSLError as exc:
        raise error("web.tls.cert_file", f"{files.cert_file} holds no usable PEM certificate: {exc}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(files.cert_file), str(files.key_file), password=_no_password)
    except _EncryptedKey:
        raise error("web.tls.key_file", f"{files.key_file} is encrypted; the agent needs an unencrypted "
                                        "key (protect it with file permissions, e.g. chmod 600)") from None
    except ssl.SSLError as exc:
        why = ("does not match the certificate in " + str(files.cert_file)
               if "KEY_VALUES_MISMATCH" in str(exc) else "holds no usable PEM private key")
        raise error("web.tls.key_file", f"{files.key_file} {why}: {exc}") from None
    if files.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(files.client_ca_file))
        except ssl.SSLError as exc:
            raise error("web.tls.client_ca_file",
                        f"{files.client_ca_file} holds no usable PEM CA certificate: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class ReloadingContext:
    """``current()`` is the server's SSLContext, loaded again when one of its files changed."""

    def __init__(self, files: TlsFiles, error: Callable[[str, str], Exception]) -> None:
        self.files, self._error = files, error
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._context = server_context(files, error)  # start-up: errors stop the agent

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        out: list[tuple[int, int, int] | None] = []
        for path in (self.files.cert_file, self.files.key_file, self.files.client_ca_file):
            try:
                st = os.stat(path) if path is not None else None
            except OSError:
                st = None  # mid-rotation (renamed away): the next change is seen
            out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st is not None else None)
        return tuple(out)

    def current(self) -> ssl.SSLContext:
        signature = self._stat()  # three stat() calls per handshake: cheap next to the handshake
        if signature != self._signature:
            with self._lock:
                if signature != self._signature:
                    self._signature = signature
                    try:
                        self._context = server_context(self.files, self._error)
                        log.info("TLS: loaded %s again (a file changed)", self.files.cert_file)
                    except Exception as exc:  # noqa: BLE001 - the config error names field and file
                        log.error("TLS: the changed files do not load, still serving the previous "
                                  "certificate: %s", exc)
        return self._context


class TLSHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that accepts TCP and does the TLS handshake per connection thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, context: ssl.SSLContext | ReloadingContext,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS) -> None:
        self._context = context
        self.handshake_timeout = handshake_timeout
        super().__init__(address, handler)

    @property
    def tls_context(self) -> ssl.SSLContext:
        c = self._context
        return c.current() if isinstance(c, ReloadingContext) else c

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's thread (ThreadingMixIn.process_request_thread).
        request.settimeout(self.handshake_timeout)
        try:
            conn = self.tls_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            # Plain HTTP on the TLS port, an untrusted or missing client certificate, a timeout.
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            # Back to the plain server's behaviour (blocking reads) once the handshake is done.
            conn.settimeout(None)
            super().finish_request(conn, client_address)
        finally:
            # wrap_socket detached ``request``; the base class's shutdown_request then closes an
            # empty socket object, so the TLS one is closed here.
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()
