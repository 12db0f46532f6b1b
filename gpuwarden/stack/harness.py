"""The whole loop under measurement: faults played on a running ``Stack``, for the end-to-end
tests (tests/e2e) and ``python -m bench.latency``.

Simulated exporter → Prometheus (the SHIPPED rules in rules/generated, unchanged) → Alertmanager
(the SHIPPED routing tree; only its receivers' URLs point here) → agent: a ``Stack``, as
``gpuwarden up`` starts it. What differs from ``gpuwarden up`` is deployment settings only, never
a rule: every port is a free one, Prometheus scrapes and evaluates every ``SCRAPE_INTERVAL``, and
the agent's throttle hold-down is short.

The faults come from the simulator's shipped scenarios (exporter/sim/scenarios): each declares
the rule it drives (``expect.rule``); its steps before ``holds_until`` inject the fault and the
steps at ``holds_until`` clear it. ``Fault`` retargets them to any GPU and plays them through the
control endpoint's ``POST /api/v1/scenario``, so every fault can run at once on its own GPU.

This module imports nothing from pytest: failures raise ``LoopError`` (tests turn them into
failures, the benchmark into an exit status).
"""

from __future__ import annotations

import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pynvml
import yaml

from gpuwarden.exporter.sim.scenario import seconds, shipped
from gpuwarden.procs import ProcError
from gpuwarden.prom import PrometheusClient, PrometheusError
from gpuwarden.rules import config as rules_config
from gpuwarden.scheduler_agent.client import ApiError, Client

from . import configs
from .launcher import Stack
from .view import NotificationSink

# Deployment settings of the loop under test (not rules): Prometheus' scrape and evaluation
# interval, and the agent's throttle hold-down (agent policy: how long a GPU must stay cool
# before its power limit is restored).
SCRAPE_INTERVAL = 2.0
EVALUATION_INTERVAL = 2.0
HOLD_DOWN_SECONDS = 5.0
GPU_COUNT = 10  # eight faulted GPUs, each with its own rule, and two spares
SEED_RULES = (
    "THERMAL_WARNING",
    "THERMAL_CRITICAL",
    "POWER_SPIKE",
    "POWER_CRITICAL",
    "ECC_ERRORS_SPIKE",
    "ECC_UNCORRECTABLE",
    "THROTTLING",
    "MEMORY_PRESSURE",
)
# A job that sleeps (its GPU is what matters); bounded, so a job can never outlive a crashed run
# for long (teardown cancels every job anyway: the agent runs jobs in their own sessions).
JOB_COMMAND = [sys.executable, "-c", "import time; time.sleep(900)"]

# NVML clock-event reasons that count as throttling (DESIGN.md), as the simulator's bitmask.
THROTTLING_MASK = (
    pynvml.nvmlClocksThrottleReasonSwPowerCap
    | pynvml.nvmlClocksThrottleReasonHwSlowdown
    | pynvml.nvmlClocksThrottleReasonSwThermalSlowdown
    | pynvml.nvmlClocksThrottleReasonHwThermalSlowdown
    | pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown
)

T = TypeVar("T")


class LoopError(RuntimeError):
    """The loop did not come up, or a condition was not reached in time; says what and where."""


def _request(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 5.0) -> Any:
    """A JSON call to the agent or the simulator (the agent's API client); an HTTP error is a
    LoopError naming the call."""
    base, _, path = url.partition("/api/")
    try:
        return Client(base, token, timeout).call(method, "/api/" + path, body)
    except ApiError as exc:
        raise LoopError(f"{method} {url}: {exc}") from None


def poll(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.25) -> T:
    """``predicate()``'s first truthy value; LoopError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, LoopError, PrometheusError, KeyError, ValueError) as exc:  # a service not ready yet
            last = exc
        time.sleep(interval)
    raise LoopError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))


@dataclass(frozen=True)
class Fault:
    """One seed rule's fault from its shipped scenario, to be played on any GPU."""

    rule: str
    scenario: str
    inject_steps: tuple[dict[str, Any], ...]
    clear_steps: tuple[dict[str, Any], ...]

    def doc(self, gpu: int, clear: bool = False) -> dict[str, Any]:
        steps = self.clear_steps if clear else self.inject_steps
        return {
            "name": f"e2e-{self.scenario}-{'clear' if clear else 'inject'}-gpu{gpu}",
            "steps": [{**s, "gpu": gpu} for s in steps],
        }


def shipped_faults() -> dict[str, Fault]:
    """Seed rule id -> its fault, from the shipped scenarios' ``expect.rule``.

    Inject steps are shifted so the first happens at once (a scenario may wait 10 s before its
    fault); the clear steps (those at ``holds_until``) all happen at once.
    """
    out: dict[str, Fault] = {}
    for name, path in shipped().items():
        doc = yaml.safe_load(path.read_text())
        expect = doc.get("expect") or {}
        if expect.get("rule") not in SEED_RULES:
            continue
        until = seconds(expect["holds_until"])
        steps = [(seconds(s["at"]), s) for s in doc["steps"]]
        first = min(at for at, _ in steps)
        inject = tuple({**s, "at": f"{at - first:g}s"} for at, s in steps if at < until)
        clear = tuple({**s, "at": "0s"} for at, s in steps if at >= until)
        if not clear:
            raise LoopError(f"{path}: no step at holds_until ({expect['holds_until']}) clears the fault")
        out[expect["rule"]] = Fault(expect["rule"], name, inject, clear)
    missing = set(SEED_RULES) - set(out)
    if missing:
        raise LoopError(f"no shipped scenario in exporter/sim/scenarios drives {sorted(missing)} (expect.rule)")
    return out


def threshold_now(rule: rules_config.AlertRule, gpu: dict[str, Any], slowdown: float | None) -> float:
    """``rule``'s threshold for this GPU now: a profile's relative threshold from the GPU's own
    limit (as the generated PromQL computes it), else the fixed one (also the rules' fallback for
    a GPU that does not report the limit)."""
    rel = rule.relative
    if rel is None:
        return float(rule.threshold)
    if rel.limit == "power_limit":
        return rel.threshold(float(gpu["power_limit_watts"]))
    if rel.limit == "temperature_slowdown" and slowdown is not None:
        return rel.threshold(slowdown)
    return float(rule.threshold)


def crossed(
    rule: rules_config.AlertRule, gpu: dict[str, Any], baseline: dict[str, Any], slowdown: float | None = None
) -> bool:
    """Whether the simulator's raw state of ``gpu`` is past ``rule``'s threshold now (the moment
    the fault is visible to NVML, from which detection latency counts)."""
    ops = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__, "<": float.__lt__}
    op = ops[rule.op]
    if rule.metric == "gpu_temperature_celsius":
        value = gpu["temperature_celsius"]
    elif rule.metric == "gpu_power_watts":
        value = gpu["power_watts"]
    elif rule.metric == "gpu_ecc_errors_correctable_total":
        value = gpu["ecc_correctable"] - baseline["ecc_correctable"]  # growth since the fault
    elif rule.metric == "gpu_ecc_errors_uncorrectable_total":
        value = gpu["ecc_uncorrectable"]
    elif rule.metric == "gpu_throttle_active":
        value = 1.0 if gpu["throttle_reasons"] & THROTTLING_MASK else 0.0
    elif rule.metric == "gpu_memory_used_bytes":
        value = gpu["memory_ratio"]
    else:
        raise LoopError(f"no simulator field for {rule.rule}'s metric {rule.metric}")
    return op(float(value), threshold_now(rule, gpu, slowdown))


@dataclass
class Loop:
    """A running stack and the jobs placed on it; ``stop()`` cancels every job, then stops the
    stack (every child by pid)."""

    stack: Stack
    jobs: list[int] = field(default_factory=list)

    @property
    def workdir(self) -> Path:
        return self.stack.workdir

    @property
    def ports(self) -> configs.Ports:
        return self.stack.ports

    @property
    def token(self) -> str:
        return self.stack.token

    @property
    def sink(self) -> NotificationSink:
        assert self.stack.sink is not None, "the stack was never started"
        return self.stack.sink

    @property
    def agent_url(self) -> str:
        return self.stack.agent_url

    @property
    def sim_url(self) -> str:
        return self.stack.sim_url

    @property
    def prometheus_url(self) -> str:
        return self.stack.prometheus_url

    @property
    def exporter_url(self) -> str:
        return self.stack.exporter_url

    # -- agent ----------------------------------------------------------------------------
    def agent(self, path: str, body: Any = None, method: str | None = None) -> Any:
        return _request(method or ("GET" if body is None else "POST"), self.agent_url + path, body, self.token)

    def gpus(self) -> dict[str, dict[str, Any]]:
        """The agent's GPUs by uuid (GET /api/v1/gpus)."""
        return {g["uuid"]: g for g in self.agent("/api/v1/gpus")}

    def actions(self, uuid: str) -> list[dict[str, Any]]:
        """The agent's audit trail for one GPU, oldest first (GET /api/v1/actions)."""
        q = urllib.parse.urlencode({"uuid": uuid, "limit": 1000})
        return list(reversed(self.agent(f"/api/v1/actions?{q}")["actions"]))

    def submit(self, name: str, gpus: int = 1) -> int:
        job = self.agent(
            "/api/v1/jobs", {"name": name, "gpus": gpus, "command": JOB_COMMAND, "idempotency_key": f"e2e-{name}"}
        )
        self.jobs.append(job["id"])
        return int(job["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = self.agent(f"/api/v1/jobs/{job_id}")
        return job

    # -- simulator (the NVML library the exporter and the agent's actuator read) -------------
    def sim_gpus(self) -> list[dict[str, Any]]:
        gpus: list[dict[str, Any]] = _request("GET", self.sim_url + "/api/v1/gpus")["gpus"]
        return gpus

    def play(self, doc: dict[str, Any]) -> None:
        _request("POST", self.sim_url + "/api/v1/scenario", doc)

    # -- exporter and Prometheus ------------------------------------------------------------
    def exporter_value(self, metric: str, gpu: int, **labels: str) -> float | None:
        """One per-GPU series as the exporter serves it now (read through NVML from the sim)."""
        with urllib.request.urlopen(self.exporter_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        needles = [f'gpu="{gpu}"', *(f'{k}="{v}"' for k, v in labels.items())]
        for line in text.splitlines():
            if line.startswith(metric + "{") and all(n in line.split("}", 1)[0] for n in needles):
                return float(line.rsplit(" ", 1)[1])
        return None

    def prom_alerts(self) -> list[dict[str, Any]]:
        return PrometheusClient(self.prometheus_url, timeout=5).alerts()

    def notifications(self, rule: str, gpu: int, status: str = "firing") -> list[dict[str, Any]]:
        """What Alertmanager delivered to the on-call/chat receivers for ``rule`` on ``gpu``."""
        return [
            n
            for n in list(self.sink.received)
            if n["labels"].get("rule") == rule and n["labels"].get("gpu") == str(gpu) and n["status"] == status
        ]

    # -- lifecycle --------------------------------------------------------------------------
    def stop(self) -> None:
        for job_id in self.jobs:
            try:
                self.agent(f"/api/v1/jobs/{job_id}", method="DELETE")
            except (OSError, LoopError):
                pass  # already finished, or the agent is gone (its jobs are then bounded sleeps)
        self.stack.stop()


def settings() -> configs.Settings:
    """The loop's deployment settings (not rules): fast scrapes and evaluations, short hold-down."""
    return configs.Settings(
        scrape_interval=f"{SCRAPE_INTERVAL:g}s",
        evaluation_interval=f"{EVALUATION_INTERVAL:g}s",
        simulated=True,
        throttle_hold_down_seconds=HOLD_DOWN_SECONDS,
    )


def start(
    workdir: Path,
    prometheus: str | None = None,
    alertmanager: str | None = None,
    gpu_count: int = GPU_COUNT,
    exporter: str | None = None,
    agent: str | None = None,
) -> Loop:
    """Starts a ``Stack`` of ``gpu_count`` simulated GPUs on free ports with the loop's
    ``settings()`` and waits until the agent knows every GPU (discovered from Prometheus). On
    failure everything started is stopped and LoopError says why."""
    try:
        stack = Stack(
            workdir,
            prometheus=prometheus,
            alertmanager=alertmanager,
            settings=settings(),
            gpu_count=gpu_count,
            exporter=exporter,
            agent=agent,
        )
    except ProcError as exc:
        raise LoopError(str(exc)) from None
    loop = Loop(stack)
    try:
        stack.start()
        stack.wait_for_gpus(gpu_count, timeout=60)
    except ProcError as exc:
        loop.stop()
        raise LoopError(str(exc)) from None
    except BaseException:
        loop.stop()
        raise
    return loop


@dataclass
class Run:
    """Every seed rule's fault injected at once, each on its own GPU; the moments that matter."""

    loop: Loop
    gpu: dict[str, int]  # rule -> GPU index
    uuid: dict[str, str]  # rule -> GPU uuid
    job_id: int  # the job running on POWER_CRITICAL's GPU
    injected_at: dict[str, float]  # rule -> wall-clock time the fault was played
    crossed_at: dict[str, float] = field(default_factory=dict)  # rule -> raw value first past the threshold
    faults: dict[str, Fault] = field(default_factory=dict)
    cleared: set[str] = field(default_factory=set)
    latencies: dict[str, dict[str, float]] = field(default_factory=dict)  # filled in by the tests
    specs: dict[str, rules_config.AlertRule] = field(default_factory=dict)  # rule -> version judging its GPU
    _stop: threading.Event = field(default_factory=threading.Event)

    def clear(self, rule: str) -> float:
        """Plays the clearing steps of ``rule``'s scenario on its GPU; returns when (wall clock)."""
        self.loop.play(self.faults[rule].doc(self.gpu[rule], clear=True))
        self.cleared.add(rule)
        return time.time()

    def stop_watching(self) -> None:
        self._stop.set()


def inject_all(loop: Loop) -> Run:
    """Places a job, aims POWER_CRITICAL at the job's GPU and the other seven rules at seven other
    GPUs (in index order), plays all eight faults at once, and watches the simulator for the
    moment each raw value crosses its rule's threshold."""
    faults = shipped_faults()
    cfg = rules_config.load()
    job_id = loop.submit("e2e-victim")
    job = poll(lambda: (j := loop.job(job_id))["state"] == "running" and j, 30, f"job {job_id} to run")
    by_uuid = {g["uuid"]: g for g in loop.sim_gpus()}
    victim = by_uuid[job["gpu_uuids"][0]]["index"]
    others = [g["index"] for g in sorted(by_uuid.values(), key=lambda g: g["index"]) if g["index"] != victim]
    gpu = {"POWER_CRITICAL": victim}
    for rule, index in zip([r for r in SEED_RULES if r != "POWER_CRITICAL"], others, strict=False):
        gpu[rule] = index
    index_uuid = {g["index"]: u for u, g in by_uuid.items()}
    baseline = {g["index"]: g for g in by_uuid.values()}
    # The rules judge each GPU by its model's profile (rules/thresholds.yaml: profiles).
    specs = {r: cfg.rule_for(r, baseline[i]["name"]) for r, i in gpu.items()}
    slowdown = {
        i: loop.exporter_value("gpu_temperature_threshold_celsius", i, threshold="slowdown") for i in gpu.values()
    }
    injected: dict[str, float] = {}
    for rule in SEED_RULES:
        injected[rule] = time.time()
        loop.play(faults[rule].doc(gpu[rule]))
    run = Run(loop, gpu, {r: index_uuid[i] for r, i in gpu.items()}, job_id, injected, faults=faults, specs=specs)

    def watch() -> None:
        while not run._stop.is_set():
            try:
                state = {g["index"]: g for g in loop.sim_gpus()}
            except (OSError, LoopError):
                return  # the loop is stopping
            now = time.time()
            for rule, index in gpu.items():
                if rule not in run.crossed_at and crossed(specs[rule], state[index], baseline[index], slowdown[index]):
                    run.crossed_at[rule] = now
            if len(run.crossed_at) == len(gpu):
                return
            run._stop.wait(0.1)

    threading.Thread(target=watch, name="threshold-watch", daemon=True).start()
    return run


def _duration(value: str | None, default: float) -> float:
    return default if value is None else seconds(str(value))


def routes_for(labels: dict[str, str], config: Path | None = None) -> list[tuple[str, float]]:
    """(receiver, group_wait seconds) of every route of the shipped Alertmanager tree that
    ``labels`` reaches, in order, following ``continue`` and inheriting ``group_wait`` as
    Alertmanager does. Only ``=``, ``!=``, ``=~`` and ``!~`` matchers are understood."""
    doc = yaml.safe_load((config or configs.ALERTMANAGER_DIR / "alertmanager.yml").read_text())

    def matches(route: dict[str, Any]) -> bool:
        for m in route.get("matchers", []):
            found = re.match(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*$', m)
            if not found:
                raise LoopError(f"alertmanager.yml: matcher {m!r} not understood")
            name, op, value = found.groups()
            have = labels.get(name, "")
            ok = {
                "=": have == value,
                "!=": have != value,
                "=~": re.fullmatch(value, have) is not None,
                "!~": re.fullmatch(value, have) is None,
            }[op]
            if not ok:
                return False
        return True

    def walk(route: dict[str, Any], wait: float) -> list[tuple[str, float]]:
        wait = _duration(route.get("group_wait"), wait)
        out: list[tuple[str, float]] = []
        for child in route.get("routes", []):
            if matches(child):
                out += walk({"receiver": route["receiver"], **child}, wait)
                if not child.get("continue"):
                    break
        return out or [(route["receiver"], wait)]

    return walk(doc["route"], 30.0)  # Alertmanager's default group_wait


def floor_seconds(rule: rules_config.AlertRule, receiver: str) -> float:
    """Detection latency's floor: ``for`` + scrape + evaluation interval + the group_wait of the
    route that delivers the alert to ``receiver``."""
    labels = {"rule": rule.rule, "severity": rule.severity, "action": rule.action}
    waits = dict(routes_for(labels))
    if receiver not in waits:
        raise LoopError(f"{rule.rule} ({labels}) does not reach receiver {receiver!r}: it reaches {sorted(waits)}")
    return rule.for_seconds + SCRAPE_INTERVAL + EVALUATION_INTERVAL + waits[receiver]


AGENT_RECEIVER = "gpuwarden-agent"


def _receivers(rule: rules_config.AlertRule) -> list[str]:
    return [r for r, _ in routes_for({"rule": rule.rule, "severity": rule.severity, "action": rule.action})]


def receiver_for(rule: rules_config.AlertRule) -> str:
    """Whose record is the rule's action: the agent, which the shipped routing sends every
    gpuwarden alert (it acts on throttle/preempt/quarantine and records ``notify`` in its audit);
    for a routing without the agent, the first receiver (chat or on-call)."""
    names = _receivers(rule)
    if AGENT_RECEIVER in names:
        return AGENT_RECEIVER
    return names[0]


def pager_for(rule: rules_config.AlertRule) -> str:
    """Who pages people for the rule: the first receiver that is not the agent (on-call for a
    critical, chat for a warning), as Alertmanager's routing decides."""
    names = [r for r in _receivers(rule) if r != AGENT_RECEIVER]
    if not names:
        raise LoopError(f"{rule.rule} reaches no receiver but the agent: {_receivers(rule)}")
    return names[0]
