"""The virtio-9p checks made before a guest starts."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from supervisor.actors.guest import LaunchPlan
from supervisor.domain.model import Domain, Filesystem
from supervisor.errors import InvalidValueError
from supervisor.host import FREEBSD
from supervisor.storage.ninep import NinePCheck


def plan(fs: Filesystem, argv_opts: str) -> LaunchPlan:
    domain = Domain(name="g", memory_kib=131072, filesystems=(fs,))
    argv = (
        "bhyve",
        "-s",
        "0,hostbridge",
        "-s",
        f"4,virtio-9p,{fs.target}={fs.source}{argv_opts}",
        "g",
    )
    return LaunchPlan(loader=None, bhyve=argv, domain=domain)


async def test_share_must_be_an_existing_directory(tmp_path: Path) -> None:
    check = NinePCheck(FREEBSD)
    fs = Filesystem(source=str(tmp_path / "missing"), target="data")
    with pytest.raises(InvalidValueError, match=r"share 'data'.*does not exist") as e:
        await check.before_launch("g", plan(fs, ""))
    assert e.value.field == "devices.filesystem[0].source.dir"
    (tmp_path / "file").write_text("x")
    fs = attrs.evolve(fs, source=str(tmp_path / "file"))
    with pytest.raises(InvalidValueError, match="is not a directory"):
        await check.before_launch("g", plan(fs, ""))
    fs = attrs.evolve(fs, source=str(tmp_path))
    await check.before_launch("g", plan(fs, ""))


async def test_readonly_must_reach_bhyve(tmp_path: Path) -> None:
    check = NinePCheck(FREEBSD)
    fs = Filesystem(source=str(tmp_path), target="data", readonly=True)
    await check.before_launch("g", plan(fs, ",ro"))
    with pytest.raises(InvalidValueError, match="would not be read-only") as e:
        await check.before_launch("g", plan(fs, ""))
    assert e.value.field == "devices.filesystem[0].readonly"
