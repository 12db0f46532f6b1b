"""The field-values slots are read back with one unpack each: every nvmlValueType_t decodes to
the number its union member holds."""

from __future__ import annotations

import pynvml
import pytest

from gpuwarden.exporter.nvml import FieldBatch, field_number

CASES = [  # (valueType, union member, value written through ctypes)
    (pynvml.NVML_VALUE_TYPE_DOUBLE, "dVal", -1.5),
    (pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, "uiVal", 2**32 - 1),
    (pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG, "ulVal", 2**40 + 3),
    (pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, "ullVal", 2**64 - 1),
    (pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG, "sllVal", -(2**40)),
    (pynvml.NVML_VALUE_TYPE_SIGNED_INT, "siVal", -7),
    (pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT, "usVal", 65535),
]


def test_every_value_type_decodes_to_its_member():
    batch = FieldBatch([pynvml.NVML_FI_DEV_POWER_INSTANT] * len(CASES))
    for slot, (vtype, member, value) in zip(batch.buf, CASES, strict=True):
        slot.value.ullVal = 0x5A5A_5A5A_5A5A_5A5A  # stale bytes the narrower members must ignore
        slot.valueType = vtype
        slot.nvmlReturn = pynvml.NVML_SUCCESS
        setattr(slot.value, member, value)
    got = [(vtype, rc, field_number(vtype, raw)) for vtype, rc, raw in batch.results()]
    assert got == [(vtype, pynvml.NVML_SUCCESS, value) for vtype, _, value in CASES]


def test_slots_start_unknown_so_a_skipped_slot_is_not_success():
    batch = FieldBatch([pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_FI_DEV_MEMORY_TEMP])
    assert [rc for _, rc, _ in batch.results()] == [pynvml.NVML_ERROR_UNKNOWN] * 2
    assert [slot.fieldId for slot in batch.buf] == [pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_FI_DEV_MEMORY_TEMP]


@pytest.mark.parametrize("vtype", [pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, pynvml.NVML_VALUE_TYPE_SIGNED_INT])
def test_32_bit_members_ignore_the_upper_bytes(vtype):
    assert field_number(vtype, (0xFFFF_FFFF << 32) | 5) == 5
