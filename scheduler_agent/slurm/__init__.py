"""Slurm as the cluster engine behind the agent's actions (``slurm:`` in the agent's config).

When the section is present the agent's scheduler port is ``SlurmPort``: the remediation worker
and the predictor's migrations act through it instead of the embedded scheduler. Preempt =
``scontrol requeue`` of the Slurm jobs holding that GPU (then ``StartTime=now`` 2 s later so they
may start again then rather than ~120 s later), quarantine = drain of the GPU's node with a
reason naming the rule, GPU index and UUID (Slurm 22.05 cannot drain a single GPU), release =
``State=RESUME`` only while the drain reason is ours. Throttling stays with the power-limit
actuator. Modules:

- ``errors``: ``SlurmError`` and ``UnknownNode``.
- ``config``: the ``slurm:`` section, validated by ``config.schema.json``.
- ``parse``: ``scontrol show node -d`` / ``show job -d`` output, hostlists, GRES indices.
- ``runner``: scontrol as argument lists with a timeout, retries with back-off, journaled.
- ``journal``: the ``slurm_commands`` table: every command, its attempts and outcome.
- ``nodemap``: Prometheus ``instance`` (or a ``node`` label) to the Slurm node name.
- ``backend``: ``SlurmPort``, the agent's ``SchedulerPort`` backed by Slurm.
- ``plugin``: builds the port for the agent (``install(agent)``).
"""
