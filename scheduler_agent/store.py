"""The agent's SQLite file: one connection, WAL, per-component versioned migrations.

Seam for other components (remediation, predictor): call
``db.migrate("remediation", [SQL_V1, SQL_V2, ...])`` once at start-up. Migration *i* (1-based)
runs at most once per database file, inside one transaction together with its row in
``schema_migrations(component, version)``, so a kill in the middle leaves either the old or the
new schema, never half of one. Never edit a released migration: append a new one.

``Database`` is shared by every component in the process. Writers take ``db.lock`` (an RLock)
for the whole read-modify-write and commit before they return: ``with db.transaction() as c:``
does both. WAL with ``synchronous=NORMAL`` survives a killed process (kill -9) without losing a
committed transaction; ``synchronous=FULL`` (config ``database.synchronous``) also survives
power loss at the price of an fsync per commit.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

Migration = Union[str, Callable[[sqlite3.Connection], None]]

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at REAL NOT NULL DEFAULT (strftime('%s','now')),
    PRIMARY KEY (component, version)
)
"""


class StoreError(Exception):
    """The database file cannot be opened or migrated; the message names the file and step."""


class Database:
    """One SQLite file opened in WAL mode, shared by the agent's components."""

    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so a transaction spans
            # exactly what the caller groups, and DDL is transactional too.
            self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if self.path != ":memory:" and str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: could not switch to WAL (journal_mode={mode})")
            if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
                raise StoreError(f"database.synchronous: {synchronous!r} is not NORMAL, FULL or EXTRA")
            self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self.conn.execute(_BOOTSTRAP)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open database: {exc}") from exc
        self.lock = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Holds ``lock`` and one transaction; nested use joins the outer transaction."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self.conn.execute("ROLLBACK")
                raise
            self._depth = 0
            self.conn.execute("COMMIT")

    def applied(self, component: str) -> set[int]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT version FROM schema_migrations WHERE component=?", (component,)).fetchall()
        return {int(r[0]) for r in rows}

    def migrate(self, component: str, migrations: Sequence[Migration]) -> int:
        """Applies ``component``'s migrations not applied yet; returns the schema version now.

        A migration is SQL (one or more statements) or a callable taking the connection.
        """
        done = self.applied(component)
        newer = [v for v in done if v > len(migrations)]
        if newer:
            raise StoreError(f"{self.path}: component {component!r} is at version {max(newer)} but this "
                             f"build knows only {len(migrations)}: run the newer gpuwarden or restore a backup")
        for version, step in enumerate(migrations, start=1):
            if version in done:
                continue
            try:
                with self.transaction() as c:
                    if callable(step):
                        step(c)
                    else:
                        for stmt in _statements(step):
                            c.execute(stmt)
                    c.execute("INSERT INTO schema_migrations(component, version) VALUES (?, ?)",
                              (component, version))
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: migration {component} v{version} failed: {exc}") from exc
        return len(migrations)

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def _statements(sql: str) -> list[str]:
    """Splits a migration script into statements (sqlite3's execute runs only one)."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
