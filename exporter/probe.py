"""Is there a GPU here? For launchers (``gpuwarden up``) deciding between NVML and --simulate."""

from __future__ import annotations

import threading

import pynvml


def nvml_gpu_count(timeout: float = 5.0) -> int | None:
    """GPUs NVML sees, or None when NVML is missing, fails, or does not answer within ``timeout``.

    Runs in a daemon thread so a wedged driver cannot hang the caller.
    """
    result: list[int | None] = [None]

    def probe() -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return
        try:
            result[0] = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError:
            pass
        finally:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass

    t = threading.Thread(target=probe, name="nvml-probe", daemon=True)
    t.start()
    t.join(timeout)
    return result[0]


def main() -> int:
    """``python -m gpuwarden.exporter.probe``: prints the GPU count (0 without NVML); exit 1 without NVML."""
    n = nvml_gpu_count()
    print(n or 0)
    return 0 if n else 1


if __name__ == "__main__":
    raise SystemExit(main())
