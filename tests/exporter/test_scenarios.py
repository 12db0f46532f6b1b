"""Shipped scenarios reach their alert condition and hold it for the shipped `for:` durations,
read through the exporter (not the simulator's internals); scenario files that are wrong say
where."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gpuwarden.exporter.sim.scenario import ScenarioError, load, parse, play, shipped

SEED_RULES = {
    "THERMAL_WARNING",
    "THERMAL_CRITICAL",
    "POWER_SPIKE",
    "POWER_CRITICAL",
    "ECC_ERRORS_SPIKE",
    "ECC_UNCORRECTABLE",
    "THROTTLING",
    "MEMORY_PRESSURE",
}
FOR_SECONDS = {
    "THERMAL_WARNING": 60,
    "THERMAL_CRITICAL": 30,
    "POWER_SPIKE": 45,
    "POWER_CRITICAL": 20,
    "ECC_ERRORS_SPIKE": 0,
    "ECC_UNCORRECTABLE": 0,
    "THROTTLING": 30,
    "MEMORY_PRESSURE": 60,
}
THROTTLING_REASONS = (
    "sw_power_cap",
    "hw_slowdown",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
)


def _conditions(h, gpu: str) -> dict[str, Callable[[dict, list], bool]]:
    """DESIGN.md's alert table, evaluated on exporter readings (history: [(t, fams)])."""
    v = lambda fams, name, **kw: h.values(fams, name, **kw).get(gpu)  # noqa: E731

    def ecc_spike(fams: dict, hist: list) -> bool:
        # hist: [(t, correctable count)], oldest first; the rule looks back 300 s.
        now_t, now = hist[-1]
        base = next(n for t, n in hist if t >= now_t - 300)
        return now is not None and base is not None and now - base >= 10

    return {
        "THERMAL_WARNING": lambda f, _: (v(f, "gpu_temperature_celsius") or 0) >= 80,
        "THERMAL_CRITICAL": lambda f, _: (v(f, "gpu_temperature_celsius") or 0) > 85,
        "POWER_SPIKE": lambda f, _: (v(f, "gpu_power_watts") or 0) > 400,
        "POWER_CRITICAL": lambda f, _: (v(f, "gpu_power_watts") or 0) >= 450,
        "ECC_ERRORS_SPIKE": ecc_spike,
        "ECC_UNCORRECTABLE": lambda f, _: (v(f, "gpu_ecc_errors_uncorrectable_total") or 0) >= 1,
        "THROTTLING": lambda f, _: any(v(f, "gpu_throttle_active", reason=r) == 1 for r in THROTTLING_REASONS),
        "MEMORY_PRESSURE": lambda f, _: (
            (v(f, "gpu_memory_used_bytes") or 0) / (v(f, "gpu_memory_total_bytes") or 1) >= 0.9
        ),
        "GPU_DOWN": lambda f, _: v(f, "gpu_up") == 0,
        "XID": lambda f, _: (v(f, "gpu_xid_errors_total", xid="79") or 0) >= 1,
        "STALE": lambda f, _: v(f, "gpuwarden_exporter_gpu_stale") == 1,
    }


def test_a_scenario_ships_for_every_seed_rule_and_fault():
    rules = {load(p).expect.rule for p in shipped().values()}
    assert SEED_RULES | {"GPU_DOWN", "XID", "STALE"} <= rules, sorted(rules)


@pytest.mark.parametrize("name", sorted(shipped()))
def test_shipped_scenario_holds_its_condition(name, make_exporter):
    scenario = load(shipped()[name])
    exp = scenario.expect
    assert exp is not None
    if exp.rule in FOR_SECONDS:  # long enough for the shipped `for:` plus a few evaluation intervals
        assert exp.holds_until - exp.holds_from >= FOR_SECONDS[exp.rule] + 120
    hung = exp.rule == "STALE"
    h = make_exporter(scenario.gpus or 8, timeout=0.1 if hung else 5.0)
    play(h.fleet, scenario)
    gpus = [str(g) for g in range(len(h.fleet.gpus))]
    conds = {g: _conditions(h, g)[exp.rule] for g in gpus}
    target = str(exp.gpu)
    step = 60.0 if hung else 10.0  # a hung read costs a real timeout per scrape
    end = exp.holds_until + 330  # long enough for every condition to clear again
    hists: dict[str, list] = {g: [] for g in gpus}
    t = 0.0
    while t <= end:
        fams = h.scrape()
        ecc = h.values(fams, "gpu_ecc_errors_correctable_total")
        holding = set()
        for g in gpus:
            hists[g].append((t, ecc.get(g)))
            if conds[g](fams, hists[g]):
                holding.add(g)
        holds = target in holding
        if exp.holds_from <= t < exp.holds_until:
            assert holds, f"{name}: {exp.rule} does not hold at t={t}s"
            assert holding == {target}, f"{name}: {exp.rule} also holds on GPUs {sorted(holding)} at t={t}s"
        h.clock.advance(step)
        t += step
    if exp.rule != "XID":  # an XID count never goes down
        assert not holds, f"{name}: {exp.rule} still holds at t={t - step}s, after the scenario ended"


def _error(tmp_path: Path, text: str) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load(p)
    return str(info.value)


def test_unknown_fault_kind_names_file_line_and_field(tmp_path):
    msg = _error(
        tmp_path,
        "name: x\nsteps:\n  - {at: 0, gpu: 1, load: {utilization: 0.5}}\n"
        "  - at: 10s\n    gpu: 1\n    fault: {kind: meltdown}\n",
    )
    assert "bad.yaml:6" in msg and "steps[1].fault.kind" in msg and "meltdown" in msg


def test_fault_field_errors_name_the_field(tmp_path):
    msg = _error(tmp_path, "name: x\nsteps:\n  - {at: 0, gpu: 0, fault: {kind: cooling, factor: 0.5}}\n")
    assert "steps[0].fault.factor" in msg and "0.5" in msg
    msg = _error(tmp_path, "name: x\nsteps:\n  - {at: 0, gpu: 0, fault: {kind: xid}}\n")
    assert "steps[0].fault" in msg and "'xid' is a required property" in msg


def test_bad_duration_missing_field_and_unknown_key(tmp_path):
    assert "steps[0].at" in _error(tmp_path, "name: x\nsteps:\n  - {at: soon, gpu: 0, clear_faults: true}\n")
    assert "'at' is a required property" in _error(tmp_path, "name: x\nsteps:\n  - {gpu: 0, clear_faults: true}\n")
    assert "colour" in _error(tmp_path, "name: x\ncolour: red\nsteps:\n  - {at: 0, gpu: 0, clear_faults: true}\n")


def test_a_step_needs_exactly_one_action(tmp_path):
    msg = _error(tmp_path, "name: x\nsteps:\n  - {at: 0, gpu: 0, clear_faults: true, load: {utilization: 1}}\n")
    assert "bad.yaml:3" in msg and "steps[0]" in msg and "exactly one of" in msg


def test_gpu_outside_the_fleet_and_unreadable_file(tmp_path):
    msg = _error(tmp_path, "name: x\ngpus: 2\nsteps:\n  - {at: 0, gpu: 5, clear_faults: true}\n")
    assert "steps[0].gpu" in msg and "fleet of 2" in msg
    with pytest.raises(ScenarioError, match="nope.yaml: cannot read"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        parse("name: [", "inline")
