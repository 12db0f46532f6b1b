"""deploy/kubernetes: every manifest parsed; labels, selectors, ports and references consistent
with each other and with the exporter's (9786) and agent's (9787) defaults; the PrometheusRule is
the generated one; the agent's ConfigMap is a config the agent accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuwarden.rules import config as rules_config
from tests.deploy.conftest import AGENT_PORT, DEPLOY, EXPORTER_PORT, REPO, check_agent_config, k8s_docs, kustomize

K8S = DEPLOY / "kubernetes"
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _all() -> list[dict[str, Any]]:
    return [d for name in MANIFESTS for d in k8s_docs(name)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _all() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/kubernetes, found {len(found)}"
    return found[0]


def _subset(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("doc", _all(), ids=lambda d: f"{d.get('kind')}/{d.get('metadata', {}).get('name')}")
def test_required_fields(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
    assert "namespace" not in doc["metadata"], "the namespace comes from kustomization.yaml"
    if doc["kind"] not in ("Namespace",):
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"].startswith("gpuwarden")


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == MANIFESTS
    assert kust["namespace"] == _one("Namespace", "gpuwarden")["metadata"]["name"]


@pytest.mark.binaries
def test_kustomize_renders_every_manifest_in_the_namespace() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = kustomize(K8S)
    assert len(docs) == len(_all())
    assert all(d["metadata"].get("namespace") == kust["namespace"] for d in docs if d["kind"] != "Namespace")


def test_prometheusrule_is_the_generated_one() -> None:
    generated = REPO / "rules" / "generated" / "gpuwarden.prometheusrule.yaml"
    assert (K8S / "prometheusrule.yaml").read_bytes() == generated.read_bytes(), (
        "deploy/kubernetes/prometheusrule.yaml differs from the generated rules: "
        "cp rules/generated/gpuwarden.prometheusrule.yaml deploy/kubernetes/prometheusrule.yaml"
    )


@pytest.mark.parametrize(
    "kind,name,port,port_name",
    [
        ("DaemonSet", "gpuwarden-exporter", EXPORTER_PORT, "metrics"),
        ("Deployment", "gpuwarden-agent", AGENT_PORT, "http"),
    ],
)
def test_workload_service_and_servicemonitor_agree(kind: str, name: str, port: int, port_name: str) -> None:
    workload = _one(kind, name)
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert _subset(workload["spec"]["selector"]["matchLabels"], pod_labels)
    ports = {p["name"]: p["containerPort"] for p in _container(workload)["ports"]}
    assert ports == {port_name: port}

    service = _one("Service", name)
    assert _subset(service["spec"]["selector"], pod_labels)
    [sport] = service["spec"]["ports"]
    assert (sport["name"], sport["port"], sport["targetPort"]) == (port_name, port, port_name)

    monitor = _one("ServiceMonitor", name)
    assert _subset(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port_name]
    # No jobLabel: the Prometheus job is the Service's name, which the rules and dashboards select.
    assert "jobLabel" not in monitor["spec"]


def test_exporter_job_matches_the_rules() -> None:
    """Every generated rule selects job=<settings.exporter_job>; the ServiceMonitor's job is the
    Service's name, so the two must be equal or no alert can ever fire."""
    job = rules_config.load().exporter_job
    assert _one("Service", "gpuwarden-exporter")["metadata"]["name"] == job
    generated = (K8S / "prometheusrule.yaml").read_text()
    assert f'job="{job}"' in generated


def test_exporter_daemonset() -> None:
    ds = _one("DaemonSet", "gpuwarden-exporter")
    c = _container(ds)
    assert c["command"] == ["gpuwarden-exporter"]
    assert f"--web.listen-address=:{EXPORTER_PORT}" in c["args"]
    assert not any(a.startswith("--simulate") or a.startswith("--scenario") for a in c["args"])
    # Sees every GPU without taking any from the device plugin.
    assert "nvidia.com/gpu" not in str(c.get("resources", {}))
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert c["readinessProbe"]["httpGet"]["port"] == "metrics"
    monitor = _one("ServiceMonitor", "gpuwarden-exporter")
    [relabel] = monitor["spec"]["endpoints"][0]["relabelings"]
    assert relabel == {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"}


def test_agent_deployment_config_and_references(tmp_path: Path) -> None:
    dep = _one("Deployment", "gpuwarden-agent")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate", (
        "one writer of the SQLite state"
    )
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    assert c["command"] == ["gpuwarden-agent"] and c["args"][0] == "serve"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert set(mounts) == set(volumes)

    cm_name = volumes["config"]["configMap"]["name"]
    cm = _one("ConfigMap", cm_name)
    config_path = mounts["config"]["mountPath"]
    assert c["args"][1] == f"--config={config_path}"
    doc = check_agent_config(cm["data"][mounts["config"]["subPath"]], tmp_path, f"ConfigMap/{cm_name}")

    assert doc["web"]["listen_address"] == f":{AGENT_PORT}"
    secret = volumes["tokens"]["secret"]
    paths = {i["key"]: f"{mounts['tokens']['mountPath']}/{i['path']}" for i in secret["items"]}
    # Two roles, two tokens: Alertmanager's opens the webhook only, the operator's the rest.
    assert doc["remediation"]["auth"]["bearer_token_file"] == paths["webhook"]
    assert doc["web"]["token_file"] == paths["operator"] != paths["webhook"]
    # The Secret is created by the operator (never shipped with a value); the comment says how.
    assert not [d for d in _all() if d["kind"] == "Secret"]
    text = (K8S / "agent.yaml").read_text()
    assert f"create secret generic {secret['secretName']}" in text
    assert "--from-literal=webhook=" in text and "--from-literal=operator=" in text

    claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    _one("PersistentVolumeClaim", claim)
    assert doc["database"]["path"].startswith(mounts["state"]["mountPath"] + "/")
    assert doc["executor"]["kind"] == "tracking", "a pod cannot run jobs on the GPU nodes itself"
    assert doc["inventory"]["prometheus"]["node_label"] == "instance"


def test_image_is_built_from_this_repository() -> None:
    """The manifests' image is the one deploy/Dockerfile builds: it copies every package the
    console scripts import (so `gpuwarden-exporter` and `gpuwarden-agent` exist in it)."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    images = {
        _container(_one(k, n))["image"]
        for k, n in (("DaemonSet", "gpuwarden-exporter"), ("Deployment", "gpuwarden-agent"))
    }
    assert len(images) == 1 and next(iter(images)) in dockerfile
    for package in ("gpuwarden", "exporter", "rules", "scheduler_agent", "dashboards", "alertmanager"):
        assert f"COPY {package} ./{package}" in dockerfile
