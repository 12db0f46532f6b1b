"""gpuwarden.config: one way to read YAML with a line index, validate with JSON Schema, report
every problem as ``file:line: field: message`` through one error type, and write each default once
(in the schema); and every component's config loads through it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gpuwarden import config as foundation
from gpuwarden.config import ConfigError, LineIndex, Problem, Schema
from gpuwarden.durations import seconds

DOC = """\
web:
  listen_address: ":9787"
  limits:
    max_connections: 10
nodes:
  - name: a
    count: 2
  - name: b
    gpus:
      - {index: 0, uuid: GPU-x}
"""


# --- YAML and lines -------------------------------------------------------------------------


def test_every_key_and_item_has_its_line_and_missing_fields_get_their_parents() -> None:
    doc = foundation.parse_yaml(DOC, "a.yaml")
    assert doc.data["nodes"][1]["gpus"][0]["uuid"] == "GPU-x"
    line = doc.lines.line
    assert line(()) == 1 and line(("web",)) == 1 and line(("web", "limits", "max_connections")) == 4
    assert line(("nodes", 0)) == 6 and line(("nodes", 1, "gpus", 0)) == 10
    assert line(("nodes", 1, "gpus", 0, "uuid")) == 10
    assert line(("web", "limits", "header_timeout_seconds")) == 3  # absent: its parent's line
    assert line(("nowhere", "at", "all")) == 1
    assert LineIndex().line(("x",)) is None


def test_duplicate_keys_bad_yaml_unreadable_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        foundation.parse_yaml("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n", "d.yaml")
    assert [str(p) for p in e.value.problems] == [
        "d.yaml:4: b.c: duplicate key (remove one of them)",
        "d.yaml:5: a: duplicate key (remove one of them)",
    ]
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        foundation.parse_yaml("a: [unclosed\n", "y.yaml")
    assert e.value.file == "y.yaml" and e.value.line == 2
    with pytest.raises(ConfigError, match=r"^.*nope\.yaml: cannot read: No such file"):
        foundation.read_yaml(tmp_path / "nope.yaml")
    assert foundation.parse_yaml("# nothing\n", "e.yaml").data is None


# --- the one error type ---------------------------------------------------------------------


def test_problems_read_file_line_field_message() -> None:
    assert str(Problem("a.yaml", 3, "web.tls", "bad")) == "a.yaml:3: web.tls: bad"
    assert str(Problem("a.yaml", None, "web.tls", "bad")) == "a.yaml: web.tls: bad"
    assert str(Problem("", None, "slurm.attempts", "bad")) == "slurm.attempts: bad"
    assert str(Problem("a.yaml", 1, "", "empty file")) == "a.yaml:1: empty file"


def test_config_error_lists_every_problem_then_the_components_hint() -> None:
    class Mine(ConfigError):
        hint = "fix it and run again"

    err = Mine([Problem("f", 1, "a", "one"), Problem("f", 2, "b", "two")])
    assert str(err) == "f:1: a: one\nf:2: b: two\nfix it and run again"
    assert (err.file, err.line, err.field) == ("f", 1, "a")
    assert str(ConfigError("plain words")) == "plain words"


def test_every_component_error_is_the_foundations() -> None:
    from gpuwarden.exporter.sim.scenario import ScenarioError
    from gpuwarden.rules.config import ConfigError as RulesError
    from gpuwarden.scheduler_agent.config import ConfigError as AgentError
    from gpuwarden.scheduler_agent.remediation.errors import (
        PolicyConfigError,
        RemediationError,
    )
    from gpuwarden.scheduler_agent.slurm.config import SlurmConfigError
    from gpuwarden.scheduler_agent.slurm.errors import SlurmError

    for cls in (ScenarioError, RulesError, AgentError, PolicyConfigError, SlurmConfigError):
        assert issubclass(cls, ConfigError), cls
    # ... and still what their callers catch.
    assert issubclass(ScenarioError, ValueError) and issubclass(PolicyConfigError, RemediationError)
    assert issubclass(SlurmConfigError, SlurmError)


# --- JSON Schema ----------------------------------------------------------------------------

SCHEMA = Schema(
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "web": {
                "type": "object",
                "additionalProperties": False,
                "default": {},
                "properties": {
                    "port": {"type": "integer", "default": 9787},
                    "tls": {"type": "object", "properties": {"cert": {"type": "string"}}, "required": ["cert"]},
                },
            },
            "every": {"$ref": "#/$defs/duration", "default": "1h"},
            "at": {"oneOf": [{"type": "number"}, {"$ref": "#/$defs/duration"}]},
            "rules": {
                "type": "object",
                "default": {},
                "additionalProperties": {
                    "type": "object",
                    "properties": {"action": {"type": "string", "default": "notify"}},
                },
            },
            "optional": {"type": "object", "properties": {"x": {"type": "integer", "default": 1}}},
        },
        "$defs": {"duration": {"type": "string", "pattern": foundation.durations.PATTERN}},
    }
)


def test_every_schema_problem_at_once_sorted_by_line_with_unknown_keys_on_their_own_lines() -> None:
    doc = foundation.parse_yaml("web:\n  port: high\n  colour: red\n  tls: {}\nat: soon\nbogus: 1\n", "s.yaml")
    assert [str(p) for p in SCHEMA.problems(doc.data, doc)] == [
        "s.yaml:2: web.port: 'high' is not of type 'integer'",
        "s.yaml:3: web.colour: unknown field (allowed: port, tls)",
        "s.yaml:4: web.tls: 'cert' is a required property",
        "s.yaml:5: at: 'soon' does not match Prometheus' duration grammar: expected e.g. 15s, 5m, 1h30m, 500ms, 2d",
        "s.yaml:6: bogus: unknown field (allowed: at, every, optional, rules, web)",
    ]
    assert SCHEMA.problems([], None) == [Problem("", None, "(top level)", "[] is not of type 'object'")]


def test_defaults_are_filled_from_the_schema_only_where_the_schema_says() -> None:
    data = {"rules": {"X": {}, "Y": {"action": "throttle"}}, "web": {"port": 1}}
    filled = SCHEMA.with_defaults(data)
    assert filled == {
        "web": {"port": 1},
        "every": "1h",
        "rules": {"X": {"action": "notify"}, "Y": {"action": "throttle"}},
    }
    assert data == {"rules": {"X": {}, "Y": {"action": "throttle"}}, "web": {"port": 1}}, "not modified"
    assert SCHEMA.defaults() == {"web": {"port": 9787}, "every": "1h", "rules": {}}
    assert "optional" not in filled, "an object without a default of its own is not made up"
    assert SCHEMA.default("web", "port") == 9787


def test_a_section_reports_through_its_owners_error_factory() -> None:
    index = LineIndex({("web",): 7, ("web", "port"): 8})

    def agent_error(field: str, message: str) -> ConfigError:
        return ConfigError(Problem("agent.yml", index.line(foundation.split(field)), field, message))

    with pytest.raises(ConfigError) as e:
        foundation.check_section(
            {"port": "x", "tls": 1}, SCHEMA.__class__(SCHEMA.schema["properties"]["web"]), "web", agent_error
        )
    assert str(e.value) == (
        "agent.yml:7: web.tls: 1 is not of type 'object'\nagent.yml:8: web.port: 'x' is not of type 'integer'"
    )
    with pytest.raises(ValueError, match=r"^web: expected a mapping, got list$"):
        foundation.check_section([], SCHEMA, "web", lambda f, m: ValueError(f"{f}: {m}"))
    with pytest.raises(ValueError, match=r"^web.at: .*; also web.bogus: unknown field"):
        foundation.check_section({"at": "x", "bogus": 1}, SCHEMA, "web", lambda f, m: ValueError(f"{f}: {m}"))
    assert foundation.check_section(None, SCHEMA, "web", agent_error)["web"] == {"port": 9787}


def test_dotted_and_split_are_inverse() -> None:
    for path in [("steps", 2, "at"), ("remediation", "commands", "quarantine", 0), ("a",), ()]:
        assert foundation.split(foundation.dotted(path)) == path
    assert foundation.dotted(("steps", 2, "at")) == "steps[2].at"
    assert foundation.split("remediation.commands.quarantine.0") == ("remediation", "commands", "quarantine", 0)


# --- the shipped schemas ----------------------------------------------------------------------

SHIPPED = [
    ("gpuwarden.rules", "schema.json"),
    ("gpuwarden.exporter.sim", "scenario.schema.json"),
    ("gpuwarden.scheduler_agent", "config.schema.json"),
    ("gpuwarden.scheduler_agent.remediation", "policy_schema.json"),
    ("gpuwarden.scheduler_agent.slurm", "config.schema.json"),
    ("gpuwarden.scheduler_agent.predictor", "config.schema.json"),
]


def _defaults(node: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every (subschema, its default) in a schema."""
    if isinstance(node, dict):
        if "default" in node:
            yield node, node["default"]
        for value in node.values():
            yield from _defaults(value)
    elif isinstance(node, list):
        for item in node:
            yield from _defaults(item)


@pytest.mark.parametrize("package,name", SHIPPED)
def test_every_shipped_schema_is_valid_and_its_defaults_satisfy_it(package: str, name: str) -> None:
    schema = Schema.packaged(package, name)
    jsonschema.Draft202012Validator.check_schema(schema.schema)
    for node, default in _defaults(schema.schema):
        sub = {**{k: v for k, v in node.items() if k != "default"}, "$defs": schema.schema.get("$defs", {})}
        problems = Schema(sub).problems(default)
        assert not problems, (name, node, problems)


def test_the_agents_defaults_are_the_runtime_classes_defaults() -> None:
    """The config's defaults live in config.schema.json; the classes the agent builds from it
    keep their own for callers without a config (tests, benches): they must agree."""
    from gpuwarden.listener import Limits
    from gpuwarden.scheduler_agent.scheduler import SchedulerOptions
    from gpuwarden.scheduler_agent.store import Retention

    d = Schema.packaged("gpuwarden.scheduler_agent", "config.schema.json").with_defaults({"web": {"token_file": "t"}})
    lim = d["web"]["limits"]
    assert (
        lim["header_timeout_seconds"],
        lim["body_timeout_seconds"],
        lim["idle_timeout_seconds"],
        lim["max_connections"],
    ) == (Limits.header_timeout, Limits.body_timeout, Limits.idle_timeout, Limits.max_connections)
    r = d["database"]["retention"]
    assert (r["enabled"], seconds(r["max_age"]), seconds(r["interval"]), r["batch_size"]) == (
        Retention.enabled,
        Retention.max_age_seconds,
        Retention.interval_seconds,
        Retention.batch_size,
    )
    opts = dataclasses.asdict(SchedulerOptions())
    assert {k: opts[k] for k in d["scheduler"]} == d["scheduler"]


def test_section_dataclasses_carry_no_defaults_of_their_own() -> None:
    from gpuwarden.scheduler_agent.remediation.config import (
        Budget,
        Escalation,
        RemediationConfig,
    )
    from gpuwarden.scheduler_agent.slurm.config import SlurmConfig

    for cls in (RemediationConfig, Budget, Escalation, SlurmConfig):
        assert all(
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            for f in dataclasses.fields(cls)
        ), cls


def test_section_defaults_come_from_their_schemas() -> None:
    from gpuwarden.scheduler_agent.remediation.config import parse as remediation
    from gpuwarden.scheduler_agent.slurm.config import parse as slurm

    rc = remediation(None)
    assert (rc.throttle_fraction, rc.throttle_watts, rc.hold_down_seconds, rc.max_body_bytes) == (
        0.8,
        None,
        300,
        1 << 20,
    )
    assert rc.budget.max_actions_per_minute == 30 and rc.escalation.window_seconds == 3600.0
    assert rc.actuator == {"kind": "none"} and rc.quarantine_preempts and not rc.dry_run
    assert remediation({"throttle": {"watts": 250}}).throttle_fraction is None
    sc = slurm({})
    assert (sc.scontrol, sc.timeout_seconds, sc.attempts, sc.node_label, sc.nodes) == (
        ("scontrol",),
        10,
        3,
        "instance",
        {},
    )


# --- every component, file:line: field: message ---------------------------------------------


def _agent_yaml(tmp_path: Path, body: str) -> Path:
    (tmp_path / "token").write_text("t\n")
    p = tmp_path / "agent.yml"
    p.write_text("web:\n  token_file: token\n" + body)
    return p


def test_agent_sections_name_file_line_and_field_and_report_every_problem(tmp_path: Path) -> None:
    from gpuwarden.scheduler_agent import config as agent
    from gpuwarden.scheduler_agent.predictor import plugin as predictor
    from gpuwarden.scheduler_agent.remediation.config import parse as remediation
    from gpuwarden.scheduler_agent.slurm.config import parse as slurm

    p = _agent_yaml(tmp_path, "scheduler:\n  tick_seconds: 0\n  max_preemptions: many\ndatabase:\n  bogus: 1\n")
    with pytest.raises(agent.ConfigError) as e:
        agent.load(p)
    assert str(e.value).splitlines() == [
        f"{p}:4: scheduler.tick_seconds: 0 is less than or equal to the minimum of 0",
        f"{p}:5: scheduler.max_preemptions: 'many' is not of type 'integer'",
        f"{p}:7: database.bogus: unknown field (allowed: path, retention, synchronous)",
    ]

    p = _agent_yaml(
        tmp_path,
        "remediation:\n  budget:\n    max_actions_per_minute: 0\n"
        "slurm:\n  attempts: 0\npredictor:\n  prometheus_url: x\n  migrate: yes please\n",
    )
    cfg = agent.load(p)
    with pytest.raises(agent.ConfigError, match=rf"^{p}:5: remediation.budget.max_actions_per_minute: 0 is less"):
        remediation(cfg.section("remediation"), str(cfg.path), error=cfg.error)
    with pytest.raises(agent.ConfigError, match=rf"^{p}:7: slurm.attempts: 0 is less than the minimum of 1$"):
        slurm(cfg.section("slurm"), error=cfg.error)

    class Agent:
        config = cfg

    with pytest.raises(agent.ConfigError) as e:
        predictor.install(Agent(), port=None)  # type: ignore[arg-type]
    assert str(e.value).splitlines() == [
        f"{p}:9: predictor.prometheus_url: 'x' does not match '^https?://'",
        f"{p}:10: predictor.migrate: 'yes please' is not of type 'boolean'",
    ]


def test_scenario_and_thresholds_name_file_line_and_field(tmp_path: Path) -> None:
    from gpuwarden.exporter.sim.scenario import ScenarioError
    from gpuwarden.exporter.sim.scenario import load as load_scenario
    from gpuwarden.rules import config as rules

    p = tmp_path / "s.yaml"
    p.write_text(
        "name: x\nsteps:\n  - {at: 1.5h, gpu: 0, clear_faults: true}\n  - {at: 0, gpu: -1, clear_faults: true}\n"
    )
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    assert [(x.line, x.field) for x in e.value.problems] == [(3, "steps[0].at"), (4, "steps[1].gpu")]
    t = tmp_path / "t.yaml"
    shipped = rules.DEFAULT_PATH.read_text()
    t.write_text(shipped.replace("for: 45s", "for: 45 seconds", 1).replace("threshold: 80 ", "threshold: hot ", 1))
    with pytest.raises(rules.ConfigError) as e:
        rules.load(t)
    assert [x.field for x in e.value.problems] == ["alerts.THERMAL_WARNING.threshold", "alerts.POWER_SPIKE.for"]
    assert str(e.value).endswith("fix the file (schema: rules/schema.json) and run again")


def test_schema_resources_are_shipped_as_package_data() -> None:
    for package, name in SHIPPED:
        assert json.loads(resources.files(package).joinpath(name).read_text())["$schema"].endswith("schema")
