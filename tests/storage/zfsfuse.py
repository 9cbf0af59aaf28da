"""A real ZFS for tests: zfs-fuse's daemon and a pool on a file in a temporary directory.

zfs-fuse serves one machine-wide socket (``/var/run/zfs/zfs_socket``), so a daemon that
is already running is used as it is; otherwise one is started for the test and stopped
after it. The pool gets a unique name and is destroyed at the end, whatever happened.
zfs-fuse's quirks: no ``zfs list -p`` (``zfs get -p`` works), and a stale pid file
stops its daemon silently, so ours lives in the temporary directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require_real

ZFS_SOCKET = "/var/run/zfs/zfs_socket"


def _daemon_answers() -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(ZFS_SOCKET)
        return True
    except OSError:
        return False


@contextmanager
def zfs_fuse_pool(tmp: Path) -> Iterator[tuple[str, Path]]:
    """(pool name, its mount point) on a real zfs-fuse."""
    have = all(shutil.which(t) for t in ("zfs-fuse", "zfs", "zpool")) and os.path.exists(
        "/dev/fuse"
    )
    require_real(have, "zfs-fuse (Debian package zfs-fuse) and /dev/fuse")
    proc: subprocess.Popen[bytes] | None = None
    if not _daemon_answers():
        proc = subprocess.Popen(
            ["zfs-fuse", "-n", "-p", str(tmp / "zfs-fuse.pid"), "--no-kstat-mount"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not _daemon_answers():
            assert proc.poll() is None, "zfs-fuse exited at start"
            assert time.monotonic() < deadline, "zfs-fuse did not open its socket"
            time.sleep(0.05)
    pool = f"bsup{os.getpid()}x{int(time.monotonic() * 1000) % 100000}"
    image = tmp / "pool.img"
    mnt = tmp / "mnt"
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    try:
        subprocess.run(["zpool", "create", "-m", str(mnt), pool, str(image)], check=True)
        yield pool, mnt
    finally:
        subprocess.run(["zpool", "destroy", "-f", pool], check=False, capture_output=True)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
