"""gpuwarden: GPU health monitoring and automatic remediation for the Prometheus ecosystem.

One installable package. Its components keep the repository's top-level folders and are
mapped under this name by ``pyproject.toml`` (``package-dir``)::

    gpuwarden.exporter         exporter/          the NVML exporter and the simulated fleet
    gpuwarden.rules            rules/             thresholds.yaml -> Prometheus rules and tests
    gpuwarden.scheduler_agent  scheduler_agent/   the remediation agent and its scheduler
    gpuwarden.dashboards       dashboards/        the Grafana dashboard and its generator
    gpuwarden.alertmanager     alertmanager/      the shipped routing (package data only)

Code shared by every component (the hardened HTTP listener) lives beside this file, and so does
what belongs to none of them: ``gpuwarden.stack``, the launcher (``gpuwarden up``: one ``Stack``
over the exporter, the agent, Alertmanager and Prometheus), and ``gpuwarden.procs``, the one
helper for child processes and free ports.
"""
