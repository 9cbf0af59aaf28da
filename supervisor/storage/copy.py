"""Sparse file copy: only the data regions of the source are read and written.

``SEEK_DATA``/``SEEK_HOLE`` (FreeBSD and Linux alike) find the data, once: the walk also
gives the total that progress counts towards. Holes stay holes in the copy, which is
truncated to the source's size; a whole chunk of zeros inside a data region is left a
hole too (as ``cp --sparse=always`` does with zero blocks). The copy runs in a worker
thread; it reports progress after each chunk and stops at the next chunk once cancelled.

Each chunk is ``preadv`` into one reused buffer, compared with zeros (a ``memcmp`` that
stops at the first non-zero byte, so data costs next to nothing to check) and written
with ``pwrite`` from the same buffer: no allocation per chunk. ``copy_file_range(2)``
was measured against this on ext4 with the source in the page cache and was no faster
(the cost is the destination's new pages either way); it cannot see zero chunks without
reading them anyway, and Python offers it on Linux only, so FreeBSD would run another
path than the one tested.

Durability is the caller's choice. By default the copy is left in the page cache and
the kernel writes it back, as ``cp`` does: most of the time of a durable copy of a
cached image is the ``fsync``. With ``durable`` the file is fsynced and then its
directory (the new name is an entry there), so that the copy survives a crash before
anyone relies on it, as a copy that a guest is switched to must.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator

from supervisor._fsutil import fsync_directory

#: Bytes per read/write: fewer, larger calls stop paying off past this (measured).
CHUNK = 1 << 20

Progress = Callable[[int, int], None]
"""``(bytes done, bytes in all)``, called from the copying thread."""


def data_regions(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each data region of the open file *fd* of *size* bytes."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return  # only a hole is left
            if e.errno == errno.EINVAL:
                yield pos, size - pos  # no SEEK_DATA here: all of it is data
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end - start
        pos = end


class Cancelled(Exception):
    """The copy was cancelled."""


def _pause(seconds: float, cancel: threading.Event | None) -> None:
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise Cancelled


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled


def allocated_bytes(path: str) -> int:
    """How many bytes a sparse copy of *path* reads."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return sum(n for _, n in data_regions(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def sparse_copy(
    src: str,
    dst: str,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    chunk: int = CHUNK,
    bandwidth: int | None = None,
    durable: bool = False,
) -> int:
    """Copy *src* to the new file *dst*, keeping holes; the bytes copied.

    *dst* must not exist. On any failure or cancellation the partial *dst* is removed.
    With *bandwidth* (bytes per second) the copy is paced to leave the disk to others.
    With *durable* the copy and its directory entry are on stable storage on return.

    Raises:
        Cancelled: *cancel* was set.
        FileExistsError: *dst* exists.
    """
    sfd = os.open(src, os.O_RDONLY)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = os.fstat(sfd).st_size
            regions = list(data_regions(sfd, size))
            total = sum(n for _, n in regions)
            if progress is not None:
                progress(0, total)
            done = _copy_regions(sfd, dfd, regions, total, progress, cancel, chunk, bandwidth)
            os.ftruncate(dfd, size)
            if durable:
                os.fsync(dfd)
        except BaseException:
            os.close(dfd)
            os.unlink(dst)
            raise
        os.close(dfd)
        if durable:
            fsync_directory(os.path.dirname(dst) or ".")
        return done
    finally:
        os.close(sfd)


def _copy_regions(
    sfd: int,
    dfd: int,
    regions: list[tuple[int, int]],
    total: int,
    progress: Progress | None,
    cancel: threading.Event | None,
    chunk: int,
    bandwidth: int | None,
) -> int:
    view = memoryview(bytearray(chunk))
    zero = bytes(chunk)
    done = 0
    began = time.monotonic()
    for start, length in regions:
        off = start
        end = start + length
        while off < end:
            _check(cancel)
            n = os.preadv(sfd, [view[: min(chunk, end - off)]], off)
            if n == 0:
                break  # the source shrank under us: the rest reads as a hole
            # A zero chunk inside "data" stays a hole. startswith is a memcmp on the
            # buffer in place (memoryview == bytes would compare byte by byte).
            if not zero.startswith(view[:n]):
                os.pwrite(dfd, view[:n], off)
            off += n
            done += n
            if progress is not None:
                progress(done, total)
            if bandwidth:
                ahead = done / bandwidth - (time.monotonic() - began)
                if ahead > 0:
                    _pause(ahead, cancel)
    return done
