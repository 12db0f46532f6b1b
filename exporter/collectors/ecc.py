"""Volatile ECC error counts, and how the memory repaired itself: retired pages (older boards)
or remapped rows (A100 and later, with a pending flag and the remapper's failure flag),
whichever the GPU has."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pynvml
from prometheus_client.core import Metric
from prometheus_client.samples import Sample as PromSample

from ..nvml import Reader
from .base import GPU_LABELS, Collector, FieldRead, GpuMetric, GpuView, new_family

CORRECTABLE = GpuMetric(
    "gpu_ecc_errors_correctable_total",
    "Correctable (single-bit) ECC errors since the driver loaded (volatile count).",
    "ecc_correctable",
    counter=True,
)
UNCORRECTABLE = GpuMetric(
    "gpu_ecc_errors_uncorrectable_total",
    "Uncorrectable (double-bit) ECC errors since the driver loaded (volatile count).",
    "ecc_uncorrectable",
    counter=True,
)
RETIRED_NAME, RETIRED_HELP = "gpu_retired_pages", "Device memory pages retired, by cause."
REMAPPED_NAME, REMAPPED_HELP = "gpu_remapped_rows", "Device memory rows remapped, by cause."
REMAP_PENDING = GpuMetric(
    "gpu_remapped_rows_pending",
    "1 when a row remapping waits for the GPU to be reset, else 0 (remapping boards).",
    "remap_pending",
)
REMAP_FAILURE = GpuMetric(
    "gpu_remapped_rows_failure",
    "1 when a row could not be remapped (no spare rows left: the GPU needs service), else 0 (remapping boards).",
    "remap_failure",
)


def _ecc(error_type: int) -> Callable[[Reader], float | None]:
    def read(r: Reader) -> float | None:
        n = r.call(
            "nvmlDeviceGetTotalEccErrors",
            pynvml.nvmlDeviceGetTotalEccErrors,
            r.device.handle,
            error_type,
            pynvml.NVML_VOLATILE_ECC,
            key=f"nvmlDeviceGetTotalEccErrors:{error_type}",
        )
        return None if n is None else float(n)

    return read


def _retired(cause: int) -> Callable[[Reader], float | None]:
    def read(r: Reader) -> float | None:
        pages = r.call(
            "nvmlDeviceGetRetiredPages",
            pynvml.nvmlDeviceGetRetiredPages,
            r.device.handle,
            cause,
            key=f"nvmlDeviceGetRetiredPages:{cause}",
        )
        return None if pages is None else float(len(pages))

    return read


def _remapped(position: int) -> Callable[[Reader], float | None]:
    def read(r: Reader) -> float | None:
        rows = r.call("nvmlDeviceGetRemappedRows", pynvml.nvmlDeviceGetRemappedRows, r.device.handle)
        return None if rows is None else float(rows[position])  # (correctable, uncorrectable, ...)

    return read


def _repairs(gpus: Sequence[GpuView]) -> Iterator[Metric]:
    for name, help_, keys in (
        (RETIRED_NAME, RETIRED_HELP, (("single_bit", "retired_sbe"), ("double_bit", "retired_dbe"))),
        (REMAPPED_NAME, REMAPPED_HELP, (("correctable", "remapped_cor"), ("uncorrectable", "remapped_unc"))),
    ):
        fam, sample_name = new_family(name, help_, False, GPU_LABELS + ("cause",))
        for g in gpus:
            for cause, key in keys:
                v = g.sample.get(key)
                if v is not None:
                    fam.samples.append(PromSample(sample_name, g.device.labels_with("cause", cause), v))
        yield fam


COLLECTOR = Collector(
    name="ecc",
    help="ECC errors, retired pages, remapped rows",
    metrics=(CORRECTABLE, UNCORRECTABLE, REMAP_PENDING, REMAP_FAILURE),
    fields=(
        FieldRead(
            "ecc_correctable", pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL, 1.0, _ecc(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED)
        ),
        FieldRead(
            "ecc_uncorrectable",
            pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL,
            1.0,
            _ecc(pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ),
        FieldRead(
            "retired_sbe",
            pynvml.NVML_FI_DEV_RETIRED_SBE,
            1.0,
            _retired(pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS),
        ),
        FieldRead(
            "retired_dbe",
            pynvml.NVML_FI_DEV_RETIRED_DBE,
            1.0,
            _retired(pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
        ),
        FieldRead("remapped_cor", pynvml.NVML_FI_DEV_REMAPPED_COR, 1.0, _remapped(0)),
        FieldRead("remapped_unc", pynvml.NVML_FI_DEV_REMAPPED_UNC, 1.0, _remapped(1)),
        FieldRead("remap_pending", pynvml.NVML_FI_DEV_REMAPPED_PENDING, 1.0, _remapped(2)),
        FieldRead("remap_failure", pynvml.NVML_FI_DEV_REMAPPED_FAILURE, 1.0, _remapped(3)),
    ),
    extra_families=_repairs,
)
