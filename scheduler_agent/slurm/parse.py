"""Parsing ``scontrol show node -d`` and ``scontrol show job -d`` (Slurm 22.05's text output).

Records are separated by blank lines and hold ``Key=Value`` pairs. Three values need care: a
node's ``Reason`` runs to the end of its line and carries Slurm's ``[user@time]`` suffix, a job's
``JobName`` runs to the end of its line too (names may hold spaces), and a
job's per-node allocation is a detail line ``Nodes=gpu[01-02] CPU_IDs=0-3 Mem=0
GRES=gpu:4(IDX:0-3)`` (one per distinct allocation) whose ``IDX`` list names the GPUs the job
holds on those nodes. ``-d`` is what makes Slurm print the detail lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_PAIR = re.compile(r"([A-Za-z][\w/:.]*)=(\S*)")
_REASON = re.compile(r"(?:^|\s)Reason=(.*?)(?:\s+\[([^\]@]*)@([^\]]*)\])?\s*$", re.M)
_JOB_NAME = re.compile(r"(?:^|\s)JobName=(.*?)\s*$", re.M)
_DETAIL = re.compile(r"^\s*Nodes=(\S+)\s+CPU_IDs=\S*\s+Mem=\S*\s+GRES=(\S*)", re.M)
# gpu:4(IDX:0-3), gpu:a100:2(IDX:0,2), gpu(IDX:1); other GRES (mps, shard) are not GPUs here.
_GPU_IDX = re.compile(r"(?:^|,)gpu(?::[^:(,]+)?(?::\d+)?\(IDX:([^)]*)\)")
_GRES_COUNT = re.compile(r"(?:^|,)gpu(?::[^:(,]+)?:(\d+)")


def records(text: str) -> list[str]:
    return [r for r in re.split(r"\n\s*\n", text) if r.strip()]


def pairs(record: str) -> dict[str, str]:
    """The record's first value for each key (detail lines repeat keys; they are read apart)."""
    out: dict[str, str] = {}
    for k, v in _PAIR.findall(record):
        out.setdefault(k, v)
    return out


def expand_hostlist(expr: str) -> list[str]:
    """``gpu[01-03,07],login1`` -> ``[gpu01, gpu02, gpu03, gpu07, login1]`` (zero padding kept)."""
    names: list[str] = []
    for part in re.findall(r"[^,\[]*(?:\[[^\]]*\][^,\[]*)*", expr):
        if not part:
            continue
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if m is None:
            names.append(part)
            continue
        prefix, ranges, rest = m.groups()
        for tail in expand_hostlist(rest) if rest else [""]:
            for r in ranges.split(","):
                lo, _, hi = r.partition("-")
                width = len(lo)
                for i in range(int(lo), int(hi or lo) + 1):
                    names.append(f"{prefix}{i:0{width}d}{tail}")
    return names


def expand_indexes(idx: str) -> set[int]:
    """``0-1,3`` -> ``{0, 1, 3}``; ``N/A`` or empty -> empty."""
    out: set[int] = set()
    for r in idx.split(","):
        r = r.strip()
        if not r or not r[0].isdigit():
            continue
        lo, _, hi = r.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


@dataclass(frozen=True)
class Node:
    name: str
    state: str  # e.g. IDLE, ALLOCATED+DRAIN, MIXED+DRAIN, DOWN+NOT_RESPONDING
    reason: str = ""  # without Slurm's [user@time] suffix
    reason_user: str = ""
    addr: str = ""
    hostname: str = ""
    gpus: int = 0  # GPUs configured (from Gres=)

    @property
    def flags(self) -> set[str]:
        return set(self.state.replace("*", "").split("+"))

    @property
    def drained(self) -> bool:
        """Drained or draining (Slurm prints DRAIN, DRAINING or DRAINED depending on jobs)."""
        return any(f.startswith("DRAIN") for f in self.flags)


@dataclass(frozen=True)
class Job:
    id: int
    state: str
    reason: str = ""
    name: str = ""  # JobName
    restarts: int = 0
    node_list: str = ""
    gpus: dict[str, frozenset[int]] = field(default_factory=dict)  # node -> GPU indexes held

    def holds(self, node: str, index: int) -> bool:
        return index in self.gpus.get(node, frozenset())


def parse_nodes(text: str) -> list[Node]:
    nodes = []
    for rec in records(text):
        p = pairs(rec)
        if "NodeName" not in p:
            continue
        m = _REASON.search(rec)
        reason, user = (m.group(1).strip(), m.group(2) or "") if m else ("", "")
        if reason in ("(null)", "none", "None"):
            reason = ""
        count = _GRES_COUNT.search(p.get("Gres", ""))
        nodes.append(
            Node(
                name=p["NodeName"],
                state=p.get("State", ""),
                reason=reason,
                reason_user=user,
                addr=p.get("NodeAddr", ""),
                hostname=p.get("NodeHostName", ""),
                gpus=int(count.group(1)) if count else 0,
            )
        )
    return nodes


def parse_jobs(text: str) -> list[Job]:
    jobs = []
    for rec in records(text):
        # The name is the job owner's text: read it whole, then read the other keys without it,
        # so that a name such as "x JobState=PENDING" cannot stand in for the job's own state.
        name = _JOB_NAME.search(rec)
        p = pairs(rec[: name.start(1)] + rec[name.end(1) :] if name else rec)
        if "JobId" not in p:
            continue
        held: dict[str, set[int]] = {}
        for hostlist, gres in _DETAIL.findall(rec):
            idx: set[int] = set()
            for m in _GPU_IDX.finditer(gres):
                idx |= expand_indexes(m.group(1))
            if idx:
                for host in expand_hostlist(hostlist):
                    held.setdefault(host, set()).update(idx)
        jobs.append(
            Job(
                id=int(p["JobId"]),
                state=p.get("JobState", ""),
                name=name.group(1) if name else "",
                reason=p.get("Reason", ""),
                restarts=int(p.get("Restarts", "0") or 0),
                node_list=p.get("NodeList", ""),
                gpus={k: frozenset(v) for k, v in held.items()},
            )
        )
    return jobs
