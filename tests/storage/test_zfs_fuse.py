"""The zfs(8) driver and the dataset-backed disk backend against a real ZFS (zfs-fuse)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.host import FREEBSD
from supervisor.storage.disks import FileDisk, backend_for
from supervisor.storage.zfs import DatasetNotFoundError, ZfsCli
from tests.storage.zfsfuse import zfs_fuse_pool


def _write(path: Path, data: bytes, size: int | None = None) -> None:
    with open(path, "r+b" if size is None else "wb") as f:
        if size is not None:
            f.truncate(size)
        f.write(data)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with zfs_fuse_pool(tmp_path) as p:
        yield p


async def test_datasets_snapshots_clone_promote_rollback_send(
    pool: tuple[str, Path], tmp_path: Path
) -> None:
    name, mnt = pool
    zfs = ZfsCli(FREEBSD)  # on Debian /sbin/zfs is zfs-fuse's
    await zfs.run("create", f"{name}/vm")
    await zfs.run("create", f"{name}/vm/web1")
    img = mnt / "vm/web1/disk0.img"
    _write(img, b"first", size=32 << 20)

    # The disk backend finds the dataset that holds the image, by mount point.
    disk = backend_for(FREEBSD, zfs, str(img))
    assert isinstance(disk, FileDisk)
    assert await disk.dataset() == f"{name}/vm/web1"
    info = await disk.info()
    assert info.capacity == 32 << 20

    # Exact numbers from get -p, and "-" for what does not apply.
    props = (await zfs.get([f"{name}/vm/web1"], ["used", "volsize", "origin"]))[f"{name}/vm/web1"]
    assert props["used"].isdigit()
    assert (props["volsize"], props["origin"]) == ("-", "-")

    await zfs.snapshot([f"{name}/vm/web1@s1"])
    _write(img, b"second")
    await zfs.snapshot([f"{name}/vm/web1@s2"])
    assert [s["name"] for s in await zfs.snapshots(f"{name}/vm/web1")] == ["s1", "s2"]

    # A clone depends on s1; promote moves s1 to it and reverses the dependency.
    await zfs.clone(f"{name}/vm/web1@s1", f"{name}/vm/web2")
    assert (await zfs.get([f"{name}/vm/web2"], ["origin"]))[f"{name}/vm/web2"]["origin"] == (
        f"{name}/vm/web1@s1"
    )
    assert (mnt / "vm/web2/disk0.img").read_bytes()[:5] == b"first"
    await zfs.promote(f"{name}/vm/web2")
    assert (await zfs.get([f"{name}/vm/web1"], ["origin"]))[f"{name}/vm/web1"]["origin"] == (
        f"{name}/vm/web2@s1"
    )

    # Roll web1 back to s2 after a third write.
    _write(img, b"third!")
    await zfs.rollback(f"{name}/vm/web1@s2")
    assert img.read_bytes()[:6] == b"second"

    # send | receive, counted through this process.
    seen: list[int] = []
    moved = await zfs.send_receive(f"{name}/vm/web1@s2", f"{name}/vm/copy", progress=seen.append)
    assert moved > 0
    assert seen[-1] == moved
    assert (mnt / "vm/copy/disk0.img").read_bytes()[:6] == b"second"

    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        await zfs.get([f"{name}/nope"], ["used"])
    await zfs.destroy(f"{name}/vm", recursive=True)
    assert not await zfs.exists(f"{name}/vm")
    assert shutil.which("zfs") is not None
    assert not os.path.exists(mnt / "vm/web1/disk0.img")
