"""The simulated GPU fleet: a fake libnvidia-ml at pynvml's ctypes boundary (``library`` wraps the entry points in ``nvml_api``), the
GPUs' physics (``physics``, ``models``), faults and scenarios, and the control endpoint.
Used only when asked for (``--simulate``/``--scenario``); docs/SIMULATION.md describes it."""
