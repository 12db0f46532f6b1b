"""A small client for the agent's API (used by the CLI verbs and the benchmarks)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


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
