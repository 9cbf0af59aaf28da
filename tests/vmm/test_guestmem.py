"""Guest memory reads: bounds from the memory map, then pread at the guest-physical address."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import InvalidStateError, OutOfRangeError
from supervisor.vmm import bhyvectl, guestmem
from supervisor.vmm.guestmem import MAX_PEEK, check_range, ram_end, read_memory

GiB = 1 << 30
MiB = 1 << 20

# `bhyvectl --get-memmap` of a 2 GiB UEFI guest (RAM below the 3 GiB lowmem limit).
SMALL = bhyvectl.parse_memmap(
    "Address     Length      Segment     Offset      Prot  Flags\n"
    "0           2048MB      sysmem      0           RWX   \n"
    "FFE00000    2048kB      bootrom     E00000      R-X   \n"
)
# An 8 GiB guest: 3 GiB low, the 3-4 GiB PCI hole, 5 GiB from 4 GiB up, wired.
LARGE = bhyvectl.parse_memmap(
    "Address     Length      Segment     Offset      Prot  Flags\n"
    "0           3072MB      sysmem      0           RWX   \0wired\n"
    "FFE00000    2048kB      bootrom     E00000      R-X   \n"
    "100000000   5120MB      sysmem      100000000   RWX   \0wired\n"
)


def test_ram_end() -> None:
    assert ram_end(SMALL) == 2 * GiB
    assert ram_end(LARGE) == 9 * GiB
    assert ram_end([]) == 0


@pytest.mark.parametrize(
    ("memmap", "start", "size"),
    [
        (SMALL, 0, MAX_PEEK),
        (SMALL, 2 * GiB - 16, 16),  # the last bytes of RAM
        (SMALL, 4 * GiB - 2 * MiB, MAX_PEEK),  # the ROM
        (SMALL, 4 * GiB - 16, 16),  # the ROM's last bytes
        (LARGE, 3 * GiB - 8, 16),  # RAM into the hole: zeros, no fault
        (LARGE, 3 * GiB + 5, 100),  # inside the hole
        (LARGE, 4 * GiB - 8, 16),  # ROM into high RAM
        (LARGE, 9 * GiB - 1, 1),
        (SMALL, 123, 0),  # nothing at all
    ],
)
def test_readable_ranges(memmap: list[bhyvectl.MemMapEntry], start: int, size: int) -> None:
    check_range(memmap, start, size)


@pytest.mark.parametrize(
    ("memmap", "start", "size", "field"),
    [
        (SMALL, 2 * GiB, 1, "start"),  # right after RAM: EFAULT (no hole below 3 GiB RAM)
        (SMALL, 3 * GiB, 16, "start"),
        (SMALL, 2 * GiB - 8, 16, "size"),  # runs off the end of RAM
        (SMALL, 4 * GiB - 8, 16, "size"),  # runs off the end of the ROM
        (SMALL, 4 * GiB, 1, "start"),
        (LARGE, 9 * GiB, 1, "start"),
        (LARGE, 9 * GiB - 8, 9, "size"),
        (SMALL, -1, 1, "start"),
        (SMALL, 0, -1, "size"),
        (SMALL, 0, MAX_PEEK + 1, "size"),  # more than 1 MiB per call
        ([], 0, 1, "start"),  # a VM without memory yet
    ],
)
def test_out_of_range_names_the_field(
    memmap: list[bhyvectl.MemMapEntry], start: int, size: int, field: str
) -> None:
    with pytest.raises(OutOfRangeError) as e:
        check_range(memmap, start, size)
    assert e.value.field == field


def test_read_memory_preads_at_the_guest_address(tmp_path: Path) -> None:
    dev = tmp_path / "vmm-web1"
    with open(dev, "wb") as f:
        f.truncate(4 * MiB)
        f.seek(0x1000)
        f.write(b"BHYVESIM:web1:1")
        f.seek(2 * MiB - 3)
        f.write(b"abcdef")
    assert read_memory(str(dev), 0x1000, 15) == b"BHYVESIM:web1:1"
    assert read_memory(str(dev), 0x0FF8, 8) == bytes(8)
    assert read_memory(str(dev), 2 * MiB - 3, 6) == b"abcdef"
    assert len(read_memory(str(dev), 0, MAX_PEEK)) == MAX_PEEK
    assert read_memory(str(dev), 10, 0) == b""


def test_read_memory_of_a_vm_that_is_gone(tmp_path: Path) -> None:
    with pytest.raises(InvalidStateError) as e:
        read_memory(str(tmp_path / "missing"), 0, 16)
    assert e.value.field == "name"


def test_read_memory_never_returns_a_short_read(tmp_path: Path) -> None:
    dev = tmp_path / "vmm-short"
    dev.write_bytes(b"x" * 100)
    with pytest.raises(guestmem.HostToolError, match="short read"):
        read_memory(str(dev), 90, 20)
    assert os.path.getsize(dev) == 100


_maps = st.lists(
    st.tuples(
        st.integers(0, 200),
        st.integers(1, 60),
        st.sampled_from(["sysmem", "bootrom", "framebuffer"]),
    ),
    max_size=5,
)


@given(_maps, st.integers(0, 300), st.integers(0, 80))
def test_check_range_agrees_with_the_kernel_byte_by_byte(
    spans: list[tuple[int, int, str]], start: int, size: int
) -> None:
    """vmmdev_rw(): a byte reads if a mapping holds it or it lies below the end of RAM."""
    memmap = [bhyvectl.MemMapEntry(g, n, seg, 0, "RWX") for g, n, seg in spans]
    limit = ram_end(memmap)
    readable = all(
        a < limit or any(m.gpa <= a < m.end for m in memmap) for a in range(start, start + size)
    )
    if readable:
        check_range(memmap, start, size)
    else:
        with pytest.raises(OutOfRangeError):
            check_range(memmap, start, size)


def test_sysmem_spans_are_the_ram_mappings_kept_apart() -> None:
    assert guestmem.sysmem_spans(SMALL) == ((0, 2 * GiB),)
    # The ROM is device memory (mmap refuses it) and the hole is no mapping at all.
    assert guestmem.sysmem_spans(LARGE) == ((0, 3 * GiB), (4 * GiB, 9 * GiB))
    # Two segments that touch stay two: one mapping may not cross from one to the other.
    touching = [
        bhyvectl.MemMapEntry(gpa=GiB, length=GiB, segment="sysmem", offset=0, prot="RWX"),
        bhyvectl.MemMapEntry(gpa=0, length=GiB, segment="sysmem", offset=0, prot="RWX"),
    ]
    assert guestmem.sysmem_spans(touching) == ((0, GiB), (GiB, 2 * GiB))
    assert guestmem.sysmem_spans([]) == ()
