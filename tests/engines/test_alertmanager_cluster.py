"""An Alertmanager cluster of two peers (gossip), both delivering to the agent, Prometheus
sending to both: every alert is acted on once although both peers deliver it, and one peer
killed mid-storm loses nothing (the other delivers what fires after).

The peers' ``--cluster.peer-timeout`` is 1 ms here (15 s by default) and they gossip every 5 s:
the second peer then sends before it can hear, by gossip, that the first one did, so every
notification reaches the agent twice, the worst case for the agent's dedup by (fingerprint,
startsAt). (With the default 200 ms gossip a peer that received the alerts a moment late heard
in time and sent nothing: the test's premise failed now and then.)"""

from __future__ import annotations

from gpuwarden.procs import free_ports
from tests.engines.parts import (
    CORRECTABLE_BURST,
    UNCORRECTABLE,
    Parts,
    shard_config,
    wait_acted_once,
    wait_scraped,
)
from tests.helpers import wait_until


def test_two_peers_deliver_twice_one_killed_mid_storm_every_alert_acted_on_once(parts: Parts) -> None:
    node = parts.node("exporter", gpus=6)
    agent = parts.agent([node])
    sink = parts.sink()
    gossip = free_ports(2)
    peers = [
        parts.alertmanager(
            f"alertmanager-{i}",
            agent,
            sink,
            cluster=(gossip[i], [gossip[1 - i]]),
            # Gossip (and the probes that piggyback it) every 5 s instead of 0.2 and 1 s, so that
            # the second peer cannot hear in time even when a loaded machine makes it receive the
            # alerts late; settling capped to match.
            cluster_flags=[
                "--cluster.peer-timeout=1ms",
                "--cluster.gossip-interval=5s",
                "--cluster.probe-interval=5s",
                "--cluster.settle-timeout=5s",
            ],
        )
        for i in range(2)
    ]
    wait_until(lambda: all(p.metric("alertmanager_cluster_members") == 2 for p in peers), 30, 0.5, "two members")
    # One Prometheus (the shipped shard config, one shard) sending to both peers.
    prometheus = parts.prometheus("prometheus", shard_config(0, 1, [node.instance], [p.url for p in peers]))
    wait_scraped(prometheus, [node])

    first = [node.inject(0, UNCORRECTABLE), node.inject(1, CORRECTABLE_BURST), node.inject(2, CORRECTABLE_BURST)]
    wait_acted_once(agent, first, timeout=60, settle=0)
    # Both peers delivered each of them: the agent counted the deliveries, and acted once.
    wait_until(
        lambda: agent.metric("remediation_alert_deliveries_total") >= 2 * len(first),
        30,
        0.5,
        "the second peer's deliveries",
    )
    assert all(p.metric("alertmanager_notifications_total", integration="webhook") > 0 for p in peers)

    peers[0].proc.kill9()  # a crash mid-storm: the survivor alone delivers what fires next
    second = [node.inject(3, UNCORRECTABLE), node.inject(4, CORRECTABLE_BURST)]
    wait_acted_once(agent, first + second, timeout=60, settle=12)  # settle: a group_interval and more
    gpus = {g["uuid"]: g for g in agent.api("/api/v1/gpus")}
    assert [gpus[uuid]["quarantined"] for _, uuid, _ in first + second] == [True, False, False, True, False]
