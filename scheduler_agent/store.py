"""The agent's SQLite file: one connection factory, WAL, per-component versioned migrations.

Every connection to the file, whoever opens it (the scheduler's ``Database``, remediation's
intake, worker and reader, the Slurm journal), comes from ``connect(path, synchronous)`` and so
has the same settings: WAL, ``foreign_keys=ON``, a 10 s busy timeout, transactions by explicit
BEGIN (``isolation_level=None``), rows as ``sqlite3.Row``. A file it creates is created 0600
(its ``-wal`` and ``-shm`` take the main file's mode: SQLite copies it), since it holds alert
labels and the audit trail.

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

Opening checks what it can before the agent answers anything: the file must be writable (a
read-only file or folder is refused, not discovered at the first alert) and pass
``PRAGMA quick_check`` (a damaged file stops the agent with what to do, instead of a 202 for an
alert that cannot be stored). A failed transaction re-raises *its* error: SQLite rolls back by
itself after some errors (SQLITE_FULL among them), and the ROLLBACK that would then fail with
"cannot rollback - no transaction is active" is not allowed to hide the cause. SQLITE_FULL is
raised as ``DatabaseFull`` ("database full: ...").
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Migration = str | Callable[[sqlite3.Connection], None]

SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT_MS = 10_000
FILE_MODE = 0o600

# Primary result codes (sqlite3.Error.sqlite_errorcode & 0xff).
_SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_CANTOPEN, _SQLITE_FULL, _SQLITE_NOTADB = 8, 11, 14, 13, 26

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


class DatabaseFull(sqlite3.OperationalError):
    """SQLITE_FULL: the disk (or the file's ``max_page_count``) is full. Still an
    ``sqlite3.Error``, so callers that turn those into a retry (the webhook's 503) keep doing so."""


def _code(exc: BaseException) -> int:
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


def explain(exc: sqlite3.Error) -> sqlite3.Error:
    """``exc``, or a ``DatabaseFull`` saying so when it is SQLITE_FULL."""
    if _code(exc) == _SQLITE_FULL and not isinstance(exc, DatabaseFull):
        full = DatabaseFull(f"database full: {exc} (free space on the database's file system)")
        full.sqlite_errorcode = exc.sqlite_errorcode
        full.sqlite_errorname = getattr(exc, "sqlite_errorname", "SQLITE_FULL")
        return full
    return exc


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """Rolls back the open transaction, if SQLite has not already done so; never raises (the
    caller is about to re-raise the error that made the rollback necessary)."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:  # the connection is unusable; the original error matters more
        log.warning("rollback failed: %s", exc)


def run_in_transaction(
    conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], object], begin: str = "BEGIN IMMEDIATE"
) -> object:
    """``body(conn)`` inside ``begin`` ... COMMIT; on any error rolled back (if still open) and
    the *original* error re-raised (SQLITE_FULL as ``DatabaseFull``)."""
    conn.execute(begin)
    try:
        result = body(conn)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        rollback_quietly(conn)
        better = explain(exc)
        if better is exc:
            raise
        raise better from exc
    except BaseException:
        rollback_quietly(conn)
        raise
    return result


def _create_private(path: str) -> None:
    """Creates the database file 0600 if it does not exist yet (never changes an existing one)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def connect(path: str | Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A connection to the agent's database file, set up the same way for every component.

    ``synchronous``: NORMAL (a kill -9 loses nothing committed; a power cut may lose the last
    transactions), FULL (fsync on every commit: what the intake uses, so a 202 survives power
    loss) or EXTRA. Raises ``StoreError`` naming the file when it cannot be opened in WAL mode.
    """
    sync = str(synchronous).upper()
    if sync not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, got {synchronous!r}")
    p = str(path)
    memory = p == ":memory:"
    if not memory:
        _create_private(p)
    conn = sqlite3.connect(p, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if not memory and str(mode).lower() != "wal":
            raise StoreError(f"{p}: could not switch to WAL (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _damaged(path: str, what: str) -> StoreError:
    path = os.path.abspath(path)
    return StoreError(
        f"{path} is damaged ({what}): the agent will not run on it. Stop here and restore the file "
        f"from a backup, or move it aside (with its -wal and -shm files, e.g. `mv {path} "
        f"{path}.damaged`) and start again: the agent then creates a new, empty database (the "
        f"audit trail and job history stay in the moved file)"
    )


def _open_error(path: str, exc: sqlite3.Error) -> StoreError:
    path = os.path.abspath(path)
    code = _code(exc)
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return _damaged(path, str(exc))
    if code == _SQLITE_READONLY:
        return StoreError(
            f"{path}: cannot write the database ({exc}): the agent needs to write the "
            f"file and create {Path(path).name}-wal and -shm next to it; make the file "
            f"and its folder writable by the agent's user, or point database.path "
            f"elsewhere"
        )
    if code == _SQLITE_FULL:
        return StoreError(f"{path}: database full: {exc}: free space on its file system")
    return StoreError(f"{path}: cannot open database: {exc}")


class Database:
    """One SQLite file opened in WAL mode, shared by the agent's components."""

    def __init__(self, path: str | Path, synchronous: str = "NORMAL", check: bool = True) -> None:
        self.path = str(path)
        if synchronous.upper() not in SYNCHRONOUS:
            raise StoreError(f"database.synchronous: {synchronous!r} is not NORMAL, FULL or EXTRA")
        if self.path != ":memory:":
            folder = Path(self.path).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"{os.path.abspath(self.path)}: cannot create its folder "
                    f"{os.path.abspath(folder)}: {exc.strerror or exc}: create it, "
                    f"writable by the agent's user, or point database.path "
                    f"elsewhere"
                ) from None
        try:
            self.conn = connect(self.path, synchronous)
        except OSError as exc:  # the file could not be created (folder not writable, ...)
            raise StoreError(
                f"{os.path.abspath(self.path)}: cannot create the database file: "
                f"{exc.strerror or exc}: make its folder writable by the agent's "
                f"user, or point database.path elsewhere"
            ) from None
        except sqlite3.Error as exc:
            raise _open_error(self.path, exc) from None
        try:
            if check:
                self._check()
            self.conn.execute(_BOOTSTRAP)
            if check:
                self._check_writable()
        except sqlite3.Error as exc:
            self.conn.close()
            raise _open_error(self.path, exc) from None
        except BaseException:
            self.conn.close()
            raise
        self.lock = threading.RLock()
        self._depth = 0

    def _check(self) -> None:
        """Refuses a damaged file now, rather than answering 202 for alerts it cannot keep."""
        rows = self.conn.execute("PRAGMA quick_check(5)").fetchall()
        problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
        if problems:
            raise _damaged(self.path, "PRAGMA quick_check: " + "; ".join(problems)[:500])

    def _check_writable(self) -> None:
        """A read-only file (or folder) opens read-only without a word: prove we can write, now
        rather than at the first alert. The write is rolled back: nothing changes."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("DELETE FROM schema_migrations WHERE 0")
        finally:
            rollback_quietly(self.conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Holds ``lock`` and one transaction; nested use joins the outer transaction.

        On an error the transaction is rolled back (unless SQLite already did) and the original
        error propagates (SQLITE_FULL as ``DatabaseFull``), also when COMMIT itself fails."""
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
                self._depth = 0
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._depth = 0
                rollback_quietly(self.conn)
                better = explain(exc)
                if better is exc:
                    raise
                raise better from exc
            except BaseException:
                self._depth = 0
                rollback_quietly(self.conn)
                raise

    def applied(self, component: str) -> set[int]:
        with self.lock:
            rows = self.conn.execute("SELECT version FROM schema_migrations WHERE component=?", (component,)).fetchall()
        return {int(r[0]) for r in rows}

    def migrate(self, component: str, migrations: Sequence[Migration]) -> int:
        """Applies ``component``'s migrations not applied yet; returns the schema version now.

        A migration is SQL (one or more statements) or a callable taking the connection.
        """
        done = self.applied(component)
        newer = [v for v in done if v > len(migrations)]
        if newer:
            raise StoreError(
                f"{self.path}: component {component!r} is at version {max(newer)} but this "
                f"build knows only {len(migrations)}: run the newer gpuwarden or restore a backup"
            )
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
                    c.execute("INSERT INTO schema_migrations(component, version) VALUES (?, ?)", (component, version))
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


@dataclass(frozen=True)
class Retention:
    """``database.retention``: how long accepted alerts and remediation actions are kept.

    Pruning deletes ``batch_size`` rows per transaction (writers wait for one short batch at
    most) every ``interval_seconds``, in the remediation worker's idle time (see
    ``remediation.store.prune`` for what is never deleted)."""

    enabled: bool = True
    max_age_seconds: float = 30 * 86400.0
    interval_seconds: float = 3600.0
    batch_size: int = 500
