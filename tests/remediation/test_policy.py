"""Policy: throttle/restore, preempt, quarantine, escalation, dry-run, budget and breaker."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from gpuwarden import logs
from gpuwarden.scheduler_agent.remediation import cli as remediation_cli
from gpuwarden.scheduler_agent.remediation.config import parse
from gpuwarden.scheduler_agent.remediation.errors import PolicyConfigError
from tests.remediation.conftest import OPERATOR_TOKEN as OPERATOR
from tests.remediation.conftest import TOKEN, post
from tests.remediation.fakes import alert, notification


def deliver(rem, *alerts, run=True):
    rem.intake.accept(json.dumps(notification(*alerts)).encode())
    if run:
        rem.worker.run_once()


def outcomes(rem, **kw):
    return [(a["action"], a["outcome"]) for a in reversed(rem.actions(**kw))]


def test_throttle_lowers_then_restores_after_hold_down(make_rem, clock):
    rem = make_rem({"throttle": {"fraction": 0.8, "hold_down_seconds": 60}})
    deliver(rem, alert("GPU-1"))
    assert rem.act.limits["GPU-1"] == 320.0 and rem.sched.states["GPU-1"] == "throttled"
    deliver(rem, alert("GPU-1", status="resolved"))
    clock.t += 59
    rem.worker.run_once()
    assert rem.act.limits["GPU-1"] == 320.0, "restored before the hold-down ended"
    clock.t += 2
    rem.worker.run_once()
    assert rem.act.limits["GPU-1"] == 400.0 and rem.sched.states["GPU-1"] == "healthy"
    assert outcomes(rem) == [("throttle", "acted"), ("throttle", "recorded"), ("restore", "acted")]


def test_an_operator_restores_a_throttle_whose_alert_never_resolves(make_rem, clock, serve):
    """The safety valve for an alert that never resolves (or a throttle judged wrong): the
    operator's credential restores the limit now; Alertmanager's cannot; a repeat of the same
    alert does not throttle again, a new firing of it does."""
    rem = make_rem({"throttle": {"fraction": 0.8, "hold_down_seconds": 600}})
    url = serve(rem) + "/api/v1/remediation/throttles/{}/restore"
    a = alert("GPU-1")
    deliver(rem, a)
    assert rem.act.limits["GPU-1"] == 320.0
    assert post(url.format("GPU-1"), {"actor": "alice"}, token=TOKEN)[0] == 401, (
        "the webhook's token opens the webhook only"
    )
    assert post(url.format("GPU-7"), {}, token=OPERATOR)[0] == 404, "no throttle on GPU-7"
    status, body = post(url.format("GPU-1"), {"actor": "alice"}, token=OPERATOR)
    assert status == 202 and body["previous_watts"] == 400.0 and len(body["released"]) == 1, body
    rem.worker.run_once()
    assert rem.act.limits["GPU-1"] == 400.0 and rem.sched.states["GPU-1"] == "healthy"
    restore = rem.actions(limit=1)[0]
    assert (restore["action"], restore["outcome"]) == ("restore", "acted")
    assert restore["detail"]["reason"] == "restore requested by alice"
    deliver(rem, a)  # Alertmanager's repeat of the same firing alert
    assert rem.act.limits["GPU-1"] == 400.0, "a repeat re-throttled a GPU the operator restored"
    deliver(rem, alert("GPU-1", status="resolved"))  # its end, long after: nothing to restore
    clock.t += 700
    rem.worker.run_once()
    assert rem.act.limits["GPU-1"] == 400.0
    assert post(url.format("GPU-1"), {}, token=OPERATOR)[0] == 404
    deliver(rem, alert("GPU-1", starts_at="2024-05-01T12:00:00Z"))  # fires anew
    assert rem.act.limits["GPU-1"] == 320.0


def test_throttle_restore_from_the_cli(make_rem, serve, tmp_path, capsys):
    rem = make_rem({"throttle": {"fraction": 0.5, "hold_down_seconds": 600}})
    deliver(rem, alert("GPU-1"))
    token = tmp_path / "token"
    token.write_text(OPERATOR + "\n")
    argv = ["throttle", "restore", "GPU-1", "--url", serve(rem), "--token-file", str(token), "--actor", "bob"]
    assert remediation_cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["applied_watts"] == 200.0
    rem.worker.run_once()
    assert rem.act.limits["GPU-1"] == 400.0
    assert rem.actions(limit=1)[0]["detail"]["reason"] == "restore requested by bob"
    assert remediation_cli.main(argv) == 1 and "404" in capsys.readouterr().err, "nothing left to restore"


def test_throttle_clamped_to_nvml_minimum_and_watts_setting(make_rem):
    rem = make_rem({"throttle": {"watts": 50}})
    deliver(rem, alert("GPU-1"))
    assert rem.act.limits["GPU-1"] == 100.0  # FakeActuator's minimum constraint


def test_refire_during_hold_down_keeps_the_throttle_and_the_original_limit(make_rem, clock):
    rem = make_rem({"throttle": {"fraction": 0.5, "hold_down_seconds": 60}, "escalation": {"enabled": False}})
    deliver(rem, alert("GPU-1"))
    deliver(rem, alert("GPU-1", status="resolved"))
    clock.t += 30
    deliver(rem, alert("GPU-1", starts_at="2024-05-01T11:00:00Z"))
    clock.t += 100
    rem.worker.run_once()
    assert rem.act.limits["GPU-1"] == 200.0, "restored while a new instance still fires"
    deliver(rem, alert("GPU-1", status="resolved", starts_at="2024-05-01T11:00:00Z"))
    clock.t += 61
    rem.worker.run_once()
    assert rem.act.limits["GPU-1"] == 400.0  # the limit from before the first throttle


def test_preempt_stops_the_gpus_jobs(make_rem):
    rem = make_rem()
    rem.sched.jobs["GPU-3"] = [41, 42]
    deliver(rem, alert("GPU-3", rule="POWER_CRITICAL", action="preempt"))
    assert rem.actions()[0]["detail"]["preempted_jobs"] == [41, 42]


def test_quarantine_holds_after_resolve(make_rem):
    rem = make_rem({"budget": {"max_quarantined_ratio": 0.5}})
    rem.sched.jobs["GPU-2"] = [7]
    deliver(rem, alert("GPU-2", rule="ECC_UNCORRECTABLE", action="quarantine"))
    deliver(rem, alert("GPU-2", rule="ECC_UNCORRECTABLE", action="quarantine", status="resolved"))
    assert rem.sched.states["GPU-2"] == "quarantined"
    assert rem.sched.count("preempt", "GPU-2") == 1
    assert outcomes(rem) == [("quarantine", "acted"), ("quarantine", "noop")]
    assert "person releases" in rem.actions()[0]["detail"]["reason"]


def test_notify_only_records(make_rem):
    rem = make_rem()
    deliver(rem, alert("GPU-1", rule="THERMAL_WARNING", action="notify", severity="warning"))
    assert rem.sched.calls == [] and rem.act.sets == []
    assert outcomes(rem) == [("notify", "recorded")]


def test_rule_override_from_config(make_rem):
    rem = make_rem({"rules": {"THERMAL_CRITICAL": {"action": "notify"}}})
    deliver(rem, alert("GPU-1"))
    assert rem.act.sets == [] and outcomes(rem) == [("notify", "recorded")]


def test_notify_storm_spends_no_budget_and_never_opens_the_breaker(make_rem):
    # Alertmanager routes every gpuwarden alert to the agent, notify ones included: a storm
    # of warnings must neither use up the action rate nor trip the breaker, and is still
    # recorded while the breaker is open (it is an audit entry, not an action).
    rem = make_rem(
        {
            "budget": {"max_actions_per_minute": 1, "max_quarantined_ratio": 0.125, "max_throttled_ratio": 0.125},
            "escalation": {"enabled": False},
        }
    )
    rules = ("THERMAL_WARNING", "POWER_SPIKE", "ECC_ERRORS_SPIKE", "THROTTLING", "MEMORY_PRESSURE")
    storm = [
        alert(f"GPU-{i % 8}", rule=rules[i % 5], action="notify", severity="warning", fingerprint=f"warn-{i}")
        for i in range(40)
    ]
    deliver(rem, *storm)
    assert rem.act.sets == [] and rem.sched.calls == []
    assert set(outcomes(rem)) == {("notify", "recorded")} and len(outcomes(rem)) == 40
    assert rem.breaker()["state"] == "closed"
    # A warning is bookkept on its GPU (it is firing) but is no action on it.
    assert rem.sched.alerts[("GPU-0", "THERMAL_WARNING")] == "warning"
    deliver(rem, alert("GPU-1", rule="POWER_CRITICAL", action="preempt"))
    deliver(rem, alert("GPU-2", rule="POWER_CRITICAL", action="preempt"))
    assert outcomes(rem)[-2:] == [("preempt", "acted"), ("preempt", "skipped_budget")]
    assert rem.breaker()["state"] == "open"
    deliver(rem, alert("GPU-3", rule="THERMAL_WARNING", action="notify", severity="warning", fingerprint="warn-late"))
    assert outcomes(rem)[-1] == ("notify", "recorded")


def test_escalation_quarantines_a_gpu_throttled_repeatedly(make_rem, clock):
    rem = make_rem({"escalation": {"count": 2, "window_seconds": 600}, "budget": {"max_quarantined_ratio": 0.5}})
    for i in range(3):
        deliver(rem, alert("GPU-1", rule="POWER_CRITICAL", action="preempt", starts_at=f"2024-05-01T1{i}:00:00Z"))
        clock.t += 60
    assert outcomes(rem) == [("preempt", "acted"), ("preempt", "acted"), ("quarantine", "acted")]
    assert rem.actions()[0]["detail"]["escalated_from"] == "preempt"
    assert rem.sched.states["GPU-1"] == "quarantined"


def test_escalation_window_expires(make_rem, clock):
    rem = make_rem({"escalation": {"count": 1, "window_seconds": 100}})
    deliver(rem, alert("GPU-1", action="preempt"))
    clock.t += 101
    deliver(rem, alert("GPU-1", action="preempt", starts_at="2024-05-01T11:00:00Z"))
    assert outcomes(rem) == [("preempt", "acted"), ("preempt", "acted")]


def test_dry_run_records_and_changes_nothing(make_rem):
    rem = make_rem({"dry_run": True})
    deliver(
        rem,
        alert("GPU-1"),
        alert("GPU-2", action="quarantine", rule="ECC_UNCORRECTABLE"),
        alert("GPU-3", action="preempt", rule="POWER_CRITICAL"),
    )
    assert rem.sched.calls == [] and rem.act.sets == [] and rem.sched.alerts == {}
    got = {a["action"]: a for a in rem.actions()}
    assert {a["outcome"] for a in got.values()} == {"dry_run"}
    assert got["throttle"]["detail"]["target_watts"] == 320.0


def test_storm_of_1000_quarantines_is_stopped_by_the_budget(make_rem):
    rem = make_rem({"budget": {"max_quarantined_ratio": 0.1, "max_actions_per_minute": 1000}}, uuids=100)
    storm = [
        alert(f"GPU-{i % 100}", rule="ECC_UNCORRECTABLE", action="quarantine", fingerprint=f"storm-{i}")
        for i in range(1000)
    ]
    for k in range(0, 1000, 100):
        deliver(rem, *storm[k : k + 100], run=False)
    while rem.worker.run_once():
        pass
    quarantined = [u for u, s in rem.sched.states.items() if s == "quarantined"]
    assert len(quarantined) == 10  # 10 % of 100 GPUs, then the breaker opened
    assert rem.breaker()["state"] == "open"
    assert "max_quarantined_ratio" in rem.breaker()["reason"]
    counts = {}
    for a in rem.actions(limit=2000):
        counts[a["outcome"]] = counts.get(a["outcome"], 0) + 1
    assert counts["acted"] == 10 and counts["skipped_budget"] == 1
    assert counts["skipped_breaker"] + counts.get("noop", 0) == 989
    reg = CollectorRegistry()
    reg.register(rem.collector)
    assert reg.get_sample_value("remediation_breaker_open") == 1
    assert reg.get_sample_value("remediation_actions_total", {"action": "quarantine", "outcome": "skipped_breaker"}) > 0
    assert reg.get_sample_value("alerts_triggered_total", {"rule": "ECC_UNCORRECTABLE", "severity": "critical"}) == 1000


def test_rate_cap_opens_breaker_and_reset_resumes(make_rem, clock):
    rem = make_rem({"budget": {"max_actions_per_minute": 2}, "escalation": {"enabled": False}})
    for i in range(4):
        deliver(rem, alert(f"GPU-{i}", action="preempt", rule="POWER_CRITICAL"))
    assert outcomes(rem) == [("preempt", "acted")] * 2 + [("preempt", "skipped_budget"), ("preempt", "skipped_breaker")]
    clock.t += 120
    deliver(rem, alert("GPU-5", action="preempt", rule="POWER_CRITICAL"))
    assert rem.actions()[0]["outcome"] == "skipped_breaker", "the breaker closed by itself"
    assert rem.reset_breaker("alice")["was_open"] is True
    deliver(rem, alert("GPU-6", action="preempt", rule="POWER_CRITICAL"))
    assert rem.actions()[0]["outcome"] == "acted"
    assert rem.actions(action="breaker_reset")[0]["detail"]["actor"] == "alice"


def test_throttled_share_cap(make_rem):
    rem = make_rem({"budget": {"max_throttled_ratio": 0.25}}, uuids=4)
    deliver(rem, alert("GPU-0", fingerprint="a"), alert("GPU-1", fingerprint="b"))
    assert outcomes(rem) == [("throttle", "acted"), ("throttle", "skipped_budget")]


def test_missing_uuid_and_unknown_action_fail_visibly(make_rem):
    rem = make_rem()
    a = alert("", fingerprint="nouuid")
    b = alert("GPU-1", action="reboot", fingerprint="weird")
    deliver(rem, a, b)
    got = {x["event_id"]: x for x in rem.actions()}
    assert got[1]["outcome"] == "failed" and "no uuid label" in got[1]["error"]
    assert got[2]["outcome"] == "failed" and "'reboot'" in got[2]["error"]


def test_actuator_failure_recorded_and_throttle_not_held(make_rem):
    rem = make_rem()
    rem.act.fail = True
    deliver(rem, alert("GPU-1"))
    a = rem.actions()[0]
    assert a["outcome"] == "failed" and "fake actuator failure" in a["error"]
    assert rem.worker.conn.execute("SELECT count(*) FROM remediation_throttles").fetchone()[0] == 0


def test_late_firing_after_resolve_is_not_acted(make_rem):
    rem = make_rem()
    deliver(rem, alert("GPU-1", status="resolved"))
    deliver(rem, alert("GPU-1"))
    assert rem.act.sets == [] and outcomes(rem)[-1] == ("throttle", "noop")


def test_spans_alert_rule_with_child_per_action(make_rem):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    rem = make_rem(tracer_provider=provider)
    deliver(rem, alert("GPU-1"))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    parent, child = spans["alert.THERMAL_CRITICAL"], spans["remediation.throttle"]
    assert child.parent.span_id == parent.context.span_id
    assert parent.attributes["gpu.uuid"] == "GPU-1"
    assert rem.actions()[0]["trace_id"] == format(parent.context.trace_id, "032x")
    provider.shutdown()


def test_decision_logged_as_one_structured_line(make_rem, caplog):
    rem = make_rem()
    with caplog.at_level("INFO", logger="gpuwarden.scheduler_agent.remediation"):
        deliver(rem, alert("GPU-1"))
    decisions = [r for r in caplog.records if getattr(r, "event", None) == "remediation.decision"]
    assert len(decisions) == 1 and decisions[0].outcome == "acted" and decisions[0].uuid == "GPU-1"
    line = json.loads(logs.JsonFormatter().format(decisions[0]))  # the same fields in --log.format=json
    assert line["outcome"] == "acted" and line["logger"] == "gpuwarden.scheduler_agent.remediation.worker"
    assert "outcome=acted" in logs.LogfmtFormatter().format(decisions[0])


@pytest.mark.parametrize(
    "section,field",
    [
        ({"budget": {"max_actions_per_minute": 0}}, "remediation.budget.max_actions_per_minute"),
        ({"throttle": {"fraction": 1.5}}, "remediation.throttle.fraction"),
        ({"actuator": {"kind": "command"}}, "remediation.actuator"),
        ({"rules": {"X": {"action": "reboot"}}}, "remediation.rules.X.action"),
        ({"bogus": 1}, "remediation"),
    ],
)
def test_config_errors_name_the_field(section, field):
    with pytest.raises(PolicyConfigError) as e:
        parse(section, "agent.yml")
    assert f"agent.yml: {field}" in str(e.value)
