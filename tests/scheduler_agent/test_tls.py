"""web.tls: the real agent over HTTPS (webhook, health, client certificates), start-up errors that
name the field and the file, and a stalled handshake that holds up nobody else.

Certificates are made per test run with the ``openssl`` CLI (a throwaway CA, a server cert for
127.0.0.1, a client cert), so nothing secret is checked in.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpuwarden.listener import Limits
from gpuwarden.scheduler_agent.config import ConfigError, load
from gpuwarden.scheduler_agent.tls import server_context, validity
from gpuwarden.scheduler_agent.web import App, Response
from tests.helpers import WEBHOOK_TOKEN, console_script, free_port, require_binary, wait_until, write_agent_config

TOKEN = "tls-test-token"


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_key: Path  # a valid key that belongs to no certificate here


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run([require_binary("openssl"), *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"openssl {' '.join(args)}: {proc.stderr}"


def _key(name: str, d: Path) -> Path:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=d)
    return d / name


def _issue(name: str, cn: str, ext: str, d: Path) -> tuple[Path, Path]:
    key = _key(f"{name}.key", d)
    _openssl("req", "-new", "-key", key.name, "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=d,
    )
    return d / f"{name}.crt", key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _key("ca.key", d)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=gpuwarden test CA",
        "-days",
        "2",
        "-out",
        "ca.crt",
        cwd=d,
    )
    server_cert, server_key = _issue(
        "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n", d
    )
    client_cert, client_key = _issue("client", "alertmanager", "extendedKeyUsage=clientAuth\n", d)
    return Pki(d / "ca.crt", server_cert, server_key, client_cert, client_key, _key("other.key", d))


def _tls_yaml(pki: Pki, client_ca: bool = False, key: Path | None = None) -> str:
    lines = f"  tls:\n    cert_file: {pki.server_cert}\n    key_file: {key or pki.server_key}\n"
    if client_ca:
        lines += f"    client_ca_file: {pki.ca}\n"
    return lines


def _config(tmp_path: Path, port: int, tls: str) -> Path:
    cfg = write_agent_config(tmp_path, port, TOKEN)
    # write_agent_config ends web: with token_file; the tls: block goes right under it.
    text = cfg.read_text().replace("  token_file: token\n", "  token_file: token\n" + tls, 1)
    cfg.write_text(text)
    return cfg


def _client_context(pki: Pki, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


def _webhook_body() -> bytes:
    alert = {
        "status": "firing",
        "labels": {
            "alertname": "THERMAL_CRITICAL",
            "rule": "THERMAL_CRITICAL",
            "severity": "critical",
            "action": "notify",
            "uuid": "GPU-n0-0",
            "gpu": "0",
            "instance": "n0:9786",
        },
        "annotations": {},
        "startsAt": "2024-05-01T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": "fp-tls",
    }
    return json.dumps(
        {
            "version": "4",
            "groupKey": "{}:{}",
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "gpuwarden-agent",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://am:9093",
            "alerts": [alert],
        }
    ).encode()


def _request(
    url: str, ctx: ssl.SSLContext | None, data: bytes | None = None, token: str | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _start(spawn, tmp_path: Path, tls: str) -> str:
    port = free_port()
    cfg = _config(tmp_path, port, tls)
    proc = spawn([console_script("gpuwarden-agent"), "serve", "--config", str(cfg)], name="agent")
    base = f"https://127.0.0.1:{port}"

    def listening() -> bool:
        assert proc.alive(), proc.output()
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    wait_until(listening, timeout=20, what="the agent to listen")
    return base


def test_webhook_and_health_over_https_and_plain_http_is_refused(tmp_path: Path, spawn, pki: Pki) -> None:
    base = _start(spawn, tmp_path, _tls_yaml(pki))
    ctx = _client_context(pki)
    # A client that opens TCP and never sends a ClientHello must not hold up anyone else.
    stalled = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    try:
        t0 = time.monotonic()
        assert _request(base + "/healthz", ctx) == (200, b"ok\n")
        assert time.monotonic() - t0 < 3
        status, body = _request(base + "/webhook/alertmanager", ctx, _webhook_body(), WEBHOOK_TOKEN)
        assert status == 202, body
        assert _request(base + "/webhook/alertmanager", ctx, _webhook_body(), "wrong")[0] == 401
    finally:
        stalled.close()
    # Plain HTTP to the TLS port gets no HTTP answer at all.
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        _request(base.replace("https://", "http://") + "/healthz", None)
    # The server's certificate is checked: a client that does not trust the CA refuses it.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _request(base + "/healthz", ssl.create_default_context())


def test_client_ca_file_requires_a_client_certificate(tmp_path: Path, spawn, pki: Pki) -> None:
    base = _start(spawn, tmp_path, _tls_yaml(pki, client_ca=True))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        _request(base + "/healthz", _client_context(pki))
    assert _request(base + "/healthz", _client_context(pki, with_cert=True)) == (200, b"ok\n")
    status, body = _request(
        base + "/webhook/alertmanager", _client_context(pki, with_cert=True), _webhook_body(), WEBHOOK_TOKEN
    )
    assert status == 202, body


def test_bad_key_path_stops_start_up_naming_the_field(tmp_path: Path, pki: Pki) -> None:
    cfg = _config(tmp_path, free_port(), _tls_yaml(pki, key=tmp_path / "missing.key"))
    proc = subprocess.run(
        [console_script("gpuwarden-agent"), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2, proc.stderr
    assert "web.tls.key_file" in proc.stderr and str(tmp_path / "missing.key") in proc.stderr
    assert f"{cfg}:" in proc.stderr and "Traceback" not in proc.stderr
    # Nothing was started: the database is not even created.
    assert not (tmp_path / "agent.db").exists()


def _load_error(tmp_path: Path, tls: str) -> str:
    with pytest.raises(ConfigError) as e:
        cfg = load(_config(tmp_path, free_port(), tls))
        server_context(cfg.tls, cfg.error)
    return str(e.value)


def test_each_bad_file_is_blamed_on_its_own_field(tmp_path: Path, pki: Pki) -> None:
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("not a certificate\n")
    msg = _load_error(tmp_path, f"  tls:\n    cert_file: {not_pem}\n    key_file: {pki.server_key}\n")
    assert "web.tls.cert_file" in msg and str(not_pem) in msg
    msg = _load_error(tmp_path, _tls_yaml(pki, key=pki.other_key))
    assert "web.tls.key_file" in msg and "does not match the certificate" in msg
    msg = _load_error(tmp_path, _tls_yaml(pki, key=not_pem))
    assert "web.tls.key_file" in msg and str(not_pem) in msg
    msg = _load_error(tmp_path, _tls_yaml(pki) + "    client_ca_file: nowhere/ca.pem\n")
    # Relative paths are relative to the config file, like every path in it.
    assert "web.tls.client_ca_file" in msg and str(tmp_path / "nowhere" / "ca.pem") in msg
    msg = _load_error(tmp_path, f"  tls:\n    cert_file: {pki.server_cert}\n")
    assert "web.tls" in msg and "'key_file' is a required property" in msg
    encrypted = tmp_path / "encrypted.key"
    _openssl("pkey", "-in", str(pki.server_key), "-aes256", "-passout", "pass:pw", "-out", str(encrypted), cwd=tmp_path)
    msg = _load_error(tmp_path, _tls_yaml(pki, key=encrypted))
    assert "web.tls.key_file" in msg and "encrypted" in msg


def test_a_stalled_handshake_is_dropped_after_the_timeout(tmp_path: Path, pki: Pki) -> None:
    cfg = load(_config(tmp_path, free_port(), _tls_yaml(pki)))
    ctx = server_context(cfg.tls, cfg.error)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    app = App(lambda req: False)
    app.add_route("GET", "/ping", lambda req: Response(200, {"pong": True}), auth=False)
    server = app.serve("127.0.0.1", 0, ctx, Limits(header_timeout=0.3))  # bounds the handshake too
    try:
        port = server.port
        with socket.create_connection(("127.0.0.1", port)) as stalled:
            stalled.settimeout(5)
            t0 = time.monotonic()
            assert stalled.recv(1) == b""  # closed by the server, not by our 5 s timeout
            assert time.monotonic() - t0 < 3
        # TLS 1.2 is still served (the minimum, asserted above; this OpenSSL's clients refuse to
        # offer anything older, so an older client cannot be tried here).
        tls12 = _client_context(pki)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        assert _request(f"https://127.0.0.1:{port}/ping", tls12) == (200, b'{"pong": true}')
    finally:
        app.shutdown()


@pytest.mark.binaries
def test_a_real_alertmanager_delivers_over_mutual_tls(tmp_path: Path, spawn, pki: Pki) -> None:
    """The receiver snippet we document (http_config.tls_config with ca_file, cert_file, key_file)
    works against Alertmanager 0.25 itself, not only against urllib."""
    base = _start(spawn, tmp_path, _tls_yaml(pki, client_ca=True))
    am_port = free_port()
    am_cfg = tmp_path / "alertmanager.yml"
    am_cfg.write_text(
        json.dumps(
            {
                "route": {"receiver": "gpuwarden-agent", "group_wait": "0s"},
                "receivers": [
                    {
                        "name": "gpuwarden-agent",
                        "webhook_configs": [
                            {
                                "url": base + "/webhook/alertmanager",
                                "send_resolved": True,
                                "max_alerts": 0,
                                "http_config": {
                                    "authorization": {
                                        "type": "Bearer",
                                        "credentials_file": str(tmp_path / "webhook-token"),
                                    },
                                    "tls_config": {
                                        "ca_file": str(pki.ca),
                                        "cert_file": str(pki.client_cert),
                                        "key_file": str(pki.client_key),
                                    },
                                },
                            }
                        ],
                    }
                ],
            }
        )
    )
    am = spawn(
        [
            require_binary("alertmanager"),
            f"--config.file={am_cfg}",
            f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        name="alertmanager",
    )
    labels = {
        "alertname": "THERMAL_CRITICAL",
        "rule": "THERMAL_CRITICAL",
        "severity": "critical",
        "action": "notify",
        "uuid": "GPU-n0-0",
        "gpu": "0",
        "instance": "n0:9786",
    }

    def posted() -> bool:
        assert am.alive(), am.output()
        return (
            _request(f"http://127.0.0.1:{am_port}/api/v2/alerts", None, json.dumps([{"labels": labels}]).encode())[0]
            == 200
        )

    wait_until(posted, timeout=20, what="Alertmanager to take the alert")
    mtls = _client_context(pki, with_cert=True)

    def acted() -> list:
        status, body = _request(base + "/api/v1/actions", mtls, token=TOKEN)
        return [a for a in json.loads(body)["actions"] if a["rule"] == "THERMAL_CRITICAL"] if status == 200 else []

    actions = wait_until(acted, timeout=20, what="the agent to record Alertmanager's webhook over TLS")
    assert actions[0]["uuid"] == "GPU-n0-0" and actions[0]["outcome"] == "recorded"


def _served_serial(port: int, pki: Pki) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with _client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            return conn.getpeercert()["serialNumber"]


def test_a_rotated_certificate_is_served_without_a_restart(tmp_path: Path, spawn, pki: Pki) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    base = _start(spawn, tmp_path, f"  tls:\n    cert_file: {cert}\n    key_file: {key}\n")
    port = int(base.rsplit(":", 1)[1])
    first = _served_serial(port, pki)
    # cert-manager renews: a new certificate and key from the same CA, written over the old.
    new_cert, new_key = _issue(
        "rotated", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n", pki.ca.parent
    )
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    second = _served_serial(port, pki)
    assert second != first
    assert _request(base + "/healthz", _client_context(pki)) == (200, b"ok\n")
    # A rotation that does not load (a key of another certificate) keeps the last good one serving.
    key.write_bytes(pki.other_key.read_bytes())
    assert _served_serial(port, pki) == second
    assert _request(base + "/healthz", _client_context(pki)) == (200, b"ok\n")


def test_the_cli_talks_to_an_agent_that_requires_client_certificates(tmp_path: Path, spawn, pki: Pki) -> None:
    base = _start(spawn, tmp_path, _tls_yaml(pki, client_ca=True))
    agent = console_script("gpuwarden-agent")

    def cli(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [agent, "gpus", "list", "--json", "--url", base, "--token-file", str(tmp_path / "token"), *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )

    ok = cli("--ca-file", str(pki.ca), "--cert-file", str(pki.client_cert), "--key-file", str(pki.client_key))
    assert ok.returncode == 0, ok.stderr
    assert isinstance(json.loads(ok.stdout), list)
    no_cert = cli("--ca-file", str(pki.ca))  # the agent refuses the handshake
    assert no_cert.returncode == 1 and f"cannot reach {base}" in no_cert.stderr
    untrusted = cli()  # the system's CAs do not know our test CA
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    missing = cli("--ca-file", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2 and "--ca-file" in missing.stderr and "nope.pem" in missing.stderr
    half = cli("--ca-file", str(pki.ca), "--cert-file", str(pki.client_cert))
    assert half.returncode == 2 and "--cert-file and --key-file go together" in half.stderr
    mismatched = cli("--ca-file", str(pki.ca), "--cert-file", str(pki.client_cert), "--key-file", str(pki.other_key))
    assert mismatched.returncode == 2 and "--cert-file/--key-file" in mismatched.stderr


def test_an_expired_or_not_yet_valid_certificate_stops_start_up(tmp_path: Path, pki: Pki) -> None:
    """Clients refuse such a certificate, so Alertmanager's deliveries would all fail: an error
    at start naming the field and the date, not a silent outage."""
    cfg = load(_config(tmp_path, free_port(), _tls_yaml(pki)))
    not_before, not_after = validity(cfg.tls.cert_file)
    with pytest.raises(ConfigError, match=r"web\.tls\.cert_file: .* expired on \d{4}-"):
        server_context(cfg.tls, cfg.error, now=lambda: not_after + 1)
    with pytest.raises(ConfigError, match=r"web\.tls\.cert_file: .* not valid before \d{4}-"):
        server_context(cfg.tls, cfg.error, now=lambda: not_before - 1)
    server_context(cfg.tls, cfg.error, now=lambda: (not_before + not_after) / 2)


def test_the_served_certificate_expiry_is_exported(tmp_path: Path, spawn, pki: Pki) -> None:
    base = _start(spawn, tmp_path, _tls_yaml(pki))
    _, not_after = validity(pki.server_cert)
    status, body = _request(base + "/metrics", _client_context(pki))
    line = next(
        x
        for x in body.decode().splitlines()
        if x.startswith("gpuwarden_agent_tls_certificate_expiry_timestamp_seconds{")
    )
    assert status == 200 and float(line.rsplit(" ", 1)[1]) == not_after
