"""send_range: exactly the announced bytes, in order; a failing source ends the stream short."""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing

from supervisor.rpc import bulk


async def _collect(stream: trio.abc.ReceiveStream) -> bytes:
    parts = []
    while chunk := await stream.receive_some(1 << 20):
        parts.append(chunk)
    return b"".join(parts)


async def test_sends_the_range_across_chunks(tmp_path: Path) -> None:
    data = os.urandom(2 * bulk.CHUNK + 5)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as n:
        n.start_soon(bulk.send_range, left, fd, 3, len(data) - 4)
        got = await _collect(right)
    assert got == data[3:-1]
    try:
        os.fstat(fd)
    except OSError:
        pass  # closed by send_range, as documented
    else:
        raise AssertionError("send_range left the fd open")


async def test_a_failing_source_ends_the_stream_short(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(bytes(3 * bulk.CHUNK))
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    calls = 0

    def read(fd: int, buf: memoryview, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(6, "Device not configured")  # ENXIO: the VM is gone
        return os.preadv(fd, [buf], offset)

    left, right = trio.testing.memory_stream_pair()
    sent = []

    async def run() -> None:
        sent.append(await bulk.send_range(left, fd, 0, 3 * bulk.CHUNK, read=read))

    async with trio.open_nursery() as n:
        n.start_soon(run)
        got = await _collect(right)
    assert len(got) == sent[0] == bulk.CHUNK
