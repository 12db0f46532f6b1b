"""Label values cannot reach a shell: arbitrary label strings through the real command path.

The template is the documented ``ssh {instance} nvidia-smi -i {gpu} -pl {watts}`` with argv[0]
a stand-in that does what ssh does with its arguments: the host may reach a shell (as with a
``ProxyCommand`` using ``%h``), and everything after it is joined with spaces and run by
``sh -c``. ``nvidia-smi`` is a recorder placed first on that shell's PATH: it appends its argv
to a log. The stand-in runs in an empty folder. Whatever the labels, either a value is refused
before anything runs (the log stays empty), or the recorder ran exactly once with exactly the
intended arguments; and the folder stays empty. An injected command would show up as an extra
or different log entry, a file, or a failed run.
"""

from __future__ import annotations

import itertools
import json
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpuwarden.scheduler_agent.remediation import command
from gpuwarden.scheduler_agent.remediation.actuators import CommandActuator, GpuRef
from gpuwarden.scheduler_agent.remediation.command import UnsafeValue
from gpuwarden.scheduler_agent.remediation.config import parse
from gpuwarden.scheduler_agent.remediation.intake import Credentials
from gpuwarden.scheduler_agent.remediation.service import Remediation
from tests.remediation.conftest import Clock
from tests.remediation.fakes import FakeActuator, FakeScheduler, alert, notification

US, RS = "\x1f", "\x1e"  # unit/record separators in the recorder's log (refused in any label)


@dataclass
class Harness:
    root: Path
    stand_in: Path  # the ssh-like program
    work: Path  # the shells' working folder: must stay empty
    log: Path  # the recorder's log

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [rec.split(US)[1:] for rec in self.log.read_text(errors="replace").split(RS) if rec]

    def reset(self) -> None:
        self.log.write_text("")

    def stray(self) -> list[str]:
        return sorted(p.name for p in self.work.iterdir())


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def make_harness(root: Path) -> Harness:
    bin_dir, work = root / "bin", root / "work"
    bin_dir.mkdir(parents=True)
    work.mkdir()
    log = root / "calls.log"
    log.write_text("")
    q = shlex.quote
    _script(
        bin_dir / "nvidia-smi",
        f"""#!/bin/sh
{{ printf 'CALL'; for a in "$@"; do printf '\\037%s' "$a"; done; printf '\\036'; }} >> {q(str(log))}
""",
    )
    stand_in = _script(
        root / "ssh-like",
        f"""#!/bin/sh
# ssh's way with arguments: the host may meet a shell (ProxyCommand %h), the command words are
# joined with spaces and run by the remote user's shell.
cd {q(str(work))} || exit 97
PATH={q(str(bin_dir))}:$PATH
export PATH
sh -c ": $1" || exit 98
shift
exec sh -c "$*"
""",
    )
    return Harness(root, stand_in, work, log)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    return make_harness(tmp_path_factory.mktemp("ssh-like"))


# -- strategies -------------------------------------------------------------------------------

SHELLISH = " \t\n\r;|&$`()<>*?[]{}'\"\\!#~=%^,-0123456789abcdefGPUMI:./@+_\x00\u00a0\u2028"
PAYLOADS = [
    "; nvidia-smi INJECTED",
    "$(nvidia-smi INJECTED)",
    "`nvidia-smi INJECTED`",
    "| nvidia-smi INJECTED",
    "&& nvidia-smi INJECTED",
    "\nnvidia-smi INJECTED",
    "; touch CANARY",
    "> CANARY",
    "$(touch CANARY)",
    "`touch CANARY`",
    "' ; touch CANARY '",
    '" ; touch CANARY "',
    "; id > /tmp/PWNED; echo",
    "-oProxyCommand=touch CANARY",
    "${IFS}touch${IFS}CANARY",
    "*",
    "[a-z]*",
    "~root",
    "{a,b}",
    "2 -pl 1",
]

hostile = st.one_of(
    st.text(max_size=60),  # any unicode
    st.text(alphabet=SHELLISH, max_size=40),  # shell metacharacters, dense
    st.builds(
        lambda a, p, b: a + p + b,
        st.sampled_from(["2", "node1", "GPU-1", ""]),
        st.sampled_from(PAYLOADS),
        st.text(alphabet=SHELLISH, max_size=8),
    ),
)
hex_ = st.text(alphabet="0123456789abcdefABCDEF-", min_size=1, max_size=36).filter(lambda s: s[0] != "-")
valid = {
    "gpu": st.integers(0, 999_999).map(str),
    "uuid": st.one_of(
        hex_.map(lambda h: "GPU-" + h),
        hex_.map(lambda h: "MIG-" + h),
        st.builds(lambda h, g, c: f"MIG-GPU-{h}/{g}/{c}", hex_, st.integers(0, 99), st.integers(0, 99)),
    ),
    "instance": st.one_of(
        st.sampled_from(
            [
                "gpu-node-1:9786",
                "10.0.0.5:9786",
                "[fe80::1]:9786",
                "fe80::1",
                "node1",
                "gpu_7.example.org",
                "[2001:db8::5%eth0]:22",
            ]
        ),
        st.from_regex(
            r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}"
            r"(:[1-9][0-9]{0,3})?\Z"
        ),
    ),
    "node": st.text(alphabet="abcXYZ0123456789._:/@+-", min_size=1, max_size=40).filter(lambda s: s[0] != "-"),
}


def label(name: str) -> st.SearchStrategy[str]:
    return st.one_of(valid[name], hostile)


NAMES = ("gpu", "uuid", "instance", "node")
all_valid = st.fixed_dictionaries({k: valid[k] for k in NAMES})
labels = st.one_of(
    all_valid,  # runs: the argv must be exact
    st.tuples(all_valid, st.sampled_from(NAMES), hostile).map(  # one hostile label
        lambda t: {**t[0], t[1]: t[2]}
    ),
    st.fixed_dictionaries({k: label(k) for k in NAMES}),  # any mix
)
watts = st.one_of(st.floats(min_value=1, max_value=2000), st.integers(1, 2000).map(float), st.floats())


def _safe(name: str, value: str) -> bool:
    try:
        command.check(name, value)
    except UnsafeValue:
        return False
    return True


# -- CommandActuator.set_limit ------------------------------------------------------------------

TEMPLATE = [
    "{instance}",
    "nvidia-smi",
    "--host={instance}",
    "-i",
    "{gpu}",
    "--id={uuid}",
    "--node={node}",
    "-pl",
    "{watts}",
]


def _expected(values: dict[str, str]) -> list[str]:
    return [a.format(**values) for a in TEMPLATE[2:]]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(values=labels, w=watts)
def test_set_limit_runs_only_the_intended_program(harness: Harness, values: dict[str, str], w: float) -> None:
    harness.reset()
    act = CommandActuator([str(harness.stand_in), *TEMPLATE], default_watts=300, timeout=10)
    gpu = GpuRef(values["uuid"], values["gpu"], values["instance"], {"node": values["node"]})
    all_values = {**values, "watts": f"{w:g}"}
    try:
        act.set_limit(gpu, w)
    except UnsafeValue as exc:
        assert exc.label in all_values and not _safe(exc.label, all_values[exc.label])
        assert f"label {exc.label}=" in str(exc)
        assert harness.calls() == [], "a refused value must run nothing"
        event(f"refused {exc.label}")
    else:
        assert all(_safe(k, v) for k, v in all_values.items())
        assert harness.calls() == [_expected(all_values)]
        event("ran")
    assert harness.stray() == []


# -- a remediation hook, from the webhook through the worker --------------------------------------

_fingerprints = itertools.count()
HOOK = [
    "{instance}",
    "nvidia-smi",
    "--host={instance}",
    "-i",
    "{gpu}",
    "--id={uuid}",
    "--node={node}",
    "--action-id={action_id}",
]


@pytest.fixture(scope="module")
def hook_rem(harness: Harness, tmp_path_factory: pytest.TempPathFactory):
    """One Remediation for all examples (a preempt hook through the stand-in), and its clock."""
    clock = Clock()
    section = {
        "commands": {"preempt": [str(harness.stand_in), *HOOK]},
        "escalation": {"enabled": False},
        "budget": {"max_actions_per_minute": 1_000_000},
    }
    rem = Remediation.create(
        str(tmp_path_factory.mktemp("hookdb") / "agent.db"),
        parse(section),
        FakeScheduler(["GPU-1"]),
        FakeActuator(),
        credentials=Credentials(b"t"),
        clock=clock,
    )
    yield rem, clock
    rem.stop()


def deliver(rem: Remediation, *alerts: dict[str, Any]) -> None:
    rem.intake.accept(json.dumps(notification(*alerts)).encode())
    rem.worker.run_once()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(values=labels)
def test_hook_runs_only_the_intended_program(harness: Harness, hook_rem, values: dict[str, str]) -> None:
    rem, clock = hook_rem
    clock.t += 120
    harness.reset()
    a = alert(values["uuid"], action="preempt", fingerprint=f"fp-{next(_fingerprints)}")
    a["labels"].update(gpu=values["gpu"], instance=values["instance"], node=values["node"])
    deliver(rem, a)
    row = rem.actions(limit=1)[0]
    if not values["uuid"]:
        assert row["outcome"] == "failed" and "no uuid label" in row["error"]
        assert harness.calls() == []
    elif row["outcome"] == "failed":
        name = row["detail"]["refused_label"]
        assert not _safe(name, values[name])
        assert f"label {name}=" in row["error"] and "nothing was run" in row["error"]
        assert harness.calls() == [], "a refused value must run nothing"
        event(f"refused {name}")
    else:
        assert row["outcome"] == "acted", row
        event("ran")
        assert all(_safe(k, v) for k, v in values.items())
        assert harness.calls() == [[a.format(**values, action_id=row["id"]) for a in HOOK[2:]]]
    assert harness.stray() == []


# -- the payload from the issue ------------------------------------------------------------------

PWNED = "2; id > /tmp/PWNED; echo"


def test_the_harness_sees_an_injection_when_values_are_not_checked(tmp_path: Path) -> None:
    """Without render's checks the stand-in runs injected commands, and the harness sees them."""
    h = make_harness(tmp_path)
    command.run([str(h.stand_in), "node1", "nvidia-smi", "-i", "2; touch CANARY; echo", "-pl", "240"])
    assert h.stray() == ["CANARY"]
    assert h.calls() == [["-i", "2"]]


def test_the_issue_payload_is_refused_before_anything_runs(tmp_path: Path, clock, make_rem) -> None:
    h = make_harness(tmp_path / "h")
    # The issue's payload names /tmp/PWNED, which a run elsewhere may have left behind: the same
    # payload aimed at this test's own directory is what proves nothing ran.
    canary = tmp_path / "PWNED"
    own = f"2; id > {canary}; echo"
    template = [str(h.stand_in), "{instance}", "nvidia-smi", "-i", "{gpu}", "-pl", "{watts}"]
    act = CommandActuator(template, default_watts=300)
    with pytest.raises(UnsafeValue, match=r"label gpu='2; id > /tmp/PWNED; echo' refused") as exc:
        act.set_limit(GpuRef("GPU-1", PWNED, "node1:9786"), 240)
    assert exc.value.label == "gpu"
    # The same through the worker: a throttle whose actuator is this command, and a hook.
    rem = make_rem(
        {
            "actuator": {"kind": "command", "set_command": template, "default_watts": 400},
            "commands": {"quarantine": [*template[:5], "--drain"]},
            "budget": {"max_quarantined_ratio": 0.5},
        },
        actuator=act,
    )
    for i, (action, payload) in enumerate(itertools.product(("throttle", "quarantine"), (PWNED, own))):
        a = alert("GPU-1", action=action, fingerprint=f"pwn-{i}")
        a["labels"]["gpu"] = payload
        rem.intake.accept(json.dumps(notification(a)).encode())
        rem.worker.run_once()
        row = rem.actions(limit=1)[0]
        assert (row["action"], row["outcome"]) == (action, "failed")
        assert row["detail"]["refused_label"] == "gpu"
        assert row["error"].startswith("label gpu='2; id > ") and row["error"].endswith("nothing was run")
    assert rem.sched.states["GPU-1"] == "healthy", "the quarantine itself must not happen either"
    assert h.calls() == [] and h.stray() == []
    assert not canary.exists()


@pytest.mark.parametrize(
    "name,value",
    [
        ("gpu", "2"),
        ("gpu", "0"),
        ("uuid", "GPU-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"),
        ("uuid", "MIG-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"),
        ("uuid", "MIG-GPU-5c89852c-d268-c3f3-1b07-005d5ae1dc3f/7/0"),
        ("instance", "gpu-node-1:9786"),
        ("instance", "10.0.0.5:9786"),
        ("instance", "[fe80::1]:9786"),
        ("instance", "fe80::1"),
        ("instance", "node1"),
        ("watts", "240"),
        ("watts", "240.5"),
        ("action_id", "17"),
        ("node", "rack-2/n1@dc+a:b_c.d"),
    ],
)
def test_values_of_the_expected_form_pass(name: str, value: str) -> None:
    assert command.check(name, value) == value


@pytest.mark.parametrize(
    "name,value,why",
    [
        ("gpu", PWNED, "digits"),
        ("gpu", "-1", "digits"),
        ("gpu", "\u0661", "digits"),
        ("gpu", "1\n", "digits"),
        ("gpu", "", "empty"),
        ("gpu", "1234567", "digits"),
        ("uuid", "GPU-xyz", "NVML UUID"),
        ("uuid", "GPU-1 ;id", "NVML UUID"),
        ("instance", "-oProxyCommand=id", "host name"),
        ("instance", "a b", "host name"),
        ("instance", "node1:99999", "port"),
        ("instance", "[fe80::1%$(id)]:1", "IPv6"),
        ("instance", "300.1.2.3:22", "host name"),
        ("instance", "[::1]x", "port"),
        ("watts", "1e+06", "number"),
        ("watts", "nan", "number"),
        ("watts", "-5", "number"),
        ("action_id", "1.0", "integer"),
        ("node", "-x", "leading '-'"),
        ("node", "a" * 129, "1-128"),
        ("node", "$(id)", "1-128"),
        ("node", "a=b", "1-128"),
        ("node", "caf\u00e9", "1-128"),
    ],
)
def test_values_of_another_form_are_refused_naming_the_label(name: str, value: str, why: str) -> None:
    with pytest.raises(UnsafeValue, match=f"label {name}=") as exc:
        command.render(["prog", f"--x={{{name}}}"], {name: value})
    assert exc.value.label == name and why in exc.value.reason
