"""The atomic writer: durable for definitions, rename-only for runtime files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor._fsutil import write_atomic


@pytest.mark.parametrize(("durable", "fsyncs"), [(True, 2), (False, 0)])
def test_write_atomic_replaces_and_syncs_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, fsyncs: int
) -> None:
    target = tmp_path / "run" / "g.pid"
    write_atomic(str(target), b"1\n")
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    write_atomic(str(target), b"2\n", durable=durable)
    assert target.read_bytes() == b"2\n"
    assert len(calls) == fsyncs  # the file and its directory, or neither
    assert [p.name for p in target.parent.iterdir()] == ["g.pid"]  # no temporary left


def test_write_atomic_finishes_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A nearly full filesystem stores part of a write and says how much.
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:1000])))
    target = tmp_path / "g.xml"
    write_atomic(str(target), b"x" * 4500)
    assert target.read_bytes() == b"x" * 4500


def test_write_atomic_out_of_space_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "g.xml"
    write_atomic(str(target), b"old")
    real = os.write
    written: list[int] = []

    def full(fd: int, data: bytes) -> int:
        if written:  # the first write stores a part, the next finds no space
            raise OSError(28, "No space left on device")
        written.append(real(fd, bytes(data[:2])))
        return written[-1]

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(str(target), b"new and longer")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["g.xml"]


def test_write_atomic_makes_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "run" / "bhyvesupd" / "web1.pid"
    write_atomic(str(path), b"42\n", durable=False)
    assert path.read_bytes() == b"42\n"
    assert os.listdir(path.parent) == ["web1.pid"]
