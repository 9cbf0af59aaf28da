"""Reading guest-physical memory: ``pread`` on ``/dev/vmm/NAME`` at offset = address.

FreeBSD's vmm device implements read(2) page by page (``vmmdev_rw()``): a page inside
any guest mapping (RAM, the boot ROM, a framebuffer) reads its bytes; an unmapped page
below the end of the highest RAM mapping reads as zeros (the 3-4 GiB PCI hole of a
guest with more than 3 GiB); anything at or after that end fails the *whole* read with
EFAULT. So the supervisor checks a request against the guest's memory map
(``bhyvectl --get-memmap``) first and names the offending field, instead of letting
the kernel answer EFAULT; :func:`check_range` is that check, without I/O.

A streamed read maps guest RAM instead where it can: the device's ``mmap`` maps a
system-memory segment at offset = guest-physical address when the mapping lies inside
one ``sysmem`` range of the memory map (libvmmapi's ``vm_map_gpa()``);
:func:`sysmem_spans` names those ranges. Holes and device memory are still read.

The simulated host lays ``/dev/vmm/NAME`` out as a sparse file at guest-physical
offsets, so the same ``pread`` and ``mmap`` read it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Final

from supervisor.errors import HostToolError, InvalidStateError, OutOfRangeError, SupervisorError
from supervisor.vmm.bhyvectl import MemMapEntry

__all__ = [
    "MAX_PEEK",
    "check_range",
    "open_device",
    "pread_memory",
    "preadinto_memory",
    "ram_end",
    "read_memory",
    "sysmem_spans",
]

#: The most bytes one ``domain.memory_peek`` call returns (the CLI reads in chunks).
MAX_PEEK: Final = 1 << 20


def ram_end(memmap: Sequence[MemMapEntry]) -> int:
    """The end of the highest guest RAM (``sysmem``) mapping: ``vmm_sysmem_maxaddr()``."""
    ends = [m.end for m in memmap if m.segment == "sysmem"]
    return max(ends, default=0)


def sysmem_spans(memmap: Sequence[MemMapEntry]) -> tuple[tuple[int, int], ...]:
    """``[gpa, end)`` of each guest RAM mapping, in address order: the ranges that
    ``mmap(2)`` of the vmm device maps, one mapping inside one range.

    Adjacent ranges are kept apart: the kernel looks up one memory segment per mapping.
    """
    return tuple(sorted((m.gpa, m.end) for m in memmap if m.segment == "sysmem"))


def _covered(memmap: Sequence[MemMapEntry], limit: int, addr: int) -> int | None:
    """The end of the readable stretch that holds *addr*, or None if *addr* faults."""
    if addr < limit:
        # Below the end of RAM every page reads (its bytes or zeros): the stretch runs
        # to *limit*, and on through any mapping that continues it.
        end = limit
    else:
        spans = [m for m in memmap if m.gpa <= addr < m.end]
        if not spans:
            return None
        end = max(m.end for m in spans)
    # Follow mappings that start inside the stretch and reach past it.
    grown = True
    while grown:
        grown = False
        for m in memmap:
            if m.gpa <= end < m.end:
                end, grown = m.end, True
    return end


def check_range(
    memmap: Sequence[MemMapEntry], start: int, size: int, limit: int | None = MAX_PEEK
) -> None:
    """Check that ``[start, start + size)`` reads without EFAULT.

    Raises:
        OutOfRangeError: ``start`` lies where nothing is mapped at or after the end of
            guest RAM (field ``start``), or the range runs into such a place (field
            ``size``), or either is negative / *size* exceeds *limit* (None: no limit,
            for a streamed read).
    """
    if start < 0:
        raise OutOfRangeError(f"start: must be >= 0, got {start}", field="start")
    if size < 0:
        raise OutOfRangeError(f"size: must be >= 0, got {size}", field="size")
    if limit is not None and size > limit:
        raise OutOfRangeError(
            f"size: at most {MAX_PEEK} bytes (1 MiB) per call, got {size}", field="size"
        )
    if size == 0:
        return  # read(2) of nothing succeeds wherever the offset is
    limit = ram_end(memmap)
    end = _covered(memmap, limit, start)
    if end is None:
        raise OutOfRangeError(
            f"start: {start:#x} is outside guest memory (RAM ends at {limit:#x})", field="start"
        )
    addr = start
    while addr + size > end:
        addr = end
        nxt = _covered(memmap, limit, addr)
        if nxt is None:
            raise OutOfRangeError(
                f"size: {start:#x} + {size:#x} runs past guest memory at {addr:#x}", field="size"
            )
        end = nxt


def open_device(device: str) -> int:
    """Open the guest memory *device* for reading; the caller closes the fd.

    Raises:
        InvalidStateError: the VM is gone.
        HostToolError: any other failure to open.
    """
    try:
        return os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidStateError("the VM no longer exists in the kernel", field="name") from None
    except OSError as e:
        raise HostToolError(f"cannot open {device}: {e.strerror}") from None


def pread_memory(fd: int, size: int, start: int) -> bytes:
    """One ``pread`` of guest memory (possibly short), with the kernel's errors named.

    Raises:
        OutOfRangeError: EFAULT (the memory map changed since the check).
        InvalidStateError: ENXIO (the VM was destroyed).
        HostToolError: any other read failure.
    """
    try:
        return os.pread(fd, size, start)
    except OSError as e:
        raise _read_error(e, start) from None


def preadinto_memory(fd: int, buf: memoryview, start: int) -> int:
    """:func:`pread_memory` into *buf*: the bytes read (possibly short)."""
    try:
        return os.preadv(fd, [buf], start)
    except OSError as e:
        raise _read_error(e, start) from None


def _read_error(e: OSError, start: int) -> SupervisorError:
    # What a failed read of /dev/vmm/NAME means, by the kernel's errno.
    if e.errno == errno.EFAULT:
        return OutOfRangeError(f"size: guest memory at {start:#x} is not mapped", field="size")
    if e.errno == errno.ENXIO:
        return InvalidStateError("the VM was destroyed during the read", field="name")
    return HostToolError(f"reading guest memory: {e.strerror}")


def read_memory(device: str, start: int, size: int) -> bytes:
    """Read *size* bytes of guest memory at guest-physical *start* from *device*.

    Blocking: call it in a worker thread. The range should have passed
    :func:`check_range`.

    Raises:
        InvalidStateError: the VM is gone (no device, or ENXIO after a destroy).
        OutOfRangeError: the kernel answered EFAULT (the map changed since the check).
        HostToolError: any other read failure, or a short read.
    """
    fd = open_device(device)
    try:
        parts: list[bytes] = []
        done = 0
        while done < size:
            chunk = pread_memory(fd, size - done, start + done)
            if not chunk:
                raise HostToolError(
                    f"reading {device}: short read at {start + done:#x} ({done} of {size} bytes)"
                )
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)
