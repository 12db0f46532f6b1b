"""Where the GPUs come from: a static list (config or file), or Prometheus (gpu_info, gpu_up).

Static: ``nodes: [{name: node-a, gpus: [{index: 0, uuid: GPU-...}]}, {name: node-b, count: 8}]``
(``count`` makes up uuids ``GPU-<node>-<index>``, for tests and demos). A node may say
``instance: 10.0.0.5:9835``: its exporter's Prometheus instance, when that is not its name; the
agent's per-GPU series (gpu_state, gpu_allocation_info) carry it so they join the exporter's.

Prometheus: every ``refresh_seconds`` the agent queries each GPU's identity and whether it is up
through the shared Prometheus client (``gpuwarden.prom``), from the metrics ``source`` the
fleet exports (``gpuwarden``: gpu_info and gpu_up; ``dcgm-exporter``: its DCGM series, a GPU
being up while they report it; ``gpuwarden.sources`` knows the names), under ``job_selector``
(default: any job for gpuwarden, ``job=~"(nvidia-)?dcgm-exporter"`` for dcgm-exporter); a GPU's
node is the ``node_label`` label (default ``instance``), and its ``instance`` label is kept
beside it. The result goes through ``Scheduler.sync_inventory``: new GPUs join, ``gpu_up == 0`` or absence marks a GPU
lost (its job preempted), and a GPU that comes back is marked up. A failed query changes nothing
(logged): Prometheus being down is not the fleet being down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.core import GaugeMetricFamily, Metric

from gpuwarden import sources
from gpuwarden.prom import PrometheusClient, PrometheusError

from .models import GpuSpec

log = logging.getLogger(__name__)


class InventoryError(Exception):
    pass


def static_specs(nodes: list[dict[str, Any]], source: str = "inventory") -> list[GpuSpec]:
    out: list[GpuSpec] = []
    seen: set[str] = set()
    for i, n in enumerate(nodes):
        if not isinstance(n, dict) or not n.get("name"):
            raise InventoryError(f"{source}: nodes[{i}].name: each node needs a name")
        gpus: list[dict[str, Any]]
        if "count" in n:
            gpus = [{"index": k, "uuid": f"GPU-{n['name']}-{k}"} for k in range(int(n["count"]))]
        else:
            gpus = n.get("gpus") or []
        for k, g in enumerate(gpus):
            uuid = g.get("uuid")
            if not uuid or uuid in seen:
                raise InventoryError(f"{source}: nodes[{i}].gpus[{k}].uuid: missing or repeated ({uuid!r})")
            seen.add(uuid)
            out.append(
                GpuSpec(
                    node=n["name"],
                    index=int(g["index"]),
                    uuid=uuid,
                    name=g.get("name", ""),
                    instance=n.get("instance", ""),
                )
            )
    return out


def load_file(path: str | Path) -> list[GpuSpec]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InventoryError(f"{path}: cannot read the inventory: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise InventoryError(f"{path}: nodes: expected a list of nodes")
    return static_specs(doc["nodes"], str(path))


def prometheus_specs(
    url: str,
    node_label: str = "instance",
    timeout: float = 10.0,
    source: str = "gpuwarden",
    job_selector: str | None = None,
) -> list[GpuSpec]:
    """The GPUs Prometheus knows (the source's identity series), each up when its up signal
    reads 1; raises ``PrometheusError`` (the shared client's, naming the URL) when Prometheus
    cannot be read."""
    if source == "gpuwarden" and not job_selector:
        # gpuwarden-exporter's own series of any scrape job, as before sources were configurable
        info_query, up_query = "gpu_info", "gpu_up"
    else:
        job = job_selector or sources.default_job_selector(source)
        info_query, up_query = sources.signal(source, "identity", job), sources.signal(source, "gpu_up", job)
    prom = PrometheusClient(url, timeout)
    info = prom.query(info_query)
    up = {}
    for s in prom.query(up_query):
        m = s.labels
        up[(m.get(node_label, ""), m.get("uuid", ""))] = bool(s.values[-1] >= 1)
    out, seen = [], set()
    for s in info:
        m = s.labels
        node, uuid = m.get(node_label, ""), m.get("uuid", "")
        if not node or not uuid or uuid in seen:
            continue
        seen.add(uuid)
        try:
            index = int(m.get("gpu", "0"))
        except ValueError:
            continue
        out.append(
            GpuSpec(
                node=node,
                index=index,
                uuid=uuid,
                name=m.get("model") or m.get("name", ""),
                up=up.get((node, uuid), False),
                instance=m.get("instance", ""),
            )
        )
    return out


class PrometheusDiscovery:
    """Refreshes the inventory from Prometheus in a daemon thread."""

    def __init__(
        self,
        sync: Callable[[list[GpuSpec], str], None],
        url: str,
        refresh_seconds: float = 30.0,
        node_label: str = "instance",
        timeout: float = 10.0,
        source: str = "gpuwarden",
        job_selector: str | None = None,
    ) -> None:
        self.sync, self.url, self.refresh = sync, url, refresh_seconds
        self.node_label, self.timeout = node_label, timeout
        self.source, self.job_selector = sources.check(source), job_selector
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_duration = 0.0  # seconds the last refresh took (query + sync), for /metrics

    def refresh_once(self) -> bool:
        t0 = time.monotonic()
        try:
            specs = prometheus_specs(self.url, self.node_label, self.timeout, self.source, self.job_selector)
        except (PrometheusError, ValueError, KeyError, InventoryError) as exc:
            log.warning("inventory: Prometheus discovery from %s failed (inventory unchanged): %s", self.url, exc)
            return False
        if not specs:
            # An empty answer usually means the exporter is not scraped yet: never mark the fleet lost on it.
            log.warning("inventory: %s returned no %s GPU series; inventory unchanged", self.url, self.source)
            return False
        self.sync(specs, "prometheus")
        self.last_duration = time.monotonic() - t0
        return True

    def collect(self) -> Iterator[Metric]:
        """How long the last refresh took: against its period, the inventory's headroom at scale."""
        yield GaugeMetricFamily(
            "gpuwarden_inventory_refresh_duration_seconds",
            "Duration of the last successful inventory refresh from Prometheus (query and sync).",
            value=self.last_duration,
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="inventory", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh_once()
            self._stop.wait(self.refresh)

    def close(self) -> None:
        self._stop.set()
