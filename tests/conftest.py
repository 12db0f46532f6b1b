from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.helpers import CURRENT_TEST, Proc


@pytest.fixture(autouse=True)
def _current_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Lets require_binary check the running test's markers."""
    token = CURRENT_TEST.set(request.node)
    yield
    CURRENT_TEST.reset(token)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Starts processes for one test and stops every one of them, by pid, at teardown."""
    started: list[Proc] = []

    def _spawn(argv: Sequence[str], name: str = "proc", **kw) -> Proc:
        p = Proc(argv, tmp_path / f"{name}-{len(started)}.log", **kw)
        started.append(p)
        return p

    yield _spawn
    for p in reversed(started):
        p.stop()
