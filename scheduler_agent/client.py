"""A small client for the agent's API (used by the CLI verbs and the benchmarks)."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Client:
    def __init__(
        self, url: str, token: str | None = None, timeout: float = 10.0, context: ssl.SSLContext | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.context = context  # for https://: None trusts the system's CAs

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                doc = json.loads(raw)
                msg = doc.get("error", raw.decode(errors="replace"))
                if doc.get("field"):
                    msg = f"{msg} (field: {doc['field']})"
            except ValueError:
                msg = raw.decode(errors="replace")
            raise ApiError(exc.code, msg) from None
        return json.loads(raw) if raw else None


def add_client_args(p: argparse.ArgumentParser) -> None:
    """The options every verb that talks to a running agent takes (environment variables as defaults)."""
    env = os.environ.get
    p.add_argument("--url", default=env("GPUWARDEN_AGENT_URL", "http://127.0.0.1:9787"))
    p.add_argument("--token-file", default=env("GPUWARDEN_TOKEN_FILE"))
    p.add_argument(
        "--ca-file",
        default=env("GPUWARDEN_CA_FILE"),
        help="CA certificates (PEM) to trust for an https:// agent (default: the system's)",
    )
    p.add_argument(
        "--cert-file",
        default=env("GPUWARDEN_CERT_FILE"),
        help="client certificate (PEM), for an agent with web.tls.client_ca_file",
    )
    p.add_argument("--key-file", default=env("GPUWARDEN_KEY_FILE"), help="the client certificate's key (PEM)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")


def _client(args: argparse.Namespace) -> Client:
    """A Client from add_client_args' options; raises ValueError naming the option at fault."""

    def read(option: str, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None

    token = read("--token-file", args.token_file).decode().strip() if args.token_file else None
    context = None
    if args.ca_file or args.cert_file or args.key_file:
        if bool(args.cert_file) != bool(args.key_file):
            raise ValueError("--cert-file and --key-file go together")
        for option, path in (
            ("--ca-file", args.ca_file),
            ("--cert-file", args.cert_file),
            ("--key-file", args.key_file),
        ):
            if path:
                read(option, path)
        try:
            context = ssl.create_default_context(cafile=args.ca_file)
        except ssl.SSLError as exc:
            raise ValueError(f"--ca-file: {args.ca_file} holds no usable PEM certificate: {exc}") from None
        if args.cert_file:
            try:
                context.load_cert_chain(args.cert_file, args.key_file)
            except ssl.SSLError as exc:
                raise ValueError(
                    f"--cert-file/--key-file: {args.cert_file} and {args.key_file} do not load "
                    f"as a certificate and its key: {exc}"
                ) from None
    return Client(args.url, token, context=context)


def run_cli(args: argparse.Namespace, request: Callable[[Client], Any]) -> int:
    """Runs one CLI request against the agent and returns the exit status.

    ``request`` returns the answer to print as JSON, or None when it printed a table itself.
    A token or TLS file that cannot be used exits 2; an API error or an unreachable agent exits 1.
    """
    try:
        client = _client(args)
    except ValueError as exc:
        print(f"gpuwarden-agent: {exc}", file=sys.stderr)
        return 2
    try:
        out = request(client)
    except ApiError as exc:
        hint = (
            ("; pass the operator's token (web.token_file) with --token-file FILE or GPUWARDEN_TOKEN_FILE")
            if exc.status == 401
            else ""
        )
        print(f"gpuwarden-agent: {exc}{hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gpuwarden-agent: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if out is not None:
        print(json.dumps(out, indent=2))
    return 0
