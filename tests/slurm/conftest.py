"""A real Slurm 22.05 (munged, slurmctld, slurmd) for the session, in a temporary folder.

Installs nothing: ``.ci/install-slurm`` does (``apt-get install slurm-wlm munge``). Missing
daemons fail the run in CI (``CI=true``) and skip it elsewhere, like ``require_binary``.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm.cluster import SlurmCluster, missing_binaries


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    missing = missing_binaries()
    if missing:
        msg = f"{', '.join(missing)} not found on PATH: run 'bash .ci/install-slurm' (apt-get install slurm-wlm munge)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    if os.geteuid() != 0:
        # slurmd must run as root to launch jobs; mknod needs CAP_MKNOD.
        msg = "the Slurm tests start slurmd and create device nodes: run them as root"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    root = tmp_path_factory.mktemp("slurm")
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.leftover_pids(), "Slurm processes outlived the tests"


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the real Slurm daemons is a binaries and slow test, whatever its module says."""
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.binaries)
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def clean_slurm(slurm: SlurmCluster) -> Iterator[SlurmCluster]:
    """The cluster with no jobs and the node resumed, before and after the test."""
    slurm.reset()
    yield slurm
    slurm.reset()


@pytest.fixture
def scontrol_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """A scontrol that logs each call (argv, one line) and, while ``slow-requeue`` exists in
    the test's folder, waits 3 s before a requeue: the window in which a test kills the agent."""
    log = tmp_path / "scontrol-calls.log"
    script = tmp_path / "scontrol"
    real = shutil.which("scontrol")
    script.write_text(f"""#!/bin/sh
echo "start $*" >> {log}
echo "$(date +%s.%N) $*" >> {log}.times
if [ "$1" = requeue ] && [ -e {tmp_path}/slow-requeue ]; then sleep 3; fi
exec {real} "$@"
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log
