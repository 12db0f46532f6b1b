"""deploy/kubernetes-dcgm-exporter: the Kubernetes deployment for a cluster whose GPUs
dcgm-exporter reports. Its PrometheusRule is the generated dcgm-exporter one; it holds everything
of deploy/kubernetes but gpuwarden-exporter and the gpuwarden-exporter rules (checked in the
files, and as kubectl's kustomize renders them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuwarden.rules import config as rules_config
from tests.deploy.conftest import DEPLOY, REPO, check_agent_config, kustomize

OVERLAY = DEPLOY / "kubernetes-dcgm-exporter"
GENERATED = REPO / "rules" / "generated" / "dcgm-exporter" / "gpuwarden.prometheusrule.yaml"
EXPORTER_OBJECTS = {
    ("DaemonSet", "gpuwarden-exporter"),
    ("Service", "gpuwarden-exporter"),
    ("ServiceMonitor", "gpuwarden-exporter"),
}


def test_prometheusrule_is_the_generated_dcgm_one() -> None:
    assert (OVERLAY / "prometheusrule.yaml").read_bytes() == GENERATED.read_bytes(), (
        "deploy/kubernetes-dcgm-exporter/prometheusrule.yaml differs from the generated rules: "
        "cp rules/generated/dcgm-exporter/gpuwarden.prometheusrule.yaml deploy/kubernetes-dcgm-exporter/"
    )


def _ids(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def test_overlay_swaps_the_exporter_and_its_rules_for_the_dcgm_rules() -> None:
    top = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    sub = yaml.safe_load((OVERLAY / "without-exporter" / "kustomization.yaml").read_text())
    assert top["resources"] == ["without-exporter", "prometheusrule.yaml"]
    assert sub["resources"] == ["../../kubernetes"]
    deleted = set()
    for p in sub["patches"]:
        doc = yaml.safe_load(p["patch"])
        assert doc.pop("$patch") == "delete"
        deleted.add((doc["kind"], doc["metadata"]["name"]))
    assert deleted == EXPORTER_OBJECTS | {("PrometheusRule", "gpuwarden")}
    base = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    assert top["namespace"] == base["namespace"]


@pytest.mark.binaries
def test_kustomize_renders_the_overlay_without_the_exporter() -> None:
    base = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    docs = kustomize(OVERLAY)
    base_docs = kustomize(DEPLOY / "kubernetes")
    assert _ids(docs) == _ids(base_docs) - EXPORTER_OBJECTS
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    generated = yaml.safe_load(GENERATED.read_text())
    assert rule["spec"] == generated["spec"]
    assert rule["metadata"]["namespace"] == base["namespace"]
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert all("gpuwarden-exporter" not in e for e in exprs)
    assert any("DCGM_FI_DEV_GPU_TEMP" in e for e in exprs)


def _agent_config(path: Path) -> str:
    """The agent.yaml text of the ConfigMap in deploy/kubernetes/agent.yaml, or a plain file."""
    doc = next(yaml.safe_load_all(path.read_text()))
    return doc["data"]["agent.yaml"] if doc.get("kind") == "ConfigMap" else path.read_text()


def test_the_agent_discovers_and_forecasts_from_dcgm_exporter(tmp_path: Path) -> None:
    """Without these two files the overlay's agent looked for gpuwarden-exporter's gpu_info in a
    cluster that has none, and found no GPU."""
    # thresholds.yaml: the shipped one but for settings.source (what make generate writes).
    shipped = (REPO / "rules" / "thresholds.yaml").read_text()
    assert "\n  source: gpuwarden\n" in shipped
    want = shipped.replace("\n  source: gpuwarden\n", "\n  source: dcgm-exporter\n", 1)
    assert (OVERLAY / "thresholds.yaml").read_text() == want, "make generate rewrites it"
    thresholds = rules_config.load(OVERLAY / "thresholds.yaml")
    assert thresholds.source == "dcgm-exporter"

    # agent.yaml: the base's, plus the source and the thresholds file, loaded as serve does.
    text = (OVERLAY / "agent.yaml").read_text()
    doc = check_agent_config(text, tmp_path, "deploy/kubernetes-dcgm-exporter/agent.yaml")
    base = yaml.safe_load(_agent_config(DEPLOY / "kubernetes" / "agent.yaml"))
    base["inventory"]["prometheus"]["source"] = "dcgm-exporter"
    base["predictor"]["rules_file"] = "thresholds.yaml"
    assert doc == base, "the overlay's agent.yaml differs from deploy/kubernetes/agent.yaml's"


@pytest.mark.binaries
def test_kustomize_mounts_the_agents_thresholds_beside_its_config() -> None:
    text = (OVERLAY / "agent.yaml").read_text()
    doc = yaml.safe_load(text)
    want = (OVERLAY / "thresholds.yaml").read_text()
    docs = kustomize(OVERLAY)
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "gpuwarden-agent"]
    pod = dep["spec"]["template"]["spec"]
    [cm_name] = [v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "config"]
    [cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name]
    assert cm["data"]["agent.yaml"] == text and cm["data"]["thresholds.yaml"] == want
    mounts = {m["subPath"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] == "config"}
    config_dir = Path(mounts["agent.yaml"]).parent
    assert mounts["thresholds.yaml"] == str(config_dir / doc["predictor"]["rules_file"])
