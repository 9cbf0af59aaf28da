"""Pure parts of the storage layer: zfs output, thread accounting, sparse copy, jobs."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from supervisor.domain.model import Disk
from supervisor.errors import InvalidValueError, JobNotFoundError, OutOfRangeError
from supervisor.events import EventBus
from supervisor.jobs import JobRegistry
from supervisor.storage import copy as copymod
from supervisor.storage import stats, zfsparse
from supervisor.storage.disks import PEEK_MAX, check_peek
from supervisor.vmm.bhyveopts import parse_bhyve_argv
from tests.conftest import FsyncRecorder

# What FreeBSD 14.x (OpenZFS 2.2) prints for a sparse zvol with volmode=dev.
FREEBSD_GET = (
    "zroot/vm/web1/disk0\tvolsize\t21474836480\n"
    "zroot/vm/web1/disk0\tused\t1617166336\n"
    "zroot/vm/web1/disk0\treferenced\t1617166336\n"
    "zroot/vm/web1/disk0\tvolmode\tdev\n"
    "zroot/vm/web1/disk0\torigin\t-\n"
)


def test_zfs_get_golden_shape() -> None:
    props = zfsparse.parse_get(FREEBSD_GET)["zroot/vm/web1/disk0"]
    assert zfsparse.size(props["volsize"]) == 20 << 30
    assert zfsparse.size(props["used"]) == 1617166336
    assert zfsparse.size(props["origin"]) is None
    with pytest.raises(ValueError, match="exact size"):
        zfsparse.size("1.5G")  # what zfs prints without -p
    with pytest.raises(ValueError, match="unexpected line"):
        zfsparse.parse_get("zroot used 5\n")


@given(st.text(alphabet="abc/@ -.", min_size=1, max_size=12))
def test_dataset_names_are_checked(name: str) -> None:
    valid = (
        "@" not in name
        and " " not in name
        and not name.startswith(("/", "-", "."))
        and not name.endswith("/")
        and "//" not in name
    )
    if valid:
        assert zfsparse.check_dataset(name) == name
    else:
        with pytest.raises(InvalidValueError) as e:
            zfsparse.check_dataset(name)
        assert e.value.field == "dataset"


def test_zvol_device_paths() -> None:
    assert zfsparse.dataset_of_device("/dev/zvol/tank/vm/a") == "tank/vm/a"
    assert zfsparse.dataset_of_device("/tank/vm/a.img") is None
    assert zfsparse.volume_path("tank/x") == "/dev/zvol/tank/x"


PROCSTAT_T = """\
  PID    TID COMM                TDNAME              CPU  PRI STATE   WCHAN
 1234 100501 bhyve               -                    -1  120 sleep   kqread
 1234 100502 bhyve               mevent               -1  120 sleep   kqread
 1234 100503 bhyve               blk-3:0-0            -1  120 sleep   uwait
 1234 100504 bhyve               blk-3:0-1            -1  120 sleep   uwait
 1234 100505 bhyve               blk-4:0-0            -1  120 sleep   uwait
 1234 100511 bhyve               vcpu 0                2  120 run     -
"""
PROCSTAT_RH = """\
  PID    TID COMM             RESOURCE                          VALUE
 1234 100503 bhyve            user time                    00:00:00.000120
 1234 100503 bhyve            block reads                                 12
 1234 100503 bhyve            block writes                               340
 1234 100504 bhyve            block reads                                  3
 1234 100504 bhyve            block writes                                 5
 1234 100505 bhyve            block writes                               999
"""


def test_freebsd_thread_accounting_gives_requests_not_bytes() -> None:
    names = stats.parse_procstat_threads(PROCSTAT_T)
    assert names[100511] == "vcpu 0"
    totals = stats.sum_rusage(names, stats.parse_procstat_rusage(PROCSTAT_RH), "blk-3:0")
    # rusage counts operations only: the byte fields are absent, not zero.
    assert totals == {"rd_req": 15, "wr_req": 345}


def test_linux_proc_io() -> None:
    text = "rchar: 10\nwchar: 2048\nsyscr: 1\nsyscw: 2\nread_bytes: 0\nwrite_bytes: 4096\n"
    assert stats.parse_proc_io(text) == {
        "rd_bytes": 10,
        "wr_bytes": 2048,
        "rd_req": 1,
        "wr_req": 2,
    }


def test_worker_prefix_of_each_disk_kind() -> None:
    cmd = parse_bhyve_argv(
        [
            "bhyve",
            "-s",
            "0,hostbridge",
            "-s",
            "3,virtio-blk,/dev/zvol/z/a",
            "-s",
            "4,ahci,hd:/x/b.img,cd:/x/c.iso",
            "-s",
            "5,nvme,/x/d.img",
            "vm",
        ]
    )
    assert stats.thread_prefix(cmd, Disk(target="vda", source="/dev/zvol/z/a")) == "blk-3:0"
    assert stats.thread_prefix(cmd, Disk(target="sdb", source="/x/c.iso")) == "blk-4:0:1"
    assert stats.thread_prefix(cmd, Disk(target="nvme0n1", source="/x/d.img")) == "blk-5:0"
    assert stats.is_worker("blk-4:0:1-7", "blk-4:0:1")
    assert not stats.is_worker("blk-4:0:10-7", "blk-4:0:1")


def test_peek_bounds() -> None:
    check_peek(0, PEEK_MAX, PEEK_MAX)
    for offset, size, field in ((-1, 1, "offset"), (0, 0, "size"), (0, PEEK_MAX + 1, "size")):
        with pytest.raises(OutOfRangeError) as e:
            check_peek(offset, size, 1 << 30)
        assert e.value.field == field
    with pytest.raises(OutOfRangeError, match="past the end"):
        check_peek(10, 10, 15)


def _sparse(path: Path) -> bytes:
    with open(path, "wb") as f:
        f.truncate(16 << 20)
        f.seek(5 << 20)
        f.write(b"x" * 3000)
        f.seek(12 << 20)
        f.write(os.urandom(1 << 20))
    return path.read_bytes()


def test_sparse_copy_keeps_holes(tmp_path: Path) -> None:
    data = _sparse(tmp_path / "a")
    seen: list[tuple[int, int]] = []
    n = copymod.sparse_copy(
        str(tmp_path / "a"), str(tmp_path / "b"), progress=lambda d, t: seen.append((d, t))
    )
    assert (tmp_path / "b").read_bytes() == data
    assert os.stat(tmp_path / "b").st_blocks * 512 <= 3 << 20
    total = copymod.allocated_bytes(str(tmp_path / "a"))
    assert seen[0] == (0, total)
    assert seen[-1] == (n, total)
    assert n <= 3 << 20
    with pytest.raises(FileExistsError):
        copymod.sparse_copy(str(tmp_path / "a"), str(tmp_path / "b"))


@pytest.mark.parametrize("chunk", [copymod.CHUNK, 64 << 10, 4096])
def test_sparse_copy_leaves_zero_chunks_inside_data_as_holes(tmp_path: Path, chunk: int) -> None:
    # Zeros written as data (whole chunks, and a short chunk at the end of a region):
    # cp --sparse=always makes them holes, and so does the copy.
    with open(tmp_path / "a", "wb") as f:
        f.write(os.urandom(5000))
        f.write(bytes(4 << 20))
        f.write(b"z")
        f.write(bytes(chunk + 100))
        f.seek(16 << 20)
        f.write(bytes(chunk // 2))  # a region of zeros shorter than a chunk
        f.truncate(24 << 20)
    data = (tmp_path / "a").read_bytes()
    src_blocks = os.stat(tmp_path / "a").st_blocks
    copymod.sparse_copy(str(tmp_path / "a"), str(tmp_path / "b"), chunk=chunk)
    assert (tmp_path / "b").read_bytes() == data
    blocks = os.stat(tmp_path / "b").st_blocks * 512
    assert blocks <= src_blocks * 512 - (4 << 20) + 2 * chunk
    assert blocks <= 2 * chunk + 16384  # the two chunks that hold data, give or take a block


def test_sparse_copy_cancel_removes_the_partial_copy(tmp_path: Path) -> None:
    _sparse(tmp_path / "a")
    cancel = threading.Event()
    with pytest.raises(copymod.Cancelled):
        copymod.sparse_copy(
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            progress=lambda done, total: done > 0 and cancel.set(),  # after the first write
            cancel=cancel,
            chunk=4096,
        )
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("durable", [False, True])
def test_sparse_copy_fsyncs_the_file_and_its_directory_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    data = _sparse(tmp_path / "a")
    (tmp_path / "d").mkdir()
    fsyncs = FsyncRecorder(monkeypatch)
    copymod.sparse_copy(str(tmp_path / "a"), str(tmp_path / "d/b"), durable=durable)
    assert (tmp_path / "d/b").read_bytes() == data
    assert fsyncs.count(tmp_path / "d/b") == int(durable)
    assert fsyncs.count(tmp_path / "d") == int(durable)
    assert len(fsyncs.seen) == 2 * int(durable)


def test_a_cancelled_durable_copy_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sparse(tmp_path / "a")
    fsyncs = FsyncRecorder(monkeypatch)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(copymod.Cancelled):
        copymod.sparse_copy(str(tmp_path / "a"), str(tmp_path / "b"), cancel=cancel, durable=True)
    assert not (tmp_path / "b").exists()
    assert fsyncs.seen == []


def test_sparse_copy_bandwidth_paces(tmp_path: Path) -> None:
    with open(tmp_path / "a", "wb") as f:
        f.write(b"y" * (512 << 10))
    t0 = time.monotonic()
    copymod.sparse_copy(str(tmp_path / "a"), str(tmp_path / "b"), chunk=64 << 10, bandwidth=2 << 20)
    assert time.monotonic() - t0 >= 0.2  # 512 KiB at 2 MiB/s


async def test_jobs_publish_progress_end_and_cancel() -> None:
    bus = EventBus()
    events: list[dict[str, object]] = []
    bus.subscribe(lambda e: events.append(e) or True)
    async with trio.open_nursery() as nursery:
        reg = JobRegistry(bus, nursery.start_soon)

        async def quick(job: object) -> dict[str, object]:
            job.progress(5, 10, force=True)  # type: ignore[attr-defined]
            return {"ok": 1}

        async def slow(job: object) -> None:
            await trio.sleep_forever()

        a = reg.start("copy", "g", "vda", quick)
        b = reg.start("copy", "g", "vdb", slow)
        await a.finished.wait()
        assert reg.active("g", "vdb") is b
        reg.cancel(b.id)
        await b.finished.wait()
    assert (a.state, a.result, b.state) == ("completed", {"ok": 1}, "cancelled")
    types = [e["type"] for e in events]
    assert "job.progress" in types
    assert {"job.completed", "job.cancelled"} <= set(types)
    with pytest.raises(JobNotFoundError):
        reg.get(99)
