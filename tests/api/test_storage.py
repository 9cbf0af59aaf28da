"""domain.block_copy of a file through a daemon running in this process (on a simulated
host), so that what reaches the disk can be watched: which copies are fsynced, and that
each is byte for byte the source and no less sparse."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor.config import Config
from supervisor.daemon import Daemon
from supervisor.host import Host
from supervisor.rpc.trio_client import TrioClient, open_client
from supervisor.vmm import caps as capsmod
from supervisor.vmm.sim import install, teardown
from tests.conftest import FsyncRecorder
from tests.test_daemon_e2e import guest_xml

MB = 1 << 20


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    root = str(tmp_path / "host")
    h = install(root)
    daemon = Daemon(Config(), h, capsmod.DEFAULT)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            yield h
            daemon.stopping.set()
    finally:
        teardown(root)


def _image(host: Host) -> Path:
    image = Path(host.path("/var/vm/g/disk0.img"))
    image.parent.mkdir(parents=True)
    with open(image, "wb") as f:  # data, a hole, data, a zero chunk written as data
        f.write(os.urandom(3 * MB + 17))
        f.seek(9 * MB)
        f.write(os.urandom(MB))
        f.write(bytes(2 * MB))
        f.truncate(32 * MB)
    return image


async def _copy(c: TrioClient, **params: Any) -> dict[str, Any]:
    job: dict[str, Any] = await c.call("domain.block_copy", name="g", disk="vda", **params)
    with trio.fail_after(30):
        while job["state"] == "running":
            await trio.sleep(0.01)
            job = await c.call("job.get", id=job["id"])
    assert job["state"] == "completed", job
    return job


async def test_a_copy_is_durable_when_asked_or_pivoted_to_and_cp_like_otherwise(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _image(host)
    source = image.read_bytes()
    fsyncs = FsyncRecorder(monkeypatch)
    async with open_client(host.path("/var/run/bhyvesupd/bhyvesupd.sock")) as c:
        await c.call("domain.define", xml=guest_xml("g"))
        plain = await _copy(c, dest="/var/vm/g/plain.img")
        synced = await _copy(c, dest="/var/vm/g/synced.img", sync=True)
        pivoted = await _copy(c, dest="/var/vm/g/pivot.img", pivot_to_copy=True)
        xml = (await c.call("domain.get_xml", name="g"))["xml"]
    assert "/var/vm/g/pivot.img" in xml
    for job, name, durable in [
        (plain, "plain.img", False),
        (synced, "synced.img", True),
        (pivoted, "pivot.img", True),
    ]:
        copy = image.parent / name
        assert job["result"]["durable"] is durable
        assert fsyncs.covered(copy) is durable, name
        assert copy.read_bytes() == source
        # No less sparse than the source: the zero chunk written as data is a hole here.
        assert os.stat(copy).st_blocks <= os.stat(image).st_blocks - (2 * MB) // 512
        assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
        assert job["done"] == job["total"] >= 6 * MB + 17  # the data regions, by block
    # The directory holding the new names was fsynced for the durable copies (and only
    # a durable copy fsyncs anything there: the definition lives elsewhere).
    assert fsyncs.covered(image.parent)


async def test_a_plain_copy_fsyncs_nothing(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _image(host)
    async with open_client(host.path("/var/run/bhyvesupd/bhyvesupd.sock")) as c:
        await c.call("domain.define", xml=guest_xml("g"))
        fsyncs = FsyncRecorder(monkeypatch)
        job = await _copy(c, dest="/var/vm/g/copy.img")
    assert job["result"]["durable"] is False
    assert not fsyncs.covered(image.parent / "copy.img")
    assert not fsyncs.covered(image.parent)
    assert (image.parent / "copy.img").read_bytes() == image.read_bytes()
