"""docs/OBSERVABILITY.md is what docs/generate_observability.py makes from the running code and
the generated rules: a metric added to the exporter or the agent, or an alert added to
rules/thresholds.yaml, fails this test until the doc is regenerated."""

from __future__ import annotations

import importlib.util
import re
import sys
from types import ModuleType

from gpuwarden.rules import config as rules_config
from tests.deploy.conftest import REPO

CONTRACT_METRICS = (  # BRIEF.md's exporter contract and DESIGN.md's agent names
    "gpu_info",
    "gpu_up",
    "gpu_temperature_celsius",
    "gpu_memory_temperature_celsius",
    "gpu_power_watts",
    "gpu_power_limit_watts",
    "gpu_energy_joules_total",
    "gpu_utilization_ratio",
    "gpu_memory_utilization_ratio",
    "gpu_memory_used_bytes",
    "gpu_memory_total_bytes",
    "gpu_ecc_errors_correctable_total",
    "gpu_ecc_errors_uncorrectable_total",
    "gpu_retired_pages",
    "gpu_remapped_rows",
    "gpu_throttle_active",
    "gpu_sm_clock_hertz",
    "gpu_memory_clock_hertz",
    "gpu_fan_speed_ratio",
    "gpu_pcie_replays_total",
    "gpu_xid_errors_total",
    "gpuwarden_exporter_nvml_up",
    "gpuwarden_exporter_collect_duration_seconds",
    "gpuwarden_exporter_nvml_errors_total",
    "gpuwarden_exporter_gpu_stale",
    "jobs_submitted_total",
    "jobs_pending",
    "job_duration_seconds",
    "cluster_gpus_available",
    "alerts_active",
    "gpu_state",
)


def _generator() -> ModuleType:
    path = REPO / "docs" / "generate_observability.py"
    spec = importlib.util.spec_from_file_location("generate_observability", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_committed_doc_is_fresh() -> None:
    gen = _generator()
    fresh = gen.generate()
    committed = (REPO / "docs" / "OBSERVABILITY.md").read_text()
    assert committed == fresh, "docs/OBSERVABILITY.md is stale: run 'python docs/generate_observability.py'"

    listed = set(re.findall(r"^\| `([a-z_:0-9]+)` \|", fresh, flags=re.M))
    missing = [m for m in CONTRACT_METRICS if m not in listed]
    assert not missing, f"metrics of the contract missing from the doc: {missing}"
    cfg = rules_config.load()
    for rule in cfg.all_alerts():
        assert f"| `{rule.alert}` | {rule.rule} |" in fresh, f"alert {rule.alert} ({rule.rule}) missing from the doc"


def test_families_parse_types_help_and_labels() -> None:
    """The parser keeps counters' _total, drops histogram bucket labels, and collects labels."""
    gen = _generator()
    text = (
        '# HELP a_total A counter.\n# TYPE a_total counter\na_total{gpu="0",uuid="u"} 1.0\n'
        '# HELP h A histogram.\n# TYPE h histogram\nh_bucket{le="1.0"} 0.0\nh_bucket{le="+Inf"} 0.0\n'
        "h_count 0.0\nh_sum 0.0\n"
        "# HELP e Empty family.\n# TYPE e gauge\n"
    )
    fams = {f.name: f for f in gen.families(text)}
    assert set(fams) == {"a_total", "h", "e"}
    assert (fams["a_total"].type, fams["a_total"].labels) == ("counter", {"gpu", "uuid"})
    assert (fams["h"].type, fams["h"].labels, fams["e"].help) == ("histogram", set(), "Empty family.")
