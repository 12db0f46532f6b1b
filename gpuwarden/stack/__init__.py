"""The launcher: the whole loop on one host (``gpuwarden up``), outside every component.

It uses the exporter, the rules, Alertmanager's shipped routing and the agent, and belongs to
none of them. Modules: ``launcher`` (``Stack``: the processes, started in order, waited for,
stopped by pid), ``configs`` (the files written under the working directory), ``view`` (the live
view and the notification sink), ``demo`` (the default fault scenario), ``harness`` (faults
played on a running stack and where the shipped routing delivers them: the end-to-end tests and
``bench.latency``), ``cli`` (the ``gpuwarden`` command). Processes and ports go through
``gpuwarden.procs``.
"""

from __future__ import annotations

from .cli import main
from .launcher import Stack, StackError

__all__ = ["Stack", "StackError", "main"]
