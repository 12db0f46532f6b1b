"""The dcgm-exporter dashboard against a real Prometheus 2.42 scraping dcgm-exporter's own
published ``/metrics`` (tests/fixtures/dcgm-exporter/, served by tests/e2e/dcgm.py) with the
generated dcgm-exporter rules loaded, the agent discovering its GPUs from the same series.

The served text gets what dcgm-exporter writes when run with the shipped counters CSV
(rules/generated/dcgm-exporter/dcgm-exporter-counters.csv): each field of the CSV the published
lines lack is added for every GPU, with the labels of its temperature lines (as tests/e2e does).
Then a throttled GPU, a fatal XID, an uncorrectable ECC error, a heating GPU and jobs that finish
and fail give every panel something to show. Every panel's query must return data, and the
per-GPU panels show one series per GPU (MIG instances and pods folded into their GPU).
"""

from __future__ import annotations

import csv
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuwarden.dashboards import queries, render
from gpuwarden.dashboards.generate import OUTPUTS
from gpuwarden.prom import PrometheusClient, Series
from tests.dashboards.live import VALUES, empty_queries
from tests.e2e.dcgm import DCGM_RULES, DcgmStack, MetricsServer, add_family, fixture, set_value
from tests.helpers import REPO, wait_until

pytestmark = [pytest.mark.binaries, pytest.mark.slow]

# GPUs of the published samples (tests/fixtures/dcgm-exporter/README.md).
A30_MIG_0 = "GPU-265c9814-6156-355b-e589-ff2064894f16"  # issue317, 4 MIG instances: ECC
A30_MIG_1 = "GPU-2d20791a-b4a6-ba59-97f1-e95b99fe5b49"  # issue317, 2 MIG instances: XID 79
A30_POD = "GPU-9a63752e-af8d-fe52-7f0d-968bca6d52e3"  # pr736, held by a pod: heats
RTX = "GPU-fc60126e-514d-3522-2828-c5daa8e99d85"  # pr736, no MIG: throttled (sw_power_cap)
ALL_GPUS = 5
FB_USED_MIB = 1000

# The value each added field starts at, per GPU (MiB, W, %, counts, a bitmask, the last XID).
STARTING = {
    "DCGM_FI_DEV_POWER_USAGE": 60,
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": 165,
    "DCGM_FI_DEV_SLOWDOWN_TEMP": 90,
    "DCGM_FI_DEV_FB_USED": FB_USED_MIB,
    "DCGM_FI_DEV_GPU_UTIL": 40,
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": 0,
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 0,
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": 0,
    "DCGM_FI_DEV_XID_ERRORS": 0,
}


def counters_csv() -> list[tuple[str, str]]:
    """(field, Prometheus type) of every line of the shipped counters CSV."""
    text = (DCGM_RULES / "dcgm-exporter-counters.csv").read_text()
    rows = csv.reader(line for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return [(r[0].strip(), r[1].strip()) for r in rows]


def with_counters_csv(text: str) -> str:
    """``text`` as dcgm-exporter writes it with the shipped CSV: its missing fields added per GPU."""
    uuids = sorted(set(re.findall(r'UUID="([^"]+)"', text)))
    for field, kind in counters_csv():
        if re.search(rf"^{field}{{", text, re.M):
            continue
        for uuid in uuids:
            text = add_family(field, kind, uuid, STARTING[field])(text)
    return text


class DashboardStack(DcgmStack):
    """tests/e2e's dcgm stack, the agent also running jobs (local executor) and its predictor
    (the shipped thresholds over dcgm-exporter, as deploy/kubernetes-dcgm-exporter mounts them)."""

    def _write(self) -> dict[str, Path]:
        paths = super()._write()
        thresholds = REPO / "deploy" / "kubernetes-dcgm-exporter" / "thresholds.yaml"
        agent = yaml.safe_load(paths["agent"].read_text())
        agent["executor"] = {"kind": "local", "log_dir": "job-logs"}
        agent["predictor"] = {
            "prometheus_url": self.prometheus_url,
            "period_seconds": 2,
            "window_seconds": 60,
            "step_seconds": 1,
            "migrate": False,
            "rules_file": str(thresholds),
        }
        paths["agent"].write_text(yaml.safe_dump(agent, sort_keys=False))
        return paths


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[tuple[DashboardStack, MetricsServer, MetricsServer]]:
    mig = MetricsServer(with_counters_csv(fixture("issue317-a30-mig.prom")))
    k8s = MetricsServer(with_counters_csv(fixture("pr736-k8s-mixed.prom")))
    running = DashboardStack(tmp_path, {"nvidia-dcgm-exporter": [mig], "dcgm-exporter": [k8s]})
    try:
        running.start()
        yield running, mig, k8s
    finally:
        running.stop()
        mig.stop()
        k8s.stop()


def _panel(prom: PrometheusClient, dashboard: dict[str, Any], title: str, ref: str = "A") -> list[Series]:
    [q] = [
        q
        for q in queries.panel_queries(dashboard)
        if q.panel and q.panel["title"] == title and q.target and q.target["refId"] == ref
    ]
    return prom.query(queries.substitute(q.expr, VALUES))


def _by(series: list[Series], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels.get(k, "") for k in labels): s.values[-1] for s in series}


def test_every_panel_of_the_dcgm_dashboard_returns_data(
    stack: tuple[DashboardStack, MetricsServer, MetricsServer], committed_dcgm: dict[str, Any], tmp_path: Path
) -> None:
    s, mig, k8s = stack
    since = time.time()
    s.wait_gpus(ALL_GPUS)
    prom = s.prom()

    # Before any fault: the per-GPU panels fold MIG instances and pods into one series per GPU.
    series = wait_until(
        lambda: (r := _panel(prom, committed_dcgm, "Temperature")) and len(r) == ALL_GPUS and r,
        30,
        0.5,
        "a temperature line per GPU (the recorded thresholds too)",
    )
    temps = _by(series, "instance", "gpu")
    assert len(temps) == ALL_GPUS and temps[(mig.target, "0")] == 35 and temps[(k8s.target, "0")] == 50, temps
    series = wait_until(  # issue317's 6 MIG records of its 2 GPUs folded into 2 per rule
        lambda: (r := _panel(prom, committed_dcgm, "Temperature", "B")) and len(r) >= 2 * ALL_GPUS and r,
        30,
        0.5,
        "the recorded thresholds",
    )
    lines = _by(series, "instance", "gpu", "rule")
    assert len(series) == len(lines) == 2 * ALL_GPUS and set(lines.values()) == {80.0, 85.0}, lines
    pressure = _by(_panel(prom, committed_dcgm, "Memory pressure"), "instance", "gpu")
    assert pressure[(mig.target, "0")] == pytest.approx(FB_USED_MIB / (FB_USED_MIB + 6012)), pressure
    used = _by(_panel(prom, committed_dcgm, "Memory used"), "instance", "gpu")
    assert set(used.values()) == {FB_USED_MIB * 1048576.0}, used
    assert set(_by(_panel(prom, committed_dcgm, "Utilization"), "gpu").values()) == {0.4}
    variables = {name: (selector, label) for name, selector, label in queries.variable_selectors(committed_dcgm)}
    selector, label = variables["instance"]
    assert set(prom.label_values(label, [selector])) == {mig.target, k8s.target}

    # Faults as dcgm-exporter would show them, and a GPU heating for the forecasts.
    k8s.edit(set_value("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", RTX, 0x4))  # sw_power_cap
    mig.edit(set_value("DCGM_FI_DEV_XID_ERRORS", A30_MIG_1, 79))
    mig.edit(set_value("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", A30_MIG_0, 12))
    mig.edit(set_value("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", A30_MIG_0, 1))
    stop = threading.Event()

    def heat() -> None:
        temp = 50.0
        while not stop.wait(1) and temp < 84:
            temp += 0.5
            k8s.edit(set_value("DCGM_FI_DEV_GPU_TEMP", A30_POD, temp))

    heater = threading.Thread(target=heat, daemon=True)
    heater.start()
    try:
        _run_jobs(s)
        last: list[list[str]] = [[]]

        def all_have_data() -> bool:
            last[0] = empty_queries(s.prometheus_url, committed_dcgm, since)
            return not last[0]

        deadline = time.monotonic() + 120
        while not all_have_data() and time.monotonic() < deadline:
            time.sleep(2)
        assert not last[0], "queries without data after 120 s:\n" + "\n".join(last[0])
    finally:
        stop.set()
        heater.join()

    # The values are the served ones, per GPU.
    throttled = _by(_panel(prom, committed_dcgm, "Throttling"), "instance", "gpu")
    assert throttled == {**{k: 0.0 for k in temps}, (k8s.target, "1"): 1.0}, throttled
    xid = _by(_panel(prom, committed_dcgm, "XID errors"), "instance", "gpu", "xid")
    assert set(xid) == {(mig.target, "1", "79")}, xid
    firing = {(a.labels["rule"], a.labels["uuid"]) for a in prom.query('ALERTS{alertstate="firing", rule!=""}')}
    assert {("ECC_UNCORRECTABLE", A30_MIG_0), ("XID_FATAL", A30_MIG_1)} <= firing, firing
    # The agent's and the predictor's per-GPU series carry the dcgm-exporter target as instance.
    held = [k for k in _by(_panel(prom, committed_dcgm, "GPU allocations"), "instance", "job_name") if k[1] == "held"]
    assert len(held) == 1 and held[0][0] in (mig.target, k8s.target), held
    assert set(_by(_panel(prom, committed_dcgm, "Failure risk"), "instance", "gpu")) == set(temps)
    forecasts = wait_until(
        lambda: _by(_panel(prom, committed_dcgm, "Time to threshold"), "instance", "gpu", "metric"),
        30,
        1,
        "a forecast",
    )
    assert (k8s.target, "0", "temperature") in forecasts, forecasts

    out = tmp_path / "fleet-dcgm.png"
    drawn = render.render(prom, out, range_s=time.time() - since + 5, dashboard=OUTPUTS["dcgm-exporter"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(n > 0 for n in drawn.values()), drawn


def _run_jobs(s: DashboardStack) -> None:
    """A job that holds its GPU (allocations table) and jobs that finish and fail (histogram)."""
    s.agent("/api/v1/jobs", {"name": "held", "gpus": 1})
    for i, (argv, name) in enumerate([(["true"], "ok"), (["sleep", "0.5"], "ok"), (["false"], "fails")] * 2):
        s.agent("/api/v1/jobs", {"name": f"{name}-{i}", "gpus": 1, "command": argv})
