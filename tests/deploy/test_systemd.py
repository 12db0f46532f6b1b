"""deploy/systemd: units verified by systemd-analyze where it exists, parsed everywhere."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.conftest import AGENT_PORT, DEPLOY, EXPORTER_PORT, REPO, check_agent_config
from tests.helpers import VENV_BIN

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
INSTALL_BIN = "/opt/gpuwarden/bin/"


def _unit(path: Path) -> configparser.ConfigParser:
    # systemd allows repeated keys and '%' specifiers; interpolation and strictness must be off.
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # keys are case-sensitive
    cp.read_string(path.read_text(), source=str(path))
    return cp


def _exec(path: Path) -> list[str]:
    return shlex.split(_unit(path)["Service"]["ExecStart"])


def test_a_unit_per_component() -> None:
    assert [p.name for p in UNITS] == ["gpuwarden-agent.service", "gpuwarden-exporter.service"]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_structure(path: Path) -> None:
    unit = _unit(path)
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    assert unit["Unit"]["Description"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == "gpuwarden", "no component needs root to run (see the agent unit's note)"
    argv = _exec(path)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0].startswith(INSTALL_BIN) and argv[0][len(INSTALL_BIN) :] in scripts, argv[0]
    assert "PrivateDevices" not in service, "PrivateDevices hides /dev/nvidia*"


def test_exporter_listens_on_its_default_port() -> None:
    argv = _exec(DEPLOY / "systemd" / "gpuwarden-exporter.service")
    assert argv[0].endswith("/gpuwarden-exporter")
    assert f"--web.listen-address=:{EXPORTER_PORT}" in argv


def test_agent_unit_config_and_state(tmp_path: Path) -> None:
    unit = _unit(DEPLOY / "systemd" / "gpuwarden-agent.service")["Service"]
    argv = shlex.split(unit["ExecStart"])
    assert argv[1:] == ["serve", "--config=/etc/gpuwarden/agent.yaml"]
    doc = check_agent_config((DEPLOY / "systemd" / "agent.yaml").read_text(), tmp_path, "deploy/systemd/agent.yaml")
    assert doc["web"]["listen_address"] == f":{AGENT_PORT}"
    state = "/var/lib/" + unit["StateDirectory"]
    assert doc["database"]["path"].startswith(state + "/") and unit["ReadWritePaths"] == state
    # Two roles, two tokens: Alertmanager's opens the webhook only, the operator's the rest.
    assert doc["web"]["token_file"] != doc["remediation"]["auth"]["bearer_token_file"]


def test_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` where systemd is installed (the structural checks above run
    everywhere). verify insists that ExecStart's binary exists, so the units point at this
    virtualenv's console scripts for the check (the install path is the only change)."""
    analyze = shutil.which("systemd-analyze")
    for path in UNITS:
        (tmp_path / path.name).write_text(path.read_text().replace(INSTALL_BIN, f"{VENV_BIN}/"))
        assert INSTALL_BIN in path.read_text()
    if analyze is None:
        return  # not a skip: the units were parsed and checked by the tests above
    out = subprocess.run(
        [analyze, "verify", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
