from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gpuwarden.scheduler_agent.executor import Executor
from gpuwarden.scheduler_agent.scheduler import Scheduler, SchedulerOptions
from gpuwarden.scheduler_agent.store import Database


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def make_scheduler(tmp_path: Path, spans) -> Iterator[Callable[..., Scheduler]]:
    """Builds a scheduler on a fresh database with nodes {name: gpu count}; closed at teardown."""
    made: list[Scheduler] = []

    def _make(
        nodes: dict[str, int] | None = None, executor: Executor | None = None, db_path: Path | None = None, **opts
    ) -> Scheduler:
        db = Database(db_path or tmp_path / f"agent-{len(made)}.db")
        s = Scheduler(db, executor, SchedulerOptions(**opts), tracer_provider=spans[0])
        for node, count in (nodes or {}).items():
            for i in range(count):
                s.register_gpu(node, i, f"GPU-{node}-{i}")
        made.append(s)
        return s

    yield _make
    for s in made:
        s.close()
        s.db.close()
