"""Placement: which node's GPUs a job gets. Pure data structures, no I/O, no locking.

``FreeIndex`` keeps, per node, the set of *placeable* free GPUs (free, and not quarantined,
lost or under a firing critical alert) and buckets the nodes by how many such GPUs they have.
Best fit for a job asking for n GPUs is the first non-empty bucket n, n+1, ... max: the node
with the fewest free GPUs that still fits, which keeps whole nodes free for large jobs and limits
fragmentation. A placement therefore costs O(GPUs per node), whatever the number of nodes; the
benchmark (``python -m bench.placement``) compares it with ``naive_place``, the scan-everything
placement, in the same run.

Risk: among at most ``risk_candidates`` nodes of the chosen bucket the node whose n lowest-risk
GPUs have the smallest total risk wins, and on that node the n lowest-risk GPUs are taken.
The bound keeps risk from reintroducing a scan of the fleet. ``risk`` is the predictor's hook
(``Callable[[uuid], float]``); it is called during placement, so it must be cheap (a dict read).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

RiskFn = Callable[[str], float]


def no_risk(uuid: str) -> float:
    return 0.0


@dataclass(frozen=True)
class Placement:
    node: str
    uuids: tuple[str, ...]
    indexes: tuple[int, ...]


class FreeIndex:
    """Free placeable GPUs per node, with nodes bucketed by their free count."""

    def __init__(self, risk_candidates: int = 16) -> None:
        self.risk_candidates = max(1, risk_candidates)
        self._free: dict[str, dict[str, int]] = {}  # node -> {uuid: gpu index}
        self._buckets: list[dict[str, None]] = [{}]  # count -> ordered set of nodes
        self._node_of: dict[str, str] = {}  # uuid -> node (placeable free only)

    def _move(self, node: str, old: int, new: int) -> None:
        if old:
            self._buckets[old].pop(node, None)
        if new:
            while len(self._buckets) <= new:
                self._buckets.append({})
            self._buckets[new][node] = None

    def add(self, node: str, uuid: str, index: int) -> None:
        """Marks a GPU free and placeable (idempotent)."""
        if uuid in self._node_of:
            return
        gpus = self._free.setdefault(node, {})
        old = len(gpus)
        gpus[uuid] = index
        self._node_of[uuid] = node
        self._move(node, old, old + 1)

    def remove(self, uuid: str) -> None:
        """Takes a GPU out (allocated, or no longer placeable); no-op if it was not in."""
        node = self._node_of.pop(uuid, None)
        if node is None:
            return
        gpus = self._free[node]
        old = len(gpus)
        del gpus[uuid]
        self._move(node, old, old - 1)

    def __contains__(self, uuid: str) -> bool:
        return uuid in self._node_of

    def free_count(self) -> int:
        return len(self._node_of)

    def max_free(self) -> int:
        """The largest number of placeable free GPUs on any one node (0 when none)."""
        for count in range(len(self._buckets) - 1, 0, -1):
            if self._buckets[count]:
                return count
        return 0

    def place(self, n: int, risk: RiskFn = no_risk) -> Placement | None:
        """Best-fit placement of n GPUs on one node, or None; does not allocate (see ``take``)."""
        if n <= 0:
            return None
        for count in range(n, len(self._buckets)):
            bucket = self._buckets[count]
            if not bucket:
                continue
            best: tuple[float, str, list[tuple[float, int, str]]] | None = None
            for i, node in enumerate(bucket):
                if i >= self.risk_candidates:
                    break
                ranked = sorted((risk(u), idx, u) for u, idx in self._free[node].items())[:n]
                total = sum(r for r, _, _ in ranked)
                if best is None or total < best[0]:
                    best = (total, node, ranked)
                    if total == 0.0:
                        break
            assert best is not None
            _, node, ranked = best
            chosen = sorted(ranked, key=lambda t: t[1])
            return Placement(node, tuple(u for _, _, u in chosen), tuple(i for _, i, _ in chosen))
        return None

    def take(self, placement: Placement) -> None:
        for uuid in placement.uuids:
            self.remove(uuid)


@dataclass
class NaiveGpu:
    node: str
    index: int
    uuid: str
    placeable: bool = True
    allocated: bool = False


def naive_place(gpus: Sequence[NaiveGpu], n: int, risk: RiskFn = no_risk) -> Placement | None:
    """The straightforward placement: scan every GPU, group by node, pick the best fit.

    Kept as the benchmark's baseline and as an oracle in tests: it must agree with ``FreeIndex``
    on the chosen free count.
    """
    per_node: dict[str, list[NaiveGpu]] = {}
    for g in gpus:
        if g.placeable and not g.allocated:
            per_node.setdefault(g.node, []).append(g)
    best: tuple[int, float, str] | None = None
    for node, free in per_node.items():
        if len(free) < n:
            continue
        total = sum(sorted(risk(g.uuid) for g in free)[:n])
        key = (len(free), total, node)
        if best is None or key[:2] < best[:2]:
            best = key
    if best is None:
        return None
    chosen = sorted(sorted(per_node[best[2]], key=lambda g: (risk(g.uuid), g.index))[:n], key=lambda g: g.index)
    return Placement(best[2], tuple(g.uuid for g in chosen), tuple(g.index for g in chosen))
