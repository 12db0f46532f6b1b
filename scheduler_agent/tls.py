"""Optional TLS for the agent's HTTP server (``web.tls`` in the agent's config).

The settings follow Prometheus' web config (``tls_server_config``) in its simplest useful form:
``cert_file`` and ``key_file`` (PEM; the cert file may hold the chain), and ``client_ca_file``
which, when set, makes every client present a certificate signed by one of those CAs
(Prometheus' ``client_auth_type: RequireAndVerifyClientCert``). TLS 1.2 is the minimum.

Files are loaded at start-up: a file that is missing, unreadable or not what it should be, or a
certificate that has expired or is not valid yet, stops the agent with an error naming the field
and the file, never later on the first request. They are then watched like Prometheus'
exporter-toolkit does: a handshake after a file changed (a certificate rotated by cert-manager or
certbot) loads them again, so no restart is needed; a set that does not load (half written, a
key not matching yet, an expired certificate) is logged as an error and the previous one kept
serving until the files change again. The served certificate's expiry is exported
(``gpuwarden_agent_tls_certificate_expiry_timestamp_seconds``) so an alert can warn before it.

The listener (``gpuwarden.listener``) does the handshakes on its event loop, each bounded by its
header deadline, and asks ``ReloadingContext.current()`` for the context at every handshake.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)


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


def validity(cert_file: Path) -> tuple[float, float]:
    """(notBefore, notAfter) of the first certificate in ``cert_file``, as Unix times.

    CPython's own certificate decoder (``_ssl._test_decode_cert``, there since Python 3.0): the
    standard library has no public way to read a certificate file's dates, and this spares a
    dependency on ``cryptography`` for two fields."""
    decoded = ssl._ssl._test_decode_cert(str(cert_file))  # type: ignore[attr-defined]  # private: not in typeshed
    return ssl.cert_time_to_seconds(decoded["notBefore"]), ssl.cert_time_to_seconds(decoded["notAfter"])


def server_context(
    files: TlsFiles, error: Callable[[str, str], Exception], now: Callable[[], float] = time.time
) -> ssl.SSLContext:
    """The server's SSLContext; problems raise ``error(field, message)`` naming the file.

    ``error`` is ``AgentConfig.error`` in the agent, so the message carries the config file,
    its line and the field (``web.tls.key_file``).
    """
    for name, path in (
        ("cert_file", files.cert_file),
        ("key_file", files.key_file),
        ("client_ca_file", files.client_ca_file),
    ):
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
    not_before, not_after = validity(files.cert_file)
    if now() > not_after:
        raise error(
            "web.tls.cert_file",
            f"{files.cert_file} expired on "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(not_after))}: renew it "
            "(clients refuse an expired certificate, Alertmanager's deliveries would fail)",
        )
    if now() < not_before:
        raise error(
            "web.tls.cert_file",
            f"{files.cert_file} is not valid before "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(not_before))}: check "
            "this host's clock or the certificate's dates",
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(files.cert_file), str(files.key_file), password=_no_password)
    except _EncryptedKey:
        raise error(
            "web.tls.key_file",
            f"{files.key_file} is encrypted; the agent needs an unencrypted "
            "key (protect it with file permissions, e.g. chmod 600)",
        ) from None
    except ssl.SSLError as exc:
        why = (
            "does not match the certificate in " + str(files.cert_file)
            if "KEY_VALUES_MISMATCH" in str(exc)
            else "holds no usable PEM private key"
        )
        raise error("web.tls.key_file", f"{files.key_file} {why}: {exc}") from None
    if files.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(files.client_ca_file))
        except ssl.SSLError as exc:
            raise error(
                "web.tls.client_ca_file", f"{files.client_ca_file} holds no usable PEM CA certificate: {exc}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class ReloadingContext:
    """``current()`` is the server's SSLContext, loaded again when one of its files changed."""

    def __init__(self, files: TlsFiles, error: Callable[[str, str], Exception]) -> None:
        self.files, self._error = files, error
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._context = server_context(files, error)  # start-up: errors stop the agent
        self.not_after = validity(files.cert_file)[1]
        self._next_expiry_log = 0.0

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
        if time.time() > self.not_after and time.monotonic() > self._next_expiry_log:
            self._next_expiry_log = time.monotonic() + 3600
            log.error(
                "TLS: the certificate served from %s expired on %s; clients refuse it: renew it "
                "(it is loaded again as soon as the file changes)",
                self.files.cert_file,
                time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.not_after)),
            )
        signature = self._stat()  # three stat() calls per handshake: cheap next to the handshake
        if signature != self._signature:
            with self._lock:
                if signature != self._signature:
                    self._signature = signature
                    try:
                        self._context = server_context(self.files, self._error)
                        self.not_after = validity(self.files.cert_file)[1]
                        log.info("TLS: loaded %s again (a file changed)", self.files.cert_file)
                    except Exception as exc:  # noqa: BLE001 - the config error names field and file
                        log.error("TLS: the changed files do not load, still serving the previous certificate: %s", exc)
        return self._context


class ExpiryCollector:
    """``gpuwarden_agent_tls_certificate_expiry_timestamp_seconds``: when the served certificate
    expires (alert on ``... - time() < 14 * 86400``)."""

    def __init__(self, context: ReloadingContext) -> None:
        self._context = context

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "gpuwarden_agent_tls_certificate_expiry_timestamp_seconds",
            "When the certificate the agent serves expires (notAfter), Unix time.",
            labels=["cert_file"],
        )
        g.add_metric([str(self._context.files.cert_file)], self._context.not_after)
        yield g
