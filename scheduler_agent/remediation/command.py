"""Command templates: an argument list with ``{name}`` placeholders, run without a shell.

``["ssh", "{instance}", "nvidia-smi", "-i", "{gpu}", "-pl", "{watts}"]`` becomes one argv
with the alert's label values put in place. No shell ever sees the result, so a label value
cannot add commands or redirect output. Label values are still untrusted: a value starting
with ``-`` could be read as an option by the program (``ssh -oProxyCommand=...``), so such a
value, or one containing a NUL or a newline, is refused with an error naming the label.
"""

from __future__ import annotations

import re
import subprocess
from typing import Mapping, Sequence

from .errors import ActuatorError

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render(template: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The argv with placeholders replaced; raises ``ActuatorError`` naming a missing or unsafe
    value. ``{{`` and ``}}`` are not special: templates hold no braces other than placeholders."""
    argv: list[str] = []
    for arg in template:
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in values:
                raise ActuatorError(f"command template {list(template)!r}: no value for "
                                    f"{{{name}}} (the alert has no label {name!r})")
            value = str(values[name])
            if value.startswith("-") or any(c in value for c in "\0\n\r"):
                raise ActuatorError(f"command template: label {name}={value[:40]!r} refused "
                                    "(a leading '-' or a control character could change the "
                                    "command's meaning)")
            return value
        argv.append(_PLACEHOLDER.sub(sub, arg))
    return argv


def run(argv: Sequence[str], timeout: float = 30.0) -> str:
    """Runs argv (no shell), returns stdout; a failure becomes an ``ActuatorError`` with stderr."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ActuatorError(f"command {argv[0]!r} not found (check the command template)") from None
    except subprocess.TimeoutExpired:
        raise ActuatorError(f"command {list(argv)!r} did not finish within {timeout:g}s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-400:]
        raise ActuatorError(f"command {list(argv)!r} exited {proc.returncode}: {err}")
    return proc.stdout.decode(errors="replace")
