"""The remediation package's exceptions, in one small hierarchy.

- ``RemediationError``: base of everything raised here.
  - ``IntakeError``: a webhook request refused; carries the HTTP status (400, 401, 413, ...)
    and a reason that says what was wrong. Never 5xx: a 5xx makes Alertmanager retry, which
    only helps for faults on our side.
  - ``PolicyConfigError``: the ``remediation:`` config section is invalid; the message names the
    file and the field (``remediation.budget.max_actions_per_minute``) and the bad value.
  - ``ActuatorError``: an actuator could not read or change a GPU (no privilege, no such GPU,
    the simulator unreachable, a command exited non-zero); the message says what to do.
"""

from __future__ import annotations

from gpuwarden.config import ConfigError


class RemediationError(Exception):
    """Base class of the remediation package's errors."""


class IntakeError(RemediationError):
    """A webhook request refused with ``status`` (4xx) and a reason naming what was wrong."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class PolicyConfigError(RemediationError, ConfigError):
    """The ``remediation:`` config section is invalid (the message names file and field);
    also the config foundation's ``ConfigError``."""


class ActuatorError(RemediationError):
    """An actuator failed to read or set a GPU's power limit or run its command."""
