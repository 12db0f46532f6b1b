"""From the node an alert names (Prometheus ``instance``, or a ``node`` label) to a Slurm node.

In order: the explicit map (``slurm.nodes``), then the label value as it is, without its
``:port``, and without its domain, each compared with Slurm's ``NodeName``, ``NodeHostName`` and
``NodeAddr``. So ``gpu01:9786``, ``gpu01.example.org:9786`` and ``10.0.0.11:9786`` all find
``NodeName=gpu01 NodeAddr=10.0.0.11`` without any configuration.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .errors import UnknownNode
from .parse import Node


def candidates(value: str) -> list[str]:
    out = [value]
    host = re.sub(r":\d+$", "", value)
    if host.startswith("[") and host.endswith("]"):  # [::1]:9786
        host = host[1:-1]
    out.append(host)
    if not re.fullmatch(r"[\d.]+|[0-9a-fA-F:]+", host):
        out.append(host.split(".", 1)[0])
    return list(dict.fromkeys(out))


class NodeMap:
    def __init__(self, explicit: Mapping[str, str] | None = None, label: str = "instance") -> None:
        self.explicit = dict(explicit or {})
        self.label = label

    def resolve(self, value: str, nodes: Iterable[Node], what: str = "") -> str:
        known = list(nodes)
        names = {n.name for n in known}
        if value in self.explicit:
            name = self.explicit[value]
            if name in names:
                return name
            raise UnknownNode(
                f"{what or value}: slurm.nodes maps {value!r} to {name!r}, which "
                f"Slurm does not know (its nodes: {_list(names)}); fix the map"
            )
        for c in candidates(value):
            for n in known:
                if c in (n.name, n.hostname, n.addr):
                    return n.name
        raise UnknownNode(
            f"{what or 'the GPU'} is on {self.label}={value!r}, which matches no Slurm node "
            f"(its nodes: {_list(names)}); add it to slurm.nodes in the agent's config "
            f"({{{value!r}: <NodeName>}}) or set slurm.node_label to the label holding the "
            f"Slurm node name"
        )


def _list(names: Iterable[str]) -> str:
    s = sorted(names)
    return ", ".join(s[:20]) + (f" and {len(s) - 20} more" if len(s) > 20 else "") or "none"
