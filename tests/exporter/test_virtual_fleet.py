"""The virtual fleet: the simulator's physics on arrays, the exporter's names, one target per node."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.exporter.sim.clock import ManualClock
from gpuwarden.exporter.sim.fleet import Fleet
from gpuwarden.exporter.sim.virtual import VirtualFleet, Watch
from gpuwarden.exporter.sim.virtual_server import VirtualFleetServer
from gpuwarden.prom import PrometheusClient
from gpuwarden.stack import configs
from tests.helpers import REPO, Proc, free_port, require_binary, wait_until

GOLDEN = Path(__file__).parent / "golden" / "metrics-8gpu.prom"
# The exporter's own bookkeeping, which a virtual node (no NVML) has no counterpart for.
EXPORTER_ONLY = {
    "gpuwarden_exporter_collect_duration_seconds",
    "gpuwarden_exporter_nvml_calls_total",
    "gpuwarden_exporter_nvml_errors_total",
}


def _families(text: str) -> dict[str, set[frozenset[str]]]:
    """sample name -> the label-name sets its samples carry."""
    out: dict[str, set[frozenset[str]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, set()).add(frozenset(s.labels))
    return out


def _read_by_rules() -> set[str]:
    """The exporter's metric names the generated rules select (what alerts and forecasts read)."""
    names: set[str] = set()
    for path in configs.RULES_DIR.glob("*.rules.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                names |= set(re.findall(r"\b(gpu_[a-z_]+|gpuwarden_exporter_[a-z_]+)\{", rule["expr"]))
    return names


def test_a_node_exposes_what_the_rules_read_with_the_exporters_labels() -> None:
    golden = _families(GOLDEN.read_text().replace("<duration>", "0.001"))
    fleet = VirtualFleet(2, model="h100")
    fleet.inject([fleet.gpu("node-0001:1")], {"kind": "xid", "xid": 48})
    ours = _families(fleet.render(1).decode())
    read = _read_by_rules()
    assert {"gpu_info", "gpu_up", "gpu_temperature_celsius", "gpu_power_watts", "gpu_xid_errors_total"} <= read
    for name in read | {"gpu_info", "gpu_up", "gpu_utilization_ratio"}:  # + what inventory, predictor read
        assert name in ours, f"{name} missing from a virtual node"
        if name in golden:
            assert ours[name] == golden[name], name
    assert ours["gpu_xid_errors_total"] == {frozenset({"gpu", "uuid", "xid"})}


def test_the_physics_follow_the_per_gpu_simulator() -> None:
    """A pinned load and a power spike: both simulators heat the same board the same way."""
    clock = ManualClock()
    ref = Fleet(1, clock=clock, model="h100")
    virtual = VirtualFleet(1, gpus_per_node=1, model="h100", clock=clock)
    ref.set_load(0, utilization=0.5)
    virtual.set_load([0], 0.5, None)
    ref.inject(0, {"kind": "power_spike", "watts": 400})
    virtual.inject([0], {"kind": "power_spike", "watts": 400})
    for _ in range(12):
        clock.advance(5.0)
        virtual.sync(force=True)
        want = ref.state()[0]
        got = virtual.state()[0]
        assert got["power_watts"] == pytest.approx(want["power_watts"], abs=0.5)
        assert got["temperature_celsius"] == pytest.approx(want["temperature_celsius"], abs=0.2)
        assert got["throttle_reasons"] == want["throttle_reasons"]
    ref.set_power_limit(0, 300)
    virtual.set_power_limit([0], 300)
    clock.advance(60)
    assert virtual.state()[0]["temperature_celsius"] == pytest.approx(ref.state()[0]["temperature_celsius"], abs=0.2)


def test_a_storm_hits_the_fraction_asked_and_records_crossings() -> None:
    clock = ManualClock()
    fleet = VirtualFleet(16, clock=clock)
    out = fleet.storm(
        0.25,
        [{"kind": "power_spike", "watts": 500}, {"kind": "ecc", "uncorrectable": 1}],
        seed=3,
        watch=[Watch("temperature_celsius", 80.0), Watch("throttle_active", 0.5)],
    )
    assert len(out["gpus"]) == 32
    assert len({g["uuid"] for g in out["gpus"]}) == 32
    spiked = [g["uuid"] for g in out["gpus"] if g["fault"]["kind"] == "power_spike"]
    # 500 W more puts most boards over their power limit: capped (throttled) from the fault's instant.
    capped = fleet.crossings()
    assert capped and set(capped) <= set(spiked)
    assert all(list(t) == ["throttle_active>0.5"] and t["throttle_active>0.5"] == [out["at"]] for t in capped.values())
    clock.advance(120)
    crossed = fleet.crossings()
    assert set(crossed) == set(spiked)  # only the heated boards pass 80 °C
    assert all(out["at"] < t["temperature_celsius>80"][0] <= out["at"] + 120.5 for t in crossed.values())
    # An episode that ends and starts again is a new rising edge (latency counts from the last):
    # capped at 200 W the board cools below 80 °C, uncapped it heats past it again.
    gpu = next(iter(capped))
    fleet.set_power_limit([fleet.uuids.index(gpu)], 200)
    clock.advance(600)
    fleet.set_power_limit([fleet.uuids.index(gpu)], 700)
    clock.advance(600)
    edges = fleet.crossings()[gpu]["temperature_celsius>80"]
    assert len(edges) >= 2 and edges[-1] > edges[0]
    with pytest.raises(ValueError, match="NVML"):
        fleet.inject([0], {"kind": "hang"})


def _prometheus_config(tmp: Path, targets: list[dict[str, object]]) -> Path:
    (tmp / "targets.json").write_text(json.dumps(targets))
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": sorted(str(p) for p in configs.RULES_DIR.glob("*.rules.yml")),
        "scrape_configs": [
            {"job_name": "gpuwarden-exporter", "file_sd_configs": [{"files": [str(tmp / "targets.json")]}]}
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.binaries
def test_each_node_is_its_own_target_and_an_injected_fault_fires(tmp_path: Path) -> None:
    fleet = VirtualFleet(3)
    server = VirtualFleetServer(fleet).start()
    port = free_port()
    prom = Proc(
        [
            require_binary("prometheus"),
            f"--config.file={_prometheus_config(tmp_path, server.targets)}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
    )
    try:
        client = PrometheusClient(f"http://127.0.0.1:{port}", timeout=5)

        def up() -> dict[str, float]:
            return {s.labels["instance"]: s.values[-1] for s in client.query('up{job="gpuwarden-exporter"}')}

        wait_until(lambda: up() == {f"node-000{i}:9400": 1.0 for i in range(3)}, 30, what="three targets up")
        instances = {s.labels["instance"] for s in client.query("gpu_info")}
        assert instances == {"node-0000:9400", "node-0001:9400", "node-0002:9400"}
        assert len(client.query("gpu_info")) == 24

        fleet.set_node_down("node-0002", True)
        fleet.inject([fleet.gpu("node-0001:2")], {"kind": "ecc", "uncorrectable": 1})
        wait_until(lambda: up().get("node-0002:9400") == 0.0, 20, what="node-0002's up to drop to 0")
        assert up()["node-0000:9400"] == 1.0

        def fired() -> list[dict[str, str]]:
            return [a["labels"] for a in client.alerts() if a["labels"]["alertname"] == "GPUECCUncorrectable"]

        labels = wait_until(fired, 30, what="GPUECCUncorrectable")
        assert [(a["instance"], a["gpu"], a["uuid"]) for a in labels] == [
            ("node-0001:9400", "2", fleet.uuids[fleet.gpu("node-0001:2")])
        ]
    finally:
        prom.stop()
        server.stop()


@pytest.mark.binaries
@pytest.mark.slow
def test_bench_fleet_smoke(tmp_path: Path) -> None:
    """``python -m bench.fleet`` at 4 nodes: sizes measured, two storms, nothing lost."""
    require_binary("prometheus")
    require_binary("alertmanager")
    out = tmp_path / "fleet.json"
    ecc = json.dumps([{"kind": "ecc", "uncorrectable": 1}, {"kind": "ecc", "correctable": 20}])
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench.fleet", "--nodes", "4", "--sizes", "4", "--interval", "2",
            "--agent-period", "2", "--cycles", "1", "--storm", "0.25", "--storm-faults", ecc,
            "--json", str(out), "--workdir", str(tmp_path / "work"),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    (row,) = doc["sizes"]
    assert (row["nodes"], row["gpus"]) == (4, 32)
    assert row["series"] > 32 * 30 and 0 < row["rule_eval_seconds"] < row["eval_interval_seconds"]
    assert row["inventory_refresh_seconds"] > 0 and row["predictor_cycle_seconds"] > 0
    sized = doc["storm"]["sized_budget"]
    assert sized["storm_gpus"] == 8 and sized["lost"] == 0
    assert sized["storm_alerts"] == sized["received"] == 8  # one ECC rule per GPU
    assert sized["by_policy"]["quarantine"]["acted"] == 4
    for rule, stats in sized["per_rule"].items():
        assert stats["p99_seconds"] <= stats["floor_seconds"] + 15, rule
    assert doc["storm"]["default_budget"]["lost"] == 0
