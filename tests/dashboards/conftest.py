from __future__ import annotations

import json
from typing import Any

import pytest

from gpuwarden.dashboards.generate import DEFAULT_OUT


@pytest.fixture(scope="session")
def committed() -> dict[str, Any]:
    """The dashboard as committed (what operators import), not a fresh build."""
    return json.loads(DEFAULT_OUT.read_text(encoding="utf-8"))
