from __future__ import annotations

import json
from typing import Any

import pytest

from gpuwarden.dashboards.generate import DEFAULT_OUT, OUTPUTS


@pytest.fixture(scope="session")
def committed() -> dict[str, Any]:
    """The gpuwarden-exporter dashboard as committed (what operators import), not a fresh build."""
    return json.loads(DEFAULT_OUT.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def committed_dcgm() -> dict[str, Any]:
    """The dcgm-exporter dashboard as committed."""
    return json.loads(OUTPUTS["dcgm-exporter"].read_text(encoding="utf-8"))


@pytest.fixture(scope="session", params=sorted(OUTPUTS))
def each_committed(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each source's committed dashboard in turn (what holds for both)."""
    doc: dict[str, Any] = json.loads(OUTPUTS[request.param].read_text(encoding="utf-8"))
    return doc
