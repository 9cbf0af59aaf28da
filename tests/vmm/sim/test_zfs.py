"""The simulated zfs(8): OpenZFS's scripted shapes, messages and statuses for zvols."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from supervisor.storage import zfsparse
from supervisor.vmm.sim.host import install


@pytest.fixture(scope="module")
def zfs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("simzfs") / "host"
    install(str(root))
    return root, root / "sbin/zfs"


def run(z: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(z), *args], capture_output=True, text=True, check=False)


def test_zvol_lifecycle_shapes(zfs: tuple[Path, Path]) -> None:
    root, z = zfs
    assert run(z, "create", "zroot/vm").returncode == 0
    r = run(z, "create", "-s", "-V", "1G", "-o", "volmode=dev", "zroot/vm/a")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    dev = root / "dev/zvol/zroot/vm/a"
    assert dev.stat().st_size == 1 << 30
    assert dev.stat().st_blocks == 0  # sparse
    r = run(
        z,
        "get",
        "-H",
        "-p",
        "-o",
        "name,property,value",
        "volsize,used,volmode,origin",
        "zroot/vm/a",
    )
    assert r.stdout == (
        "zroot/vm/a\tvolsize\t1073741824\n"
        "zroot/vm/a\tused\t0\n"
        "zroot/vm/a\tvolmode\tdev\n"
        "zroot/vm/a\torigin\t-\n"
    )
    assert zfsparse.parse_get(r.stdout)["zroot/vm/a"]["volsize"] == "1073741824"

    with open(dev, "r+b") as f:
        f.write(os.urandom(1 << 20))
    used = zfsparse.parse_get(
        run(z, "get", "-H", "-p", "-o", "name,property,value", "used", "zroot/vm/a").stdout
    )["zroot/vm/a"]["used"]
    assert int(used) >= 1 << 20

    assert run(z, "snapshot", "zroot/vm/a@s1").returncode == 0
    assert run(z, "clone", "zroot/vm/a@s1", "zroot/vm/b").returncode == 0
    r = run(z, "destroy", "zroot/vm/a@s1")
    assert r.returncode == 1
    assert r.stderr == (
        "cannot destroy 'zroot/vm/a@s1': snapshot has dependent clones\n"
        "use '-R' to destroy the following datasets:\nzroot/vm/b\n"
    )
    r = run(z, "destroy", "zroot/vm/a")
    assert r.returncode == 1
    assert r.stderr.startswith("cannot destroy 'zroot/vm/a': volume has children\n")
    assert run(z, "snapshot", "zroot/vm/a@s2").returncode == 0
    r = run(z, "rollback", "zroot/vm/a@s1")
    assert r.returncode == 1
    assert "more recent snapshots or bookmarks exist" in r.stderr
    assert run(z, "rollback", "-r", "zroot/vm/a@s1").returncode == 0
    r = run(z, "list", "-H", "-o", "name", "-t", "snapshot", "-r", "zroot/vm")
    assert r.stdout == "zroot/vm/a@s1\n"


def test_missing_dataset_and_bad_usage(zfs: tuple[Path, Path]) -> None:
    _, z = zfs
    r = run(z, "get", "-H", "-p", "-o", "name,property,value", "used", "zroot/nope")
    assert (r.returncode, r.stderr) == (1, "cannot open 'zroot/nope': dataset does not exist\n")
    r = run(z, "create", "-V", "1G", "nopool/x")
    assert (r.returncode, r.stderr) == (1, "cannot create 'nopool/x': parent does not exist\n")
    r = run(z, "frobnicate")
    assert (r.returncode, r.stderr) == (2, "unrecognized command 'frobnicate'\n")
    r = run(z, "list", "-Q")
    assert (r.returncode, r.stderr) == (2, "invalid option 'Q'\n")
