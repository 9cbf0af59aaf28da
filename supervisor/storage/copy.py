"""Sparse file copy: only the data regions of the source are read and written.

``SEEK_DATA``/``SEEK_HOLE`` (FreeBSD and Linux alike) find the data; holes stay holes
in the copy, which is truncated to the source's size. The copy runs in a worker thread;
it reports progress after each chunk and stops at the next chunk once cancelled.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator

#: Bytes per read/write.
CHUNK = 1 << 20


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
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
    chunk: int = CHUNK,
    bandwidth: int | None = None,
) -> int:
    """Copy *src* to the new file *dst*, keeping holes; the bytes copied.

    *dst* must not exist. On any failure or cancellation the partial *dst* is removed.
    With *bandwidth* (bytes per second) the copy is paced to leave the disk to others.

    Raises:
        Cancelled: *cancel* was set.
        FileExistsError: *dst* exists.
    """
    sfd = os.open(src, os.O_RDONLY)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = os.fstat(sfd).st_size
            done = 0
            began = time.monotonic()
            zero = bytes(chunk)
            for start, length in data_regions(sfd, size):
                off = start
                while off < start + length:
                    _check(cancel)
                    data = os.pread(sfd, min(chunk, start + length - off), off)
                    if not data:
                        break
                    if data == (zero if len(data) == chunk else bytes(len(data))):
                        off += len(data)  # a zero block inside "data": keep it a hole
                    else:
                        os.pwrite(dfd, data, off)
                        off += len(data)
                    done += len(data)
                    if progress is not None:
                        progress(done)
                    if bandwidth:
                        ahead = done / bandwidth - (time.monotonic() - began)
                        if ahead > 0:
                            _pause(ahead, cancel)
            os.ftruncate(dfd, size)
            os.fsync(dfd)
        except BaseException:
            os.close(dfd)
            os.unlink(dst)
            raise
        os.close(dfd)
        return done
    finally:
        os.close(sfd)
