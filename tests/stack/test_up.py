"""`gpuwarden up` as a user runs it: the whole loop up, the live view, and nothing left behind."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.helpers import console_script, require_binary


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.binaries
@pytest.mark.slow
def test_up_runs_the_loop_and_stops_everything(tmp_path: Path) -> None:
    require_binary("prometheus")
    require_binary("alertmanager")
    out = subprocess.run(
        [
            console_script("gpuwarden"),
            "up",
            f"--workdir={tmp_path}",
            "--scenario=none",
            "--duration=20",
            "--interval=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "SIMULATED fleet of 8 GPUs" in text
    ports = {
        name: int(port)
        for name, port in re.findall(
            r"^\s+(exporter|prometheus|alertmanager|agent)\s+http://127\.0\.0\.1:(\d+)", text, re.M
        )
    }
    assert set(ports) == {"exporter", "prometheus", "alertmanager", "agent"}, text
    assert "stopped; nothing left running" in text
    for name, port in ports.items():
        assert not _listening(port), f"{name} still listening on {port} after gpuwarden up exited"
    for name in ("exporter", "agent", "prometheus", "alertmanager"):
        assert (tmp_path / "logs" / f"{name}.log").exists()
    # The agent discovered the simulated GPUs from Prometheus and kept them in its database.
    assert (tmp_path / "agent" / "agent.db").stat().st_size > 0


def test_up_says_how_to_install_a_missing_binary(tmp_path: Path) -> None:
    out = subprocess.run(
        [console_script("gpuwarden"), "up", f"--workdir={tmp_path}", "--prometheus=/nonexistent/prometheus"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1
    assert "/nonexistent/prometheus" in out.stderr and "not found" in out.stderr
