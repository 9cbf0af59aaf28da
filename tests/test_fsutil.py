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
