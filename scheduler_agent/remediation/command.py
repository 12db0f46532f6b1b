"""Command templates: an argument list with ``{name}`` placeholders, run without a local shell.

``["ssh", "{instance}", "nvidia-smi", "-i", "{gpu}", "-pl", "{watts}"]`` becomes one argv with
the alert's label values put in place, and the agent runs it with ``subprocess`` (no shell on
the agent's host). That alone does not keep label values harmless: label values come from
whoever can post an alert to Alertmanager, and the program run may hand its arguments to a
shell again. ssh does: it joins every argument after the host with spaces and gives the string
to the remote user's shell, so ``gpu="2; id > /tmp/PWNED; echo"`` would run ``id`` on the node.
sudo, ``kubectl exec ... sh -c`` and config-management tools can do the same.

What protects the command is therefore a check of every value a template uses, made in
``render`` before anything runs, against what that placeholder must be:

==============  ==========================================================================
``gpu``         a GPU index: ASCII digits only, at most 6
``uuid``        an NVML UUID: ``GPU-`` or ``MIG-`` and hex digits and dashes
                (``GPU-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901``, ``MIG-<uuid>`` as R470+ drivers
                print it), or the older ``MIG-GPU-<uuid>/<gi>/<ci>`` form
``instance``    a host name, IPv4 or IPv6 address, with an optional port: ``gpu-node-1:9786``,
                ``10.0.0.5:9786``, ``[fe80::1]:9786``, ``fe80::1``
``watts``       a number (digits with an optional fraction; no sign, no exponent)
``action_id``   the action's id (digits), given to hooks so a receiver can deduplicate
any other      1-128 characters of ``A-Za-z0-9`` and ``._:/@+-``, not starting with ``-``
==============  ==========================================================================

Every character these allow is inert in a POSIX shell (no spaces, quotes, ``$``, backticks,
``;|&<>()``, globs other than an IPv6 address's brackets, newlines or NULs), and none may start
with ``-``, so a value stays one literal word however often it is re-parsed and is never read as
an option. A value that fails is refused with ``UnsafeValue`` (an ``ActuatorError``) naming the
label and the reason, and nothing is run. Templates themselves come from the agent's config and
are trusted.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence

from .errors import ActuatorError

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

MAX_VALUE_CHARS = 128
_HEX_UUID = r"[0-9A-Fa-f][0-9A-Fa-f-]{0,63}"
_UUID = re.compile(rf"(?:GPU-{_HEX_UUID}|MIG-{_HEX_UUID}|MIG-GPU-{_HEX_UUID}/[0-9]{{1,4}}/[0-9]{{1,4}})", re.ASCII)
_DIGITS6 = re.compile(r"[0-9]{1,6}", re.ASCII)
_DIGITS19 = re.compile(r"[0-9]{1,19}", re.ASCII)
_NUMBER = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?", re.ASCII)
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", re.ASCII)
_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,32}", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_OTHER = re.compile(rf"[A-Za-z0-9._:/@+_-]{{1,{MAX_VALUE_CHARS}}}", re.ASCII)


class UnsafeValue(ActuatorError):
    """A label value a command template would use, refused before anything ran."""

    def __init__(self, label: str, value: str, reason: str) -> None:
        self.label = label
        self.value = value
        self.reason = reason
        shown = value if len(value) <= 60 else value[:57] + "..."
        super().__init__(f"label {label}={shown!r} refused: {reason}; nothing was run")


def _port_ok(port: str) -> bool:
    return bool(_PORT.fullmatch(port)) and 0 < int(port) <= 65535


def _ipv6_ok(addr: str) -> bool:
    base, pct, zone = addr.partition("%")
    if pct and not _ZONE.fullmatch(zone):
        return False
    try:
        ipaddress.IPv6Address(base)
    except ValueError:
        return False
    return True


def _host_ok(host: str) -> bool:
    """A DNS name (labels of letters, digits, ``-``, ``_``; no leading or trailing ``-``) or an
    IPv4 address, at most 253 characters."""
    if not host or len(host) > 253:
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):  # looks numeric: must be a real IPv4 address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


def _check_instance(value: str) -> str | None:
    if value.startswith("["):  # [IPv6] or [IPv6]:port
        addr, sep, rest = value[1:].partition("]")
        if not sep or not _ipv6_ok(addr):
            return "a bracketed address must be an IPv6 address: [fe80::1]:9786"
        if rest and not (rest.startswith(":") and _port_ok(rest[1:])):
            return "the port after [address] must be :1-65535"
        return None
    if value.count(":") > 1:  # a bare IPv6 address (no port possible without brackets)
        return None if _ipv6_ok(value) else "not a host name, IPv4 or IPv6 address"
    host, sep, port = value.partition(":")
    if sep and not _port_ok(port):
        return "the port must be 1-65535"
    if not _host_ok(host):
        return "must be a host name or address with an optional port (gpu-node-1:9786, 10.0.0.5:9786, [fe80::1]:9786)"
    return None


def _fullmatch(pattern: re.Pattern[str], why: str) -> Callable[[str], str | None]:
    return lambda value: None if pattern.fullmatch(value) else why


CHECKS: dict[str, Callable[[str], str | None]] = {
    "gpu": _fullmatch(_DIGITS6, "a GPU index must be ASCII digits only (at most 6)"),
    "uuid": _fullmatch(
        _UUID, "must be an NVML UUID: GPU-<hex and dashes>, MIG-<hex and dashes> or MIG-GPU-<hex and dashes>/<n>/<n>"
    ),
    "instance": _check_instance,
    "watts": _fullmatch(_NUMBER, "must be a number of watts (digits, optional fraction)"),
    "action_id": _fullmatch(_DIGITS19, "must be an integer"),
}
"""Placeholders with a specific form; every other label gets ``check_other``."""


def check_other(value: str) -> str | None:
    if value.startswith("-"):
        return "a leading '-' could be read as an option"
    if not _OTHER.fullmatch(value):
        return (
            f"must be 1-{MAX_VALUE_CHARS} characters of A-Za-z0-9 . _ : / @ + - "
            "(anything else could mean something to a shell the command reaches)"
        )
    return None


def check(name: str, value: str) -> str:
    """Returns ``value`` if it is safe for placeholder ``name``; raises ``UnsafeValue``."""
    if not isinstance(value, str):
        value = str(value)
    if not value:
        raise UnsafeValue(name, value, "the value is empty")
    if len(value) > 253 + 6:  # no valid form is longer; keep the checks cheap
        raise UnsafeValue(name, value, f"{len(value)} characters is too long")
    why = CHECKS.get(name, check_other)(value)
    if why is not None:
        raise UnsafeValue(name, value, why)
    return value


def placeholders(template: Sequence[str]) -> list[str]:
    """The placeholder names a template uses, in order (with repeats)."""
    return [m.group(1) for arg in template for m in _PLACEHOLDER.finditer(arg)]


def render(template: Sequence[str], values: Mapping[str, object]) -> list[str]:
    """The argv with placeholders replaced. Every value used is checked first (``check``), so
    nothing is rendered from a refused value; raises ``ActuatorError`` for a missing value and
    ``UnsafeValue`` naming the label for an unsafe one. ``{{`` and ``}}`` are not special:
    templates hold no braces other than placeholders."""
    checked: dict[str, str] = {}
    for name in placeholders(template):
        if name in checked:
            continue
        if name not in values:
            raise ActuatorError(
                f"command template {list(template)!r}: no value for {{{name}}} (the alert has no label {name!r})"
            )
        checked[name] = check(name, str(values[name]))
    return [_PLACEHOLDER.sub(lambda m: checked[m.group(1)], arg) for arg in template]


def run(argv: Sequence[str], timeout: float = 30.0) -> str:
    """Runs argv (no shell), returns stdout; a failure becomes an ``ActuatorError`` with stderr.

    Give it only argv from ``render``: the values in it were checked there."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ActuatorError(f"command {argv[0]!r} not found (check the command template)") from None
    except subprocess.TimeoutExpired:
        raise ActuatorError(f"command {list(argv)!r} did not finish within {timeout:g}s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-400:]
        raise ActuatorError(f"command {list(argv)!r} exited {proc.returncode}: {err}")
    return proc.stdout.decode(errors="replace")
