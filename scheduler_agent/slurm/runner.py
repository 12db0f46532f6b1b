"""Running scontrol: argument lists (never a shell), a timeout, retries with back-off.

Only failures that can pass are retried: a timeout, or Slurm saying it could not reach the
controller. A refusal (an unknown node or job, a permission error) fails at once: repeating it
cannot help and would only delay the audit entry that says so.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import SlurmError

log = logging.getLogger(__name__)

TRANSIENT = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Zero Bytes were "
    r"transmitted|Connection refused|Resource temporarily unavailable|"
    r"Communication connection failure|Transaction blocked|try again",
    re.I,
)


@dataclass(frozen=True)
class Result:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    attempts: int


class Runner:
    def __init__(
        self,
        scontrol: Sequence[str] = ("scontrol",),
        slurm_conf: str | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.prefix = list(scontrol)
        self.env = {**os.environ, **({"SLURM_CONF": slurm_conf} if slurm_conf else {})}
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep

    def argv(self, *args: str) -> list[str]:
        return [*self.prefix, *args]

    def run(self, *args: str, check: bool = True) -> Result:
        """Runs ``scontrol ARGS``; raises ``SlurmError`` naming the command and Slurm's words
        when it fails after its attempts (or at once for a non-transient failure)."""
        argv = self.argv(*args)
        delay = self.backoff
        why = ""
        for attempt in range(1, self.attempts + 1):
            try:
                p = subprocess.run(
                    argv, env=self.env, capture_output=True, text=True, timeout=self.timeout, check=False
                )
            except subprocess.TimeoutExpired:
                why, transient, rc, out, err = (f"timed out after {self.timeout:g}s", True, None, "", "")
            except OSError as exc:
                raise SlurmError(
                    f"{_show(argv)}: cannot run it: {exc} (set slurm.scontrol to the scontrol to use)"
                ) from None
            else:
                rc, out, err = p.returncode, p.stdout, p.stderr
                if rc == 0 or not check:
                    return Result(argv, rc, out, err, attempt)
                why = f"exit {rc}: {(err or out).strip()[:500]}"
                transient = bool(TRANSIENT.search(err + out))
            log.warning(
                "a Slurm command failed",
                extra={"event": "slurm.command_failed", "argv": _show(argv), "attempt": attempt, "error": why},
            )
            if not transient or attempt == self.attempts:
                raise SlurmError(f"{_show(argv)}: {why}" + (f" (after {attempt} attempts)" if attempt > 1 else ""))
            self.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")


def _show(argv: Sequence[str]) -> str:
    return " ".join(a if re.fullmatch(r"[\w./:=@,+-]+", a) else repr(a) for a in argv)
