"""Small filesystem helpers shared by the daemon's writers."""

from __future__ import annotations

import os


def write_atomic(path: str, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write *path* so that a reader (or a crash) sees the old or the new content, never
    a mix: temporary file, fsync, rename, fsync of the directory.

    ``durable=False`` leaves out both fsyncs, for runtime files under /var/run: FreeBSD
    empties that directory at boot, so surviving a power loss buys nothing, while a
    reader and a crashed daemon still see the old or the new file (the rename is
    atomic). Each fsync costs a journal commit, and a guest start writes two of them.
    """
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = open_creating(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_directory(directory)


def open_creating(path: str, flags: int, mode: int) -> int:
    """``os.open(path, flags, mode)``, making *path*'s directory first if it is missing.

    The directory is made only when the open fails for want of it: checking it before
    every open was a third of the cost of a guest's runtime files.
    """
    try:
        return os.open(path, flags, mode)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return os.open(path, flags, mode)


def fsync_directory(directory: str) -> None:
    """Put *directory*'s entries (a file just created or renamed there) on stable storage:
    fsync of a file does not cover the name that leads to it."""
    dirfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def write_all(fd: int, data: bytes) -> None:
    """Write all of *data*: write(2) may store only part of it when the filesystem is
    nearly full (it fails with ENOSPC only once nothing fits), and a short write taken
    for a whole one would rename a truncated file over the good one."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
