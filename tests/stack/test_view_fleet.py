"""The live view at fleet scale stays one screen and still names the GPUs that need a look."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.fleet_view import snapshot
from gpuwarden.stack.view import MAX_ROWS, LiveView, NotificationSink


@pytest.fixture
def view() -> Iterator[LiveView]:
    sink = NotificationSink(0)  # bound, never started: render only reads its deque
    yield LiveView("http://127.0.0.1:1", "http://127.0.0.1:1", "t", sink, ["test"], redraw=True)
    sink.stop()


def test_a_fleet_is_summarised_and_its_troubled_gpus_listed(view: LiveView) -> None:
    snap = snapshot(8192, 0.05)
    text = view.render(snap)
    assert len(text.splitlines()) < 2 * MAX_ROWS
    troubled = [g for g in snap["gpus"] if g["alerts"]]
    quarantined = sum(1 for g in snap["gpus"] if g["state"] == "quarantined")
    assert f"8192 GPUs on 1024 nodes: {8192 - quarantined} healthy, {quarantined} quarantined" in text
    assert f"... and {len(troubled) - MAX_ROWS} more" in text
    assert "node-0000" in text  # a fleet's rows say which node
    assert f"firing   POWER_CRITICAL       x{len(troubled)}" in text


def test_a_single_host_still_lists_every_gpu(view: LiveView) -> None:
    snap = snapshot(8, 0.25)
    text = view.render(snap)
    assert sum(1 for line in text.splitlines() if "GPU-0000000" in line) == 8
    assert "nodes:" not in text
