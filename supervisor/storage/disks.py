"""Disk backends behind one interface: image files, files in a ZFS dataset, zvols.

A guest disk's ``source`` names its backend:

* ``/dev/zvol/POOL/NAME`` — a ZFS volume (:class:`ZvolDisk`): sizes from ``zfs get``,
  snapshots of the volume itself.
* any other path — an image file (:class:`FileDisk`), sparse where the filesystem can;
  when the file lives in a ZFS dataset (vm-bhyve's layout, a dataset per guest), the
  dataset is found by mount point and snapshots are of that dataset.

Each backend answers :meth:`info` (capacity, allocation, physical, as libvirt's
``virDomainBlockInfo``) and gives the local path that ``pread`` reads.
"""

from __future__ import annotations

import os
from typing import Protocol

import attrs
import trio

from supervisor._record import Record
from supervisor.domain.model import Disk, Domain
from supervisor.errors import InvalidValueError, OutOfRangeError, UnsupportedError
from supervisor.host import Host
from supervisor.storage import zfsparse
from supervisor.storage.zfs import ZfsCli

#: The most ``block_peek`` returns in one call.
PEEK_MAX = 1 << 20


@attrs.frozen(repr=False)
class BlockInfo(Record):
    """Sizes in bytes: what the guest sees, what the host allocated, what it occupies."""

    capacity: int
    allocation: int
    physical: int


class DiskBackend(Protocol):
    kind: str
    source: str
    local_path: str

    async def info(self) -> BlockInfo: ...

    async def dataset(self) -> str | None:
        """The ZFS dataset or volume snapshots are taken of, or ``None``."""
        ...


@attrs.define(repr=False)
class FileDisk(Record):
    """An image file; *local_path* is where it is on this machine."""

    source: str
    local_path: str
    zfs: ZfsCli
    kind: str = "file"
    _dataset: str | None = None
    _looked: bool = False

    async def info(self) -> BlockInfo:
        st = await trio.to_thread.run_sync(os.stat, self.local_path)
        # st_blocks counts 512-byte units whatever the filesystem's block size.
        return BlockInfo(capacity=st.st_size, allocation=st.st_blocks * 512, physical=st.st_size)

    async def dataset(self) -> str | None:
        """The ZFS dataset whose mount point holds the file (longest match), if any."""
        if not self._looked:
            self._looked = True
            try:
                text = await self.zfs.run("get", "-H", "-o", "name,property,value", "mountpoint")
            except Exception:
                return None  # no ZFS on this host: a plain file
            best = ""
            for name, props in zfsparse.parse_get(text).items():
                mnt = props.get("mountpoint", "")
                if mnt.startswith("/") and (
                    self.local_path.startswith(mnt.rstrip("/") + "/") and len(mnt) > len(best)
                ):
                    best, self._dataset = mnt, name
        return self._dataset

    async def mountpoint(self) -> str | None:
        ds = await self.dataset()
        if ds is None:
            return None
        props = await self.zfs.get([ds], ["mountpoint"])
        return props[ds]["mountpoint"]


@attrs.define(repr=False)
class ZvolDisk(Record):
    """A ZFS volume."""

    source: str
    local_path: str
    volume: str
    zfs: ZfsCli
    kind: str = "zvol"

    async def info(self) -> BlockInfo:
        props = (await self.zfs.get([self.volume], ["volsize", "used", "referenced"]))[self.volume]
        volsize = zfsparse.size(props.get("volsize"))
        if volsize is None:
            raise InvalidValueError(f"{self.volume} is not a ZFS volume (no volsize)", field="disk")
        return BlockInfo(
            capacity=volsize,
            allocation=zfsparse.size(props.get("referenced")) or 0,
            physical=zfsparse.size(props.get("used")) or 0,
        )

    async def dataset(self) -> str | None:
        return self.volume


def find_disk(domain: Domain, disk: str) -> tuple[int, Disk]:
    """The disk of *domain* named by target (``vda``) or source path, and its index.

    Raises:
        InvalidValueError: no such disk, or it has no source (an empty cdrom).
    """
    for i, d in enumerate(domain.disks):
        if disk in (d.target, d.source):
            if d.source is None:
                raise InvalidValueError(f"disk: {disk} has no source", field="disk")
            return i, d
    targets = ", ".join(d.target for d in domain.disks) or "none"
    raise InvalidValueError(
        f"disk: guest {domain.name} has no disk {disk!r} (its disks: {targets})", field="disk"
    )


def backend_for(host: Host, zfs: ZfsCli, source: str) -> FileDisk | ZvolDisk:
    """The backend of a disk whose source is the FreeBSD path *source*."""
    volume = zfsparse.dataset_of_device(source)
    if volume is not None:
        zfsparse.check_dataset(volume, "disk")
        return ZvolDisk(source=source, local_path=host.path(source), volume=volume, zfs=zfs)
    return FileDisk(source=source, local_path=host.path(source), zfs=zfs)


def check_peek(offset: int, size: int, capacity: int, limit: int | None = PEEK_MAX) -> None:
    """Refuse a peek outside the disk or larger than *limit* (None: no limit, a stream)."""
    if offset < 0:
        raise OutOfRangeError(f"offset: must not be negative, got {offset}", field="offset")
    if size <= 0:
        raise OutOfRangeError(f"size: must be at least 1 byte, got {size}", field="size")
    if limit is not None and size > limit:
        raise OutOfRangeError(
            f"size: must be between 1 and {limit} bytes, got {size}", field="size"
        )
    if offset + size > capacity:
        raise OutOfRangeError(
            f"offset: {offset} + size {size} is past the end of the disk ({capacity} bytes)",
            field="offset",
        )


async def peek(backend: FileDisk | ZvolDisk, offset: int, size: int) -> bytes:
    """*size* bytes at *offset* of the disk, read with ``pread``."""
    capacity = (await backend.info()).capacity
    check_peek(offset, size, capacity)

    def read() -> bytes:
        fd = os.open(backend.local_path, os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    try:
        return await trio.to_thread.run_sync(read)
    except FileNotFoundError:
        raise UnsupportedError(
            f"disk: {backend.source} has no device node on this host", field="disk"
        ) from None


async def open_for_stream(backend: FileDisk | ZvolDisk, offset: int, size: int) -> int:
    """Check a streamed peek of any length and open the disk; the caller owns the fd."""
    capacity = (await backend.info()).capacity
    check_peek(offset, size, capacity, limit=None)
    try:
        return await trio.to_thread.run_sync(
            os.open, backend.local_path, os.O_RDONLY | os.O_CLOEXEC
        )
    except FileNotFoundError:
        raise UnsupportedError(
            f"disk: {backend.source} has no device node on this host", field="disk"
        ) from None
