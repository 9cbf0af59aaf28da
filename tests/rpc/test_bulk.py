"""send_range: exactly the announced bytes, in order; a failing source ends the stream short.

Each case runs over a trio memory stream (the event-loop path) and over a real Unix
socket pair (sendfile for a plain file, the worker-thread pump for a custom reader or a
file with mappable spans).
"""

from __future__ import annotations

import array
import errno
import json
import mmap
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# -- mappable spans: sent from an mmap window, read elsewhere ----------------------------

PAGE = mmap.ALLOCATIONGRANULARITY


class _Maps:
    """Wraps ``mmap.mmap`` to record each mapping (offset, length, object)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse_from: int | None = None) -> None:
        self.made: list[tuple[int, int, mmap.mmap]] = []
        self.refused = 0
        self._real = mmap.mmap
        self._refuse_from = refuse_from
        monkeypatch.setattr(bulk.mmap, "mmap", self)

    def __call__(self, fd: int, length: int, *, flags: int, prot: int, offset: int) -> mmap.mmap:
        assert flags == mmap.MAP_SHARED
        assert prot == mmap.PROT_READ
        if self._refuse_from is not None and len(self.made) >= self._refuse_from:
            self.refused += 1
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        m = self._real(fd, length, flags=flags, prot=prot, offset=offset)
        self.made.append((offset, length, m))
        return m


def _recording_reader(log: list[tuple[int, int]]) -> bulk.ReadInto:
    def read(fd: int, buf: memoryview, offset: int) -> int:
        log.append((offset, len(buf)))
        return os.preadv(fd, [buf], offset)

    return read


async def _stream(pair: Pair, fd: int, offset: int, size: int, **kw: Any) -> tuple[bytes, int]:
    left, right = pair()
    sent = []

    async def run() -> None:
        sent.append(await bulk.send_range(left, fd, offset, size, **kw))

    async with trio.open_nursery() as n:
        n.start_soon(run)
        got = await _collect(right)
    await right.aclose()
    return got, sent[0]


@pytest.fixture
def ram_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, list[bulk.Span]]:
    """A guest-memory-like file: two RAM spans around a gap (the PCI hole), small windows."""
    monkeypatch.setattr(bulk, "MAP_WINDOW", 16 * PAGE)
    data = os.urandom(100 * PAGE)
    (tmp_path / "mem").write_bytes(data)
    return data, [(60 * PAGE, 100 * PAGE), (0, 40 * PAGE)]  # order does not matter


@PAIRS
@pytest.mark.parametrize(
    ("offset", "size"),
    [
        (123, 100 * PAGE - 123),  # RAM, the gap, RAM to the end of the file
        (39 * PAGE + 7, 21 * PAGE),  # the last of the first span into the second
        (61 * PAGE + 5, 39 * PAGE - 5),  # unaligned, ending at the end of RAM
        (45 * PAGE, 10 * PAGE),  # only the gap
    ],
)
async def test_mappable_spans_go_out_from_mappings_and_the_rest_is_read(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ram_file: tuple[bytes, list[bulk.Span]],
    pair: Pair,
    offset: int,
    size: int,
) -> None:
    data, spans = ram_file
    maps = _Maps(monkeypatch)
    reads: list[tuple[int, int]] = []
    fd = os.open(tmp_path / "mem", os.O_RDONLY)
    got, sent = await _stream(pair, fd, offset, size, read=_recording_reader(reads), mappable=spans)
    assert got == data[offset : offset + size]
    assert sent == size
    for off, length, m in maps.made:
        assert off % PAGE == 0
        assert length <= bulk.MAP_WINDOW
        assert any(a <= off and off + length <= b for a, b in spans)  # inside one span
        assert m.closed
    # Only the gap was read; every byte of RAM in the range came from a mapping.
    gap = (40 * PAGE, 60 * PAGE)
    for off, length in reads:
        assert gap[0] <= off
        assert off + length <= gap[1]
    in_gap = max(0, min(offset + size, gap[1]) - max(offset, gap[0]))
    assert sum(length for _, length in reads) == in_gap
    assert bool(maps.made) == (in_gap < size)


@PAIRS
@pytest.mark.parametrize("refuse_from", [0, 2], ids=["at-once", "mid-stream"])
async def test_a_refused_mapping_falls_back_to_reading(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ram_file: tuple[bytes, list[bulk.Span]],
    pair: Pair,
    refuse_from: int,
) -> None:
    data, spans = ram_file
    maps = _Maps(monkeypatch, refuse_from=refuse_from)
    reads: list[tuple[int, int]] = []
    fd = os.open(tmp_path / "mem", os.O_RDONLY)
    got, sent = await _stream(pair, fd, 0, len(data), read=_recording_reader(reads), mappable=spans)
    assert got == data
    assert sent == len(data)
    assert len(maps.made) == refuse_from
    assert maps.refused == 1  # refused once, then read for the rest of the stream
    mapped = sum(length for _, length, _ in maps.made)
    assert sum(length for _, length in reads) == len(data) - mapped


async def test_a_client_leaving_mid_stream_unmaps_and_ends_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "MAP_WINDOW", 1 << 20)
    size = 64 << 20
    (tmp_path / "mem").touch()
    os.truncate(tmp_path / "mem", size)  # sparse: reads as zeros, like untouched guest RAM
    maps = _Maps(monkeypatch)
    fd = os.open(tmp_path / "mem", os.O_RDONLY)
    left, right = _unix()
    sent = []

    async def run() -> None:
        sent.append(await bulk.send_range(left, fd, 0, size, mappable=[(0, size)]))

    async with trio.open_nursery() as n:
        n.start_soon(run)
        assert await right.receive_some(65536)
        await right.aclose()  # with bytes queued: the daemon's next write fails
    assert 0 < sent[0] < size
    assert maps.made
    assert all(m.closed for _, _, m in maps.made)
    with pytest.raises(OSError):
        os.fstat(fd)


# -- into the client's own descriptor ----------------------------------------------------


def _peer_pair() -> tuple[trio.SocketStream, socket.socket]:
    a, b = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), b


async def _hand_over(client: socket.socket, fd: int | None) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        if fd is None:
            client.sendall(b"F")
        else:
            client.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        line = client.makefile("rb").readline()
        client.close()
        answer: dict[str, Any] = json.loads(line)
        return answer

    return await trio.to_thread.run_sync(work)


async def test_writes_the_range_into_the_handed_descriptor(tmp_path: Path) -> None:
    src = tmp_path / "mem"
    data = (
        os.urandom(3 * mmap.PAGESIZE) + bytes(5 * mmap.PAGESIZE) + os.urandom(9 * bulk.CHUNK // 4)
    )
    src.write_bytes(data)
    out = tmp_path / "out"
    offset, size = 1234, len(data) - 1234 - 77
    server, client = _peer_pair()
    fd = os.open(src, os.O_RDONLY)
    with open(out, "wb") as sink:  # noqa: ASYNC230 - a test's local file
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: bulk.write_range_to_peer(server, fd, offset, size))
            answer = await _hand_over(client, sink.fileno())
    assert answer == {"written": size}
    assert out.read_bytes() == data[offset : offset + size]


async def test_no_descriptor_is_an_answer_not_a_hang(tmp_path: Path) -> None:
    src = tmp_path / "mem"
    src.write_bytes(b"x" * 4096)
    server, client = _peer_pair()
    fd = os.open(src, os.O_RDONLY)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: bulk.write_range_to_peer(server, fd, 0, 4096))
        answer = await _hand_over(client, None)
    assert answer["written"] == 0
    assert "no descriptor received" in answer["error"]


async def test_a_source_ending_early_is_said_in_the_answer(tmp_path: Path) -> None:
    src = tmp_path / "mem"
    src.write_bytes(b"y" * 5000)
    server, client = _peer_pair()
    fd = os.open(src, os.O_RDONLY)
    with open(tmp_path / "out", "wb") as sink:  # noqa: ASYNC230 - a test's local file
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: bulk.write_range_to_peer(server, fd, 0, 8192))
            answer = await _hand_over(client, sink.fileno())
    assert answer == {"written": 5000, "error": "the source ended early"}
