"""dcgm-exporter's own published /metrics, served to a real Prometheus with the generated
dcgm-exporter rules: a hot GPU, an XID and an uncorrectable ECC count written into it fire the
same alerts gpuwarden-exporter's series would, with lowercase uuid/gpu/instance and the pod
attribution labels kept, through Alertmanager's shipped routes to the agent's audit. The agent
discovers its GPUs from the same DCGM series. Then ``gpuwarden-rules doctor`` against that
Prometheus: which rules cannot fire, and why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuwarden.rules import cli
from tests.e2e.dcgm import DcgmStack, MetricsServer, add_family, fixture, set_value
from tests.helpers import wait_until

pytestmark = [pytest.mark.binaries, pytest.mark.slow]

# GPUs of the published samples (tests/fixtures/dcgm-exporter/README.md).
A30_MIG_0 = "GPU-265c9814-6156-355b-e589-ff2064894f16"  # issue317: ECC fault
A30_MIG_1 = "GPU-2d20791a-b4a6-ba59-97f1-e95b99fe5b49"  # issue317: XID fault
A30_POD = "GPU-9a63752e-af8d-fe52-7f0d-968bca6d52e3"  # pr736: held by a pod: the hot GPU
ALL_GPUS = 5  # 2 in issue317, 3 in pr736


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DcgmStack, MetricsServer, MetricsServer]]:
    mig = MetricsServer(fixture("issue317-a30-mig.prom"))
    k8s = MetricsServer(fixture("pr736-k8s-mixed.prom"))
    # Both of the usual job names: the GPU Operator's and the Helm chart's.
    running = DcgmStack(tmp_path_factory.mktemp("dcgm"), {"nvidia-dcgm-exporter": [mig], "dcgm-exporter": [k8s]})
    try:
        running.start()
        yield running, mig, k8s
    finally:
        running.stop()
        mig.stop()
        k8s.stop()


def test_faults_in_real_dcgm_output_reach_the_agent(stack: tuple[DcgmStack, MetricsServer, MetricsServer]) -> None:
    s, mig, k8s = stack
    gpus = s.wait_gpus(ALL_GPUS)
    models = {g["uuid"]: g.get("name") for g in gpus}
    assert models[A30_POD] == "NVIDIA A30" and len(models) == ALL_GPUS

    # Nothing fires on the published values (35-50 °C, XID 0, no ECC field).
    assert not [a for a in s.prom().alerts() if a["labels"].get("severity") == "critical"]

    k8s.edit(set_value("DCGM_FI_DEV_GPU_TEMP", A30_POD, 90))
    mig.edit(set_value("DCGM_FI_DEV_XID_ERRORS", A30_MIG_1, 79))
    mig.edit(add_family("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", A30_MIG_0, 1))

    hot = wait_until(lambda: s.firing("GPUThermalCritical"), timeout=90, interval=1, what="GPUThermalCritical")
    labels = hot[0]["labels"]
    assert (labels["uuid"], labels["gpu"], labels["instance"]) == (A30_POD, "0", k8s.target)
    assert (labels["rule"], labels["action"], labels["severity"]) == ("THERMAL_CRITICAL", "throttle", "critical")
    # dcgm-exporter's own pod attribution survives into the alert.
    assert (labels["pod"], labels["namespace"]) == ("triton-server-f7cb5d77-wwk9g", "default")
    assert "DCGM_FI_DEV_GPU_TEMP is 90°C, above 85°C" in hot[0]["annotations"]["description"]

    xid = wait_until(lambda: s.firing("GPUFatalXID"), timeout=30, interval=1, what="GPUFatalXID")
    assert {(a["labels"]["uuid"], a["labels"]["xid"], a["labels"]["GPU_I_ID"]) for a in xid} == {
        (A30_MIG_1, "79", "3"),
        (A30_MIG_1, "79", "4"),
    }
    ecc = wait_until(lambda: s.firing("GPUECCUncorrectable"), timeout=30, interval=1, what="GPUECCUncorrectable")
    assert {a["labels"]["uuid"] for a in ecc} == {A30_MIG_0}
    assert {a["labels"]["instance"] for a in ecc} == {mig.target}

    # Through Alertmanager's routes to the agent: each alert in its audit, with its action.
    for uuid, rule, action in (
        (A30_POD, "THERMAL_CRITICAL", "throttle"),
        (A30_MIG_1, "XID_FATAL", "quarantine"),
        (A30_MIG_0, "ECC_UNCORRECTABLE", "quarantine"),
    ):
        audit = wait_until(
            lambda u=uuid, r=rule: [a for a in s.actions(u) if a["rule"] == r],
            timeout=60,
            interval=0.5,
            what=f"the agent's audit of {rule} on {uuid}",
        )
        assert {a["action"] for a in audit} == {action}, audit
        if action == "quarantine":
            assert "acted" in {a["outcome"] for a in audit}, audit
    delivered = {(a["labels"]["alertname"], a["labels"].get("uuid")) for a in s.alertmanager_alerts()}
    assert ("GPUThermalCritical", A30_POD) in delivered
    quarantined = {
        g["uuid"] for g in s.agent("/api/v1/gpus") if g.get("quarantined") or g.get("state") == "quarantined"
    }
    assert {A30_MIG_0, A30_MIG_1} <= quarantined, s.agent("/api/v1/gpus")


def test_doctor_names_what_the_default_counters_miss(
    stack: tuple[DcgmStack, MetricsServer, MetricsServer], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The published samples have dcgm-exporter's default counters: no throttle reasons, no
    correctable ECC; temperature, power and XID are there. Doctor says so, and exits 1 while a
    critical rule cannot fire."""
    s, mig, _ = stack
    s.wait_gpus(ALL_GPUS)
    code = cli.main(["doctor", "--source", "dcgm-exporter", "--prometheus", s.prometheus_url])
    out = capsys.readouterr().out
    assert "5 GPUs reported" in out
    assert (
        "FAIL THROTTLING (GPUThrottling, warning) cannot fire: no DCGM_FI_DEV_CLOCK_THROTTLE_REASONS or "
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS series: enable it in the counters CSV" in out
    )
    assert "FAIL ECC_ERRORS_SPIKE" in out and "no DCGM_FI_DEV_ECC_SBE_VOL_TOTAL series" in out
    assert "ok   THERMAL_CRITICAL (GPUThermalCritical, critical): covers 5/5 GPUs" in out
    # pr736's GPUs publish no power: POWER_CRITICAL covers only issue317's two, and says where not.
    assert "FAIL POWER_CRITICAL (GPUPowerCritical, critical): covers 2/5 GPUs; cannot fire on" in out
    assert code == 1

    # Under the wrong job selector: every rule, and where the series are instead.
    thresholds = tmp_path / "thresholds.yaml"
    from gpuwarden.rules import config as rules_config

    text = rules_config.DEFAULT_PATH.read_text().replace(
        "  source: gpuwarden\n", '  source: dcgm-exporter\n  job_selector: job="dcgm"\n'
    )
    thresholds.write_text(text)
    code = cli.main(["doctor", "--config", str(thresholds), "--prometheus", s.prometheus_url])
    out = capsys.readouterr().out
    assert code == 1
    assert 'no DCGM_FI_DEV_GPU_TEMP series under job="dcgm", but under job dcgm-exporter, nvidia-dcgm-exporter' in out
