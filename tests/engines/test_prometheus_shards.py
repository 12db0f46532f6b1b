"""Prometheus sharded by ``hashmod`` over the node targets, with the shipped
deploy/scale/prometheus-shard.yml: two shards, a node on each, a fault on both. Each alert fires
on the shard that holds its node only (the generated rules only join series of one target), and
the agent, reached through Alertmanager, acts on both."""

from __future__ import annotations

from gpuwarden.procs import LOOPBACK, free_port
from gpuwarden.prom import PrometheusClient
from tests.engines.parts import (
    UNCORRECTABLE,
    Parts,
    firing_alerts,
    hashmod,
    shard_config,
    wait_acted_once,
    wait_scraped,
)
from tests.helpers import wait_until

SHARDS = 2


def port_on_shard(shard: int) -> int:
    """A free port whose exporter address ``hashmod`` puts on ``shard``."""
    while hashmod(f"{LOOPBACK}:{(port := free_port())}", SHARDS) != shard:
        pass
    return port


def test_two_shards_each_fire_for_their_own_node_and_the_agent_acts_on_both(parts: Parts) -> None:
    # Two models: the simulator derives uuids from model and index, and both nodes have a GPU 1.
    nodes = [parts.node(f"node-{s}", gpus=2, model=m, port=port_on_shard(s)) for s, m in enumerate(("sim", "h100"))]
    targets = [n.instance for n in nodes]
    agent = parts.agent(nodes)
    am = parts.alertmanager("alertmanager", agent, parts.sink())
    shards = [parts.prometheus(f"prometheus-{s}", shard_config(s, SHARDS, targets, [am.url])) for s in range(SHARDS)]

    # Each shard scrapes exactly the node hashmod gives it (our hashmod is Prometheus').
    for shard, url in enumerate(shards):
        wait_scraped(url, [nodes[shard]])
        scraped = {s.labels["instance"] for s in PrometheusClient(url).query('up{job="gpuwarden-exporter"}')}
        assert scraped == {nodes[shard].instance}, (shard, scraped)

    expected = [n.inject(1, UNCORRECTABLE) for n in nodes]
    for shard, url in enumerate(shards):
        mine = (expected[shard][0], expected[shard][1])

        def fired(url: str = url, mine: tuple[str, str] = mine) -> bool:
            return mine in firing_alerts(url)

        wait_until(fired, 60, 0.5, f"shard {shard} to fire {mine}")
    for shard, url in enumerate(shards):
        other = expected[1 - shard][1]
        assert other not in {uuid for _, uuid in firing_alerts(url)}, f"shard {shard} fired for the other shard's node"

    wait_acted_once(agent, expected, timeout=60, settle=3)
    gpus = {g["uuid"]: g for g in agent.api("/api/v1/gpus")}
    assert all(gpus[uuid]["quarantined"] for _, uuid, _ in expected)
    # Alertmanager got each alert from its shard (the shipped external label says which).
    shard_of = {a["labels"]["uuid"]: a["labels"]["prometheus_shard"] for a in am.alerts() if "uuid" in a["labels"]}
    assert [shard_of[uuid] for _, uuid, _ in expected] == ["0", "1"]
