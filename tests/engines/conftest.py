"""Scale-out engines (vmalert over VictoriaMetrics, an Alertmanager cluster, Prometheus shards)
and the agent down mid-storm: every test here drives real binaries for tens of seconds to
minutes, so each is a binaries and slow test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engines.parts import Parts

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.binaries)
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    """Parts started one by one for one test; all stopped by pid at teardown."""
    started = Parts(tmp_path)
    try:
        yield started
    finally:
        left = started.stop()
        assert not left, f"still running after stop: {left}"
