"""Shared test helpers.

Tests of real third-party parts (zfs-fuse, qemu-ga, dnsmasq, the libvirt corpus) call
:func:`require_real`: without the part they skip, unless ``BHYVESUP_REQUIRE_REAL=1``
(set by ``.ci/run``), in which case a missing part is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
CORPUS = SHARED / "corpus" / "libvirt-bhyve"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--resilience-long",
        action="store_true",
        help="run the resilience suite's long mode (hundreds of faults)",
    )


def require_real(available: bool, what: str) -> None:
    """Skip (or, under ``BHYVESUP_REQUIRE_REAL=1``, fail) when *what* is missing."""
    if available:
        return
    if os.environ.get("BHYVESUP_REQUIRE_REAL") == "1":
        pytest.fail(f"required real part missing: {what}")
    pytest.skip(f"not available here: {what}")


@pytest.fixture
def corpus() -> Path:
    """The libvirt bhyve test corpus beside the checkout (``../shared/corpus``)."""
    require_real(CORPUS.is_dir(), f"libvirt corpus at {CORPUS}")
    return CORPUS


class FsyncRecorder:
    """Records the (device, inode) of every descriptor fsynced, then fsyncs it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[int, int]] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            st = os.fstat(fd)
            self.seen.append((st.st_dev, st.st_ino))
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def count(self, path: Path) -> int:
        """How many times *path* (a file or directory) was fsynced."""
        st = os.stat(path)
        return self.seen.count((st.st_dev, st.st_ino))

    def covered(self, path: Path) -> bool:
        """Whether *path* was fsynced at all."""
        return self.count(path) > 0
