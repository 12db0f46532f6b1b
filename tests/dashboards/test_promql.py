"""Every query each source's dashboard sends is valid PromQL, as judged by the real promtool 2.42."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuwarden.dashboards import queries
from tests.helpers import require_binary

pytestmark = pytest.mark.binaries

# What Grafana would send for a multi-select of two nodes and two GPUs.
VALUES = {
    "instance": "(gpu-node-1:9786|gpu-node-2:9786)",
    "gpu": "(0|3)",
    "datasource": "prometheus",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}


def _check_rules(exprs: list[tuple[str, str]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Writes each expression as a recording rule in its own group (named for where it lives)."""
    groups = [
        {"name": f"{i:02d} {where}", "rules": [{"record": f"dashboard:query{i:02d}", "expr": expr}]}
        for i, (where, expr) in enumerate(exprs)
    ]
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


def test_every_query_is_valid_promql(each_committed: dict[str, Any], tmp_path: Path) -> None:
    found = queries.all_queries(each_committed)
    assert len(found) >= 30, [q.where for q in found]
    exprs = [(q.where, queries.substitute(q.expr, VALUES)) for q in found]
    result = _check_rules(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_the_check_catches_a_broken_query(tmp_path: Path) -> None:
    result = _check_rules([("panel 1 target A", "sum(rate(gpu_power_watts[1m])")], tmp_path)
    assert result.returncode != 0
    assert "panel 1 target A" in result.stdout + result.stderr
