"""The simulated GPU fleet: a fake libnvidia-ml at pynvml's ctypes boundary (``library``), the
GPUs' physics (``physics``, ``models``), faults and scenarios, and the control endpoint.
Used only when asked for (``--simulate``/``--scenario``); docs/SIMULATION.md describes it."""
