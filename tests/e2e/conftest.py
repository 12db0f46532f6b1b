"""One loop per session (real Prometheus, Alertmanager, exporter and agent), all eight faults.

The stack comes up once; the eight seed rules' faults are injected at once, each on its own
GPU, so the whole suite waits about as long as the slowest rule (THERMAL_WARNING: heating, its
60 s ``for``, then the chat route's 30 s group_wait), not eight times as long. Each test then
checks its own rule and clears its own fault.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuwarden.stack import harness as loop_mod
from tests.helpers import console_script, require_binary


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the whole loop (real Prometheus and Alertmanager) is a binaries and slow test."""
    for item in items:
        if "loop" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.binaries)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[loop_mod.Loop]:
    prometheus = require_binary("prometheus")
    alertmanager = require_binary("alertmanager")
    workdir = tmp_path_factory.mktemp("loop")
    try:
        running = loop_mod.start(
            workdir,
            prometheus,
            alertmanager,
            exporter=console_script("gpuwarden-exporter"),
            agent=console_script("gpuwarden-agent"),
        )
    except loop_mod.LoopError as exc:
        pytest.fail(f"the loop did not come up: {exc} (logs under {workdir / 'logs'})")
    try:
        yield running
    finally:
        running.stop()
        left = running.stack.running()
        assert not left, f"still running after stop: {left}"


@pytest.fixture(scope="session")
def run(loop: loop_mod.Loop) -> Iterator[loop_mod.Run]:
    """Every fault injected; at the end the measured latencies are written as data (not asserted:
    speed is the benchmark's business) to latencies.json in the loop's working directory, and to
    $GPUWARDEN_E2E_LATENCIES when set."""
    try:
        faults = loop_mod.inject_all(loop)
    except loop_mod.LoopError as exc:
        pytest.fail(str(exc))
    yield faults
    faults.stop_watching()
    doc = json.dumps(faults.latencies, indent=2, sort_keys=True)
    (loop.workdir / "latencies.json").write_text(doc)
    out = os.environ.get("GPUWARDEN_E2E_LATENCIES")
    if out:
        Path(out).write_text(doc)
