"""deploy/kubernetes-dcgm-exporter: the Kubernetes deployment for a cluster whose GPUs
dcgm-exporter reports. Its PrometheusRule is the generated dcgm-exporter one; it holds everything
of deploy/kubernetes but gpuwarden-exporter and the gpuwarden-exporter rules (rendered with
kubectl's kustomize where kubectl is installed, else from the files)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import yaml

from tests.deploy.conftest import DEPLOY, REPO

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

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return  # not a skip: the files were cross-checked above
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    base_out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "kubernetes")], capture_output=True, text=True, timeout=60
    )
    assert base_out.returncode == 0, base_out.stderr
    base_docs = [d for d in yaml.safe_load_all(base_out.stdout) if d]
    assert _ids(docs) == _ids(base_docs) - EXPORTER_OBJECTS
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    generated = yaml.safe_load(GENERATED.read_text())
    assert rule["spec"] == generated["spec"]
    assert rule["metadata"]["namespace"] == base["namespace"]
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert all("gpuwarden-exporter" not in e for e in exprs)
    assert any("DCGM_FI_DEV_GPU_TEMP" in e for e in exprs)
