"""send_range: exactly the announced bytes, in order; a failing source ends the stream short.

Each case runs over a trio memory stream (the event-loop path) and over a real Unix
socket pair (sendfile for a plain file, the worker-thread pump for a custom reader).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from supervisor.rpc import bulk

Pair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


def _memory() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    return trio.testing.memory_stream_pair()


def _unix() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    a, b = socket.socketpair()
    return (
        trio.SocketStream(trio.socket.from_stdlib_socket(a)),
        trio.SocketStream(trio.socket.from_stdlib_socket(b)),
    )


PAIRS = pytest.mark.parametrize("pair", [_memory, _unix], ids=["memory", "unix"])


async def _collect(stream: trio.abc.ReceiveStream) -> bytes:
    parts = []
    while chunk := await stream.receive_some(1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def _preadv(fd: int, buf: memoryview, offset: int) -> int:
    return os.preadv(fd, [buf], offset)


@PAIRS
@pytest.mark.parametrize("custom", [False, True], ids=["plain", "reader"])
async def test_sends_the_range_across_chunks(tmp_path: Path, pair: Pair, custom: bool) -> None:
    data = os.urandom(2 * bulk.CHUNK + 5)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    left, right = pair()
    sent = []

    async def run() -> None:
        read = _preadv if custom else None
        sent.append(await bulk.send_range(left, fd, 3, len(data) - 4, read=read))

    async with trio.open_nursery() as n:
        n.start_soon(run)
        got = await _collect(right)
    await right.aclose()
    assert got == data[3:-1]
    assert sent == [len(data) - 4]
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by send_range, as documented


@PAIRS
async def test_a_failing_source_ends_the_stream_short(tmp_path: Path, pair: Pair) -> None:
    (tmp_path / "f").write_bytes(bytes(3 * bulk.CHUNK))
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    calls = 0

    def read(fd: int, buf: memoryview, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(6, "Device not configured")  # ENXIO: the VM is gone
        return os.preadv(fd, [buf], offset)

    left, right = pair()
    sent = []

    async def run() -> None:
        sent.append(await bulk.send_range(left, fd, 0, 3 * bulk.CHUNK, read=read))

    async with trio.open_nursery() as n:
        n.start_soon(run)
        got = await _collect(right)
    await right.aclose()
    assert len(got) == sent[0] == bulk.CHUNK
