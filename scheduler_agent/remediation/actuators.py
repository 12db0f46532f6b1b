"""Power-limit actuators behind one interface: NVML on this host, the simulator, a command.

Each reads a GPU's limits (current, and NVML's min/max constraints where known) and sets a
limit in watts. Setting is idempotent (it sets a value, never adjusts one), which is what lets
the worker redo an action interrupted by a kill without doing it twice in effect.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from ..client import ApiError, Client
from . import command
from .errors import ActuatorError


@dataclass(frozen=True)
class GpuRef:
    """The GPU an alert names: its UUID, index on its node, the node's instance, all labels."""

    uuid: str
    gpu: str = ""
    instance: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PowerLimits:
    current_watts: float
    min_watts: float = 0.0
    max_watts: float = math.inf

    def clamp(self, watts: float) -> float:
        return min(max(watts, self.min_watts), self.max_watts)


class PowerActuator(Protocol):
    name: str

    def read(self, gpu: GpuRef) -> PowerLimits: ...

    def set_limit(self, gpu: GpuRef, watts: float) -> None: ...


class NoActuator:
    """``kind: none``: throttling is refused with a message saying how to enable it."""

    name = "none"

    def read(self, gpu: GpuRef) -> PowerLimits:
        raise ActuatorError(
            "no power actuator configured (remediation.actuator.kind: none); "
            "set kind to nvml, sim or command to let the agent throttle"
        )

    def set_limit(self, gpu: GpuRef, watts: float) -> None:
        self.read(gpu)


class NvmlActuator:
    """The power limit through NVML, for GPUs on the agent's own host.

    ``nvml`` is the pynvml module (injectable: the simulator swaps its library handle, tests
    may pass a fake). Setting a limit needs root; without it NVML answers NoPermission and the
    error says so instead of failing obscurely.
    """

    name = "nvml"

    def __init__(self, nvml: ModuleType | None = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml: ModuleType = nvml
        self._initialised = False

    def _handle(self, gpu: GpuRef) -> Any:
        n = self._nvml
        try:
            if not self._initialised:
                n.nvmlInit()
                self._initialised = True
            return n.nvmlDeviceGetHandleByUUID(gpu.uuid)
        except n.NVMLError as exc:
            raise ActuatorError(
                f"GPU {gpu.uuid} (instance {gpu.instance or '?'}) not found through NVML on "
                f"this host: {exc}. The nvml actuator acts on the agent's own host only; use "
                "actuator kind command (ssh ... nvidia-smi -pl) for other nodes"
            ) from None

    def read(self, gpu: GpuRef) -> PowerLimits:
        n = self._nvml
        handle = self._handle(gpu)
        try:
            lo, hi = n.nvmlDeviceGetPowerManagementLimitConstraints(handle)
            current = n.nvmlDeviceGetPowerManagementLimit(handle)
        except n.NVMLError as exc:
            raise ActuatorError(f"GPU {gpu.uuid}: reading the power limit failed: {exc}") from None
        return PowerLimits(current / 1000.0, lo / 1000.0, hi / 1000.0)  # NVML speaks milliwatts

    def set_limit(self, gpu: GpuRef, watts: float) -> None:
        n = self._nvml
        handle = self._handle(gpu)
        try:
            n.nvmlDeviceSetPowerManagementLimit(handle, int(round(watts * 1000)))
        except n.NVMLError_NoPermission:
            raise ActuatorError(
                f"GPU {gpu.uuid}: setting the power limit needs root (NVML NoPermission); run "
                "the agent as root, or use actuator kind command with "
                "['sudo', 'nvidia-smi', '-i', '{gpu}', '-pl', '{watts}']"
            ) from None
        except n.NVMLError as exc:
            raise ActuatorError(f"GPU {gpu.uuid}: setting the power limit to {watts:g} W failed: {exc}") from None


class SimActuator:
    """The simulated fleet's control endpoint (BRIEF.md): GET /api/v1/gpus and
    POST /api/v1/gpus/{gpu}/power-limit {"watts": W}."""

    name = "sim"

    def __init__(self, base_url: str = "http://127.0.0.1:9788", timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return Client(self.base_url, timeout=self.timeout).call(method, path, body)
        except ApiError as exc:
            raise ActuatorError(f"simulator {method} {path}: {exc}") from None
        except (OSError, ValueError) as exc:
            raise ActuatorError(
                f"simulator at {self.base_url} unreachable ({exc}); is the exporter running with --simulate?"
            ) from None

    def read(self, gpu: GpuRef) -> PowerLimits:
        doc = self._call("GET", "/api/v1/gpus")
        gpus = doc.get("gpus", doc) if isinstance(doc, dict) else doc
        for g in gpus if isinstance(gpus, list) else []:
            if g.get("uuid") == gpu.uuid or (not gpu.uuid and str(g.get("index")) == gpu.gpu):
                return PowerLimits(
                    float(g["power_limit_watts"]),
                    float(g.get("power_limit_min_watts", 0.0)),
                    float(g.get("power_limit_max_watts", math.inf)),
                )
        raise ActuatorError(f"simulator has no GPU {gpu.uuid or gpu.gpu}")

    def set_limit(self, gpu: GpuRef, watts: float) -> None:
        key = urllib.parse.quote(gpu.uuid or gpu.gpu, safe="")
        self._call("POST", f"/api/v1/gpus/{key}/power-limit", {"watts": watts})


class CommandActuator:
    """An argument-list template per operation (``{watts}`` plus the alert's labels).

    Run without a local shell; every value a template uses is checked by ``command.render``
    (``{gpu}`` digits, ``{uuid}`` an NVML UUID, ``{instance}`` a host[:port], ``{watts}`` a
    number, other labels a short shell-inert word) before the command runs, because a program
    such as ssh hands its arguments to a shell on the other side. A refused value raises
    ``command.UnsafeValue`` naming the label, and nothing runs.

    ``read_command`` prints ``current [min max]`` in watts (``nvidia-smi --query-gpu=
    power.limit,power.min_limit,power.max_limit --format=csv,noheader,nounits`` does); without
    it the limit to restore is ``default_watts``.
    """

    name = "command"

    def __init__(
        self,
        set_command: list[str],
        read_command: list[str] | None = None,
        default_watts: float | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.set_command = set_command
        self.read_command = read_command
        self.default_watts = default_watts
        self.timeout = timeout

    @staticmethod
    def _values(gpu: GpuRef) -> dict[str, str]:
        return {**gpu.labels, "uuid": gpu.uuid, "gpu": gpu.gpu, "instance": gpu.instance}

    def read(self, gpu: GpuRef) -> PowerLimits:
        if self.read_command is None:
            if self.default_watts is None:
                raise ActuatorError(
                    "actuator kind command: set read_command or default_watts so the agent knows which limit to restore"
                )
            return PowerLimits(self.default_watts)
        out = command.run(command.render(self.read_command, self._values(gpu)), self.timeout)
        nums = [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d+)?", out)]
        if not nums:
            raise ActuatorError(f"read_command printed no number: {out.strip()[:100]!r}")
        if len(nums) >= 3:
            return PowerLimits(nums[0], nums[1], nums[2])
        return PowerLimits(nums[0])

    def set_limit(self, gpu: GpuRef, watts: float) -> None:
        values = {**self._values(gpu), "watts": f"{watts:g}"}
        command.run(command.render(self.set_command, values), self.timeout)


def from_config(spec: Mapping[str, Any]) -> PowerActuator:
    """The actuator a validated ``remediation.actuator`` section asks for."""
    kind = spec.get("kind", "none")
    timeout = float(spec.get("timeout_seconds", 10.0))
    if kind == "nvml":
        return NvmlActuator()
    if kind == "sim":
        return SimActuator(spec.get("sim_url", "http://127.0.0.1:9788"), timeout)
    if kind == "command":
        return CommandActuator(list(spec["set_command"]), spec.get("read_command"), spec.get("default_watts"), timeout)
    return NoActuator()
