"""Dataset-backed disks (vm-bhyve's layout) through bhyvesupctl on a real ZFS.

The daemon runs on a simulated host whose ``zfs`` is zfs-fuse's: snapshots, clones,
promote and rollback of the dataset holding a guest's image are real ZFS operations.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.zfsfuse import zfs_fuse_pool
from tests.test_daemon_e2e import Sim
from tests.test_storage_e2e import Ctl, guest_xml, start_daemon, stop_daemon


@pytest.fixture
def fuse_sim(tmp_path: Path) -> Iterator[tuple[Sim, str, Path]]:
    with zfs_fuse_pool(tmp_path) as (pool, mnt):
        zfs = shutil.which("zfs")
        assert zfs is not None
        s = start_daemon(tmp_path / "host", tmp_path / "daemon.out", "--sim-zfs", zfs)
        try:
            yield s, pool, mnt
        finally:
            stop_daemon(s)


def test_dataset_disk_snapshot_copy_pull_revert(
    fuse_sim: tuple[Sim, str, Path], tmp_path: Path
) -> None:
    sim, pool, mnt = fuse_sim
    ctl = Ctl(sim)
    for ds in ("vm", "vm/d1"):
        subprocess.run(["zfs", "create", f"{pool}/{ds}"], check=True)
    img = mnt / "vm/d1/disk0.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    share = tmp_path / "share"
    share.mkdir()
    sim.call("domain.define", xml=guest_xml("d1", str(share), disk=str(img)))
    ctl.run("start", "d1")
    sim.wait_console("d1", r"d1# ")
    sim.type("d1", "write-disk 4")
    sim.wait_console("d1", r"wrote 4 KiB")

    # A snapshot of the dataset the image lives in, taken between freeze and thaw.
    assert "consistent (frozen" in ctl.run("snapshot-create", "d1", "s1").stdout
    snaps = ctl.json("snapshot-list", "d1")
    assert [(s["dataset"], s["name"]) for s in snaps] == [(f"{pool}/vm/d1", "s1")]

    # A running guest's image copies from a clone of a fresh snapshot.
    r = ctl.run("blockcopy", "d1", "vda", str(tmp_path / "copy.img"), "--wait")
    assert "completed" in r.stdout
    copied = (tmp_path / "copy.img").read_bytes()
    assert copied[:13] == b"BHYVESIM d1 B"
    assert len(copied) == 16 << 20
    left = subprocess.run(
        ["zfs", "list", "-H", "-o", "name", "-t", "all", "-r", pool],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "bhyvesup-copy" not in left

    # A guest on a clone of d1@s1; pull makes it independent (promote).
    subprocess.run(["zfs", "clone", f"{pool}/vm/d1@s1", f"{pool}/vm/d2"], check=True)
    sim.call("domain.define", xml=guest_xml("d2", str(share), disk=str(mnt / "vm/d2/disk0.img")))
    assert "completed" in ctl.run("blockpull", "d2", "vda", "--wait").stdout
    origin = subprocess.run(
        ["zfs", "get", "-H", "-o", "value", "origin", f"{pool}/vm/d2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert origin == "-"
    r = ctl.run("blockpull", "d2", "vda", check=False)
    assert "not a clone" in r.stderr

    # Revert d1 (stopped) to s2 after more writes: they are gone.
    ctl.run("snapshot-create", "d1", "s2")
    sim.type("d1", "write-disk 64")
    sim.wait_console("d1", r"wrote 64 KiB")
    ctl.run("destroy", "d1")
    ctl.run("snapshot-revert", "d1", "s2")
    assert img.read_bytes()[8192:16384] == bytes(8192)

    # Commit a clone into its base: refused while another guest uses the base ...
    subprocess.run(["zfs", "clone", f"{pool}/vm/d1@s2", f"{pool}/vm/d3"], check=True)
    sim.call("domain.define", xml=guest_xml("d3", str(share), disk=str(mnt / "vm/d3/disk0.img")))
    r = ctl.run("blockcommit", "d3", "vda", check=False)
    assert "also used by guest d1" in r.stderr
    # ... and done when it is the clone's alone: the data now lives under the base's name.
    subprocess.run(["zfs", "create", f"{pool}/vm/b0"], check=True)
    with open(mnt / "vm/b0/disk0.img", "wb") as f:
        f.write(b"gold")
    subprocess.run(["zfs", "snapshot", f"{pool}/vm/b0@gold"], check=True)
    subprocess.run(["zfs", "clone", f"{pool}/vm/b0@gold", f"{pool}/vm/d4"], check=True)
    with open(mnt / "vm/d4/disk0.img", "r+b") as f:
        f.write(b"mine")
    sim.call("domain.define", xml=guest_xml("d4", str(share), disk=str(mnt / "vm/d4/disk0.img")))
    assert "completed" in ctl.run("blockcommit", "d4", "vda", "--wait").stdout
    assert str(mnt / "vm/b0/disk0.img") in sim.call("domain.get_xml", name="d4")["xml"]
    assert (mnt / "vm/b0/disk0.img").read_bytes() == b"mine"
    names = subprocess.run(
        ["zfs", "list", "-H", "-o", "name", "-r", f"{pool}/vm"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert f"{pool}/vm/d4" not in names
