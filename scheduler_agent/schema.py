"""The scheduler's tables (component ``scheduler`` in ``schema_migrations``).

Other components add their own tables with ``Database.migrate("<component>", [...])`` and must
not write these: GPU and job state change only through ``Scheduler``'s operations.
"""

from __future__ import annotations

COMPONENT = "scheduler"

MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE scheduler_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE gpus (
        uuid TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        quarantined INTEGER NOT NULL DEFAULT 0,
        quarantine_reason TEXT,
        quarantine_actor TEXT,
        quarantined_at REAL,
        throttled INTEGER NOT NULL DEFAULT 0,
        throttle_reason TEXT,
        lost INTEGER NOT NULL DEFAULT 0,
        lost_reason TEXT,
        updated_at REAL
    );
    CREATE TABLE gpu_alerts (
        uuid TEXT NOT NULL REFERENCES gpus(uuid),
        rule TEXT NOT NULL,
        severity TEXT NOT NULL,
        since REAL NOT NULL,
        PRIMARY KEY (uuid, rule)
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        gpus INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        command TEXT,
        env TEXT,
        time_limit REAL,
        idempotency_key TEXT UNIQUE,
        state TEXT NOT NULL,
        queue_seq INTEGER NOT NULL,
        preemptions INTEGER NOT NULL DEFAULT 0,
        runs INTEGER NOT NULL DEFAULT 0,
        submitted_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        node TEXT,
        gpu_uuids TEXT,
        gpu_indexes TEXT,
        handle TEXT,
        stop_reason TEXT,
        stop_detail TEXT,
        reason TEXT,
        exit_code INTEGER
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE TABLE scheduler_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        job_id INTEGER,
        gpu_uuid TEXT,
        actor TEXT,
        detail TEXT
    );
    CREATE TABLE scheduler_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
    # v2: the node's Prometheus instance, when a static inventory names the node otherwise
    "ALTER TABLE gpus ADD COLUMN instance TEXT NOT NULL DEFAULT ''",
]
