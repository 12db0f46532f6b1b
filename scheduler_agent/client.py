"""A small client for the agent's API (used by the CLI verbs and the benchmarks)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_token_file(cls, url: str, token_file: str | None, timeout: float = 10.0) -> "Client":
        token = Path(token_file).read_text().strip() if token_file else None
        return cls(url, token, timeout)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
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


def run_cli(url: str, token_file: str | None, request: Callable[[Client], Any]) -> int:
    """Runs one CLI request against the agent and returns the exit status.

    ``request`` returns the answer to print as JSON, or None when it printed a table itself.
    A token file that cannot be read exits 2; an API error or an unreachable agent exits 1.
    """
    try:
        client = Client.from_token_file(url, token_file)
    except OSError as exc:
        print(f"gpuwarden-agent: --token-file: {exc}", file=sys.stderr)
        return 2
    try:
        out = request(client)
    except ApiError as exc:
        print(f"gpuwarden-agent: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gpuwarden-agent: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if out is not None:
        print(json.dumps(out, indent=2))
    return 0
