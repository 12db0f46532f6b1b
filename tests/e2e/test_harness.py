"""The loop harness's own logic, without binaries: which fault drives which rule, where each
alert is routed, the floors, and thresholds as the rules judge each GPU."""

from __future__ import annotations

import pytest

from gpuwarden.rules import config as rules_config
from gpuwarden.stack import harness as L

CFG = rules_config.load()


def test_every_seed_rule_has_a_shipped_fault_that_clears() -> None:
    faults = L.shipped_faults()
    assert sorted(faults) == sorted(L.SEED_RULES)
    for rule, fault in faults.items():
        assert fault.inject_steps[0]["at"] == "0s", f"{rule}: its fault starts at once"
        doc = fault.doc(7, clear=True)
        assert doc["steps"] and all(s["gpu"] == 7 and s["at"] == "0s" for s in doc["steps"])


@pytest.mark.parametrize("rule", L.SEED_RULES)
def test_routes_and_floor_follow_the_shipped_alertmanager_tree(rule: str) -> None:
    spec = CFG.alerts[rule]
    routes = L.routes_for({"rule": rule, "severity": spec.severity, "action": spec.action})
    # Every seed rule reaches the agent first (continue: true), notify ones included (issue 8),
    # then on-call for criticals, chat for warnings.
    pager = "oncall" if spec.severity == "critical" else "chat"
    assert routes == [(L.AGENT_RECEIVER, 1.0), (pager, 10.0 if pager == "oncall" else 30.0)]
    assert L.receiver_for(spec) == L.AGENT_RECEIVER and L.pager_for(spec) == pager
    for receiver in (L.receiver_for(spec), pager):
        wait = dict(routes)[receiver]
        assert L.floor_seconds(spec, receiver) == spec.for_seconds + L.SCRAPE_INTERVAL + L.EVALUATION_INTERVAL + wait


def test_floor_refuses_a_receiver_the_alert_never_reaches() -> None:
    with pytest.raises(L.LoopError, match="does not reach receiver"):
        L.floor_seconds(CFG.alerts["THERMAL_WARNING"], "oncall")


def test_thresholds_follow_profiles_and_the_gpus_own_limits() -> None:
    base = {
        "temperature_celsius": 86.0,
        "power_watts": 430.0,
        "power_limit_watts": 700.0,
        "ecc_correctable": 0,
        "ecc_uncorrectable": 0,
        "throttle_reasons": 0,
        "memory_ratio": 0.5,
    }
    default = CFG.alerts["POWER_SPIKE"]
    assert L.crossed(default, base, base) and not L.crossed(default, {**base, "power_watts": 400.0}, base)
    if CFG.profiles:  # a profile's relative threshold moves with the GPU's enforced limit
        relative = next(
            p.alerts["POWER_SPIKE"]
            for p in CFG.profiles.values()
            if "POWER_SPIKE" in p.alerts and getattr(p.alerts["POWER_SPIKE"], "relative", None)
        )
        at_limit = {**base, "power_watts": 700.0}
        assert L.threshold_now(relative, at_limit, None) == relative.relative.threshold(700.0)
        lowered = {**at_limit, "power_limit_watts": 500.0}
        assert L.threshold_now(relative, lowered, None) == relative.relative.threshold(500.0)
    warning = CFG.alerts["THERMAL_WARNING"]
    assert L.crossed(warning, base, base) and not L.crossed(warning, {**base, "temperature_celsius": 79.9}, base)
    growth = CFG.alerts["ECC_ERRORS_SPIKE"]
    assert not L.crossed(growth, {**base, "ecc_correctable": 109}, {**base, "ecc_correctable": 100})
    assert L.crossed(growth, {**base, "ecc_correctable": 110}, {**base, "ecc_correctable": 100})
