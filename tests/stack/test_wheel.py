"""The wheel as a user gets it: built from a copy of the sources, installed into a fresh
virtualenv outside the checkout, and run from an empty directory until the agent has acted.

It proves that everything ``gpuwarden up`` needs ships as package data (rules, the Alertmanager
routing and templates, scenarios, schemas) and is found through ``importlib.resources``, and that
the distribution installs one import name, ``gpuwarden``, and nothing else at the top of
site-packages (a bare ``exporter`` or ``rules`` would clash with other distributions).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from gpuwarden.procs import Proc
from tests.helpers import REPO, http_get, require_binary

# The repository's top-level folders: importable only as gpuwarden.<name>.
COMPONENTS = ("exporter", "rules", "scheduler_agent", "dashboards", "alertmanager")
# Package data `gpuwarden up` reads at run time (importlib.resources), and the launcher itself.
SHIPPED = (
    "gpuwarden/procs.py",
    "gpuwarden/stack/launcher.py",
    "gpuwarden/alertmanager/alertmanager.yml",
    "gpuwarden/alertmanager/templates/gpuwarden.tmpl",
    "gpuwarden/rules/thresholds.yaml",
    "gpuwarden/rules/schema.json",
    "gpuwarden/rules/generated/gpuwarden-alerts.rules.yml",
    "gpuwarden/rules/generated/gpuwarden-recording.rules.yml",
    "gpuwarden/exporter/sim/scenario.schema.json",
    "gpuwarden/exporter/sim/scenarios/ecc-uncorrectable.yaml",
    "gpuwarden/scheduler_agent/config.schema.json",
    "gpuwarden/scheduler_agent/remediation/policy_schema.json",
)
QUARANTINED = re.compile(r" gpu 1 \(\S+\) is quarantined")
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache", ".gpuwarden", "*.pyc"
)


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    """The environment without this checkout in it: no PYTHONPATH, no virtualenv of ours on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    ours = {str(Path(sys.executable).parent), str(REPO / ".venv" / "bin")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in ours]
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        path.insert(0, str(venv / "bin"))
    env["PATH"] = os.pathsep.join(path)
    return env


def _bare_import_fails(python: str, name: str, cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run([python, "-c", f"import {name}"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    return (
        ""
        if out.returncode != 0 and "ModuleNotFoundError" in out.stderr
        else f"`import {name}` (rc {out.returncode}): {out.stderr.strip()[-300:]}"
    )


def _acted(text: str, token_file: Path) -> list[dict]:
    """The agent's completed quarantine of the scenario's alert (its audit trail, read from the
    agent's API once ``gpuwarden up`` has printed where the agent is)."""
    found = re.search(r"^\s+agent\s+(http://127\.0\.0\.1:\d+)/", text, re.M)
    if not found or not token_file.exists():
        return []
    status, body = http_get(found.group(1) + "/api/v1/actions?limit=100", token=token_file.read_text().strip())
    if status != 200:
        return []
    return [
        a
        for a in json.loads(body)["actions"]
        if (a["rule"], a["status"], a["action"], a["outcome"]) == ("ECC_UNCORRECTABLE", "firing", "quarantine", "acted")
    ]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("name", COMPONENTS)
def test_components_are_not_importable_by_their_folder_name(name: str, tmp_path: Path) -> None:
    """In the development install too, only gpuwarden.<name> exists (from an empty directory:
    a checkout's root on sys.path would find the folders themselves)."""
    problem = _bare_import_fails(sys.executable, name, tmp_path, _clean_env())
    assert not problem, f"a bare import must fail: {problem}"
    out = subprocess.run(
        [sys.executable, "-c", f"import gpuwarden.{name}"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
@pytest.mark.binaries
def test_wheel_in_a_fresh_virtualenv_runs_the_loop_until_the_agent_acts(tmp_path: Path) -> None:
    require_binary("prometheus")
    require_binary("alertmanager")

    # 1. The wheel, built from a copy of the sources (no build/ or egg-info left by the checkout).
    src, dist = tmp_path / "src", tmp_path / "dist"
    shutil.copytree(REPO, src, ignore=_IGNORE)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("gpuwarden-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top = {n.split("/", 1)[0] for n in names}
        meta = {t for t in top if t.endswith((".dist-info", ".data"))}
        assert top - meta == {"gpuwarden"}, f"the wheel installs more than gpuwarden: {sorted(top - meta)}"
        top_level = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        if top_level:
            assert zf.read(top_level[0]).decode().split() == ["gpuwarden"]
    missing = [f for f in SHIPPED if f not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert not [n for n in names if n.startswith("gpuwarden/scheduler_agent/stack/")], (
        "the launcher lives in gpuwarden.stack, not in the agent's package"
    )

    # 2. A fresh virtualenv outside the checkout; dependencies from the index.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    )
    before = {p.name for p in site.iterdir()}
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        env=_clean_env(venv),
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # 3. Site-packages gained gpuwarden and no other top-level name of ours.
    (record,) = site.glob("gpuwarden-*.dist-info/RECORD")
    ours = {line.split(",", 1)[0].split("/", 1)[0] for line in record.read_text().splitlines() if line}
    ours = {t for t in ours if not t.endswith(".dist-info") and t != ".."}  # ../../../bin: console scripts
    assert ours == {"gpuwarden"}, f"the installed wheel put {sorted(ours)} at the top of site-packages"
    gained = {p.name for p in site.iterdir()} - before
    assert not gained & set(COMPONENTS), f"site-packages gained {sorted(gained & set(COMPONENTS))}"
    assert "gpuwarden" in gained

    # 4. From an empty directory: bare component names do not import; gpuwarden up runs the loop.
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _clean_env(venv)
    for name in COMPONENTS:
        problem = _bare_import_fails(python, name, empty, env)
        assert not problem, f"a bare import must fail in the fresh virtualenv: {problem}"
    where = subprocess.run(
        [python, "-c", "import gpuwarden.stack, sys; print(gpuwarden.stack.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0 and where.stdout.startswith(str(site)), where.stdout + where.stderr
    assert list(empty.iterdir()) == []

    up = Proc(
        [
            str(venv / "bin" / "gpuwarden"),
            "up",
            "--duration=300",
            "--scenario=ecc-uncorrectable",
            "--scrape-interval=2s",
            "--interval=0.5",
        ],
        tmp_path / "up.log",
        cwd=empty,
        env=env,
        name="gpuwarden",
    )
    try:
        deadline = time.monotonic() + 240
        token = empty / ".gpuwarden" / "agent-operator.token"
        # The audit entry, then the live view's line for it (the view polls every 0.5 s).
        while not ((acted := _acted(up.output(), token)) and QUARANTINED.search(up.output())):
            assert up.alive(), f"gpuwarden up exited ({up.popen.returncode}):\n{up.output()}"
            assert time.monotonic() < deadline, f"the agent did not act within 240s:\n{up.output()}"
            time.sleep(0.5)
        assert len(acted) == 1 and acted[0]["error"] == "", acted
        up.signal(signal.SIGTERM)  # as a service manager stops it: every child stopped by pid
        assert up.popen.wait(60) == 0, up.output()
    finally:
        up.stop(60)
    text = up.output()
    assert "SIMULATED fleet of 8 GPUs" in text, text
    assert "stopped; nothing left running" in text, text
    ports = {
        name: int(port)
        for name, port in re.findall(
            r"^\s+(exporter|prometheus|alertmanager|agent)\s+http://127\.0\.0\.1:(\d+)", text, re.M
        )
    }
    assert set(ports) == {"exporter", "prometheus", "alertmanager", "agent"}, text
    for name, port in ports.items():
        assert not _listening(port), f"{name} still listening on {port} after gpuwarden up stopped"
    # Its state went to the default working directory, under the directory it was started from.
    assert (empty / ".gpuwarden" / "agent" / "agent.db").stat().st_size > 0
    assert f"state, configs and logs under {empty / '.gpuwarden'}" in text
