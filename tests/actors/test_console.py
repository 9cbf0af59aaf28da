"""A reader's queue on its own, the fan-out to readers, and the console pump against a real
(simulated nmdm) pair: a flood arrives whole."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.actors.console import (
    MERGE_BELOW,
    READER_QUEUE,
    TAKEOVER_NOTICE,
    Console,
    ConsoleLog,
    ConsoleTakenOver,
    ReaderQueue,
    loss_notice,
)
from supervisor.host import Host

# -- the reader's queue ----------------------------------------------------------------------


def numbered(n: int, start: int = 0) -> bytes:
    """*n* bytes no stretch of which repeats soon: a misplaced byte shows."""
    return bytes((start + i) * 7 % 251 for i in range(n))


def test_a_trickle_of_one_byte_writes_is_one_piece() -> None:
    q = ReaderQueue()
    for i in range(10_000):
        q.put(bytes([i % 256]))
    assert q.pieces == 1
    assert q.size == 10_000
    assert q.receive_nowait() == bytes(i % 256 for i in range(10_000))
    assert q.size == 0
    assert q.pieces == 0
    with pytest.raises(trio.WouldBlock):
        q.receive_nowait()


def test_large_writes_are_queued_as_they_are_and_taken_together() -> None:
    q = ReaderQueue()
    data = numbered(3 * 256 * 1024)
    for i in range(3):
        q.put(data[i * 256 * 1024 : (i + 1) * 256 * 1024])
    q.put(b"!")
    assert q.pieces == 4  # none was small enough to take the next write in
    assert q.receive_nowait() == data + b"!"
    assert q.size == 0


def test_merging_stops_at_a_piece_of_merge_below() -> None:
    q = ReaderQueue()
    q.put(b"a" * (MERGE_BELOW - 1))
    q.put(b"b" * 10)
    q.put(b"c")
    assert q.pieces == 2
    assert q.size == MERGE_BELOW + 10


def test_a_reader_takes_at_most_max_bytes_at_once() -> None:
    q = ReaderQueue()
    data = numbered(5000)
    for i in range(0, 5000, 1000):
        q.put(data[i : i + 1000])
    got = [q.receive_nowait(1500) for _ in range(4)]
    assert [len(g) for g in got] == [1500, 1500, 1500, 500]
    assert b"".join(got) == data
    assert q.size == 0


def test_past_the_budget_the_oldest_bytes_go_and_the_reader_is_told_how_many() -> None:
    q = ReaderQueue(limit=1000)
    data = numbered(2500)
    for i in range(0, 2500, 300):
        q.put(data[i : i + 300])
    assert q.size == 1000
    assert q.lost == q.lost_total == 1500
    assert q.receive_nowait() == loss_notice(1500) + data[-1000:]
    assert q.lost == 0
    q.put(b"after")
    assert q.receive_nowait() == b"after"  # told once
    assert q.lost_total == 1500


def test_the_loss_notice_reads_as_it_always_has() -> None:
    assert loss_notice(1234) == b"\r\n[console: 1234 bytes lost]\r\n"


def test_one_write_larger_than_the_budget_keeps_its_end() -> None:
    q = ReaderQueue(limit=100)
    q.put(b"old" * 10)
    data = numbered(250)
    q.put(data)
    assert q.size == 100
    assert q.receive_nowait() == loss_notice(30 + 150) + data[-100:]


def test_a_notice_keeps_its_place_and_survives_an_overflow() -> None:
    q = ReaderQueue(limit=100)
    q.put(b"before")
    q.notice(TAKEOVER_NOTICE)
    q.put(b"after")
    assert q.receive_nowait() == b"before" + TAKEOVER_NOTICE + b"after"
    q.put(b"x" * 60)
    q.notice(TAKEOVER_NOTICE)
    q.put(b"y" * 60)
    # The notice is not output: it neither counts against the budget nor is dropped.
    assert q.size == 100
    assert q.receive_nowait() == loss_notice(20) + b"x" * 40 + TAKEOVER_NOTICE + b"y" * 60


_NOTICE = re.compile(rb"\r\n\[console: (\d+) bytes lost\]\r\n")


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.integers(min_value=1, max_value=700).map(lambda n: ("put", n)),
            st.integers(min_value=1, max_value=900).map(lambda n: ("take", n)),
        ),
        max_size=40,
    )
)
def test_what_a_reader_gets_and_what_it_is_told_it_lost_add_up_to_the_output(
    steps: list[tuple[str, int]],
) -> None:
    # Output is a byte stream numbered so that each byte says where it was: the reader's
    # pieces, with each loss notice standing for that many bytes, must be the stream.
    q = ReaderQueue(limit=1000)
    written = 0
    received = bytearray()
    for op, n in steps:
        if op == "put":
            q.put(numbered(n, written))
            written += n
        else:
            try:
                received += q.receive_nowait(n)
            except trio.WouldBlock:
                assert q.size == 0
        assert q.size <= 1000
    q.close()
    while True:
        try:
            received += q.receive_nowait()
        except trio.EndOfChannel:
            break
    # Consecutive bytes of the numbered stream differ by 7 (mod 251), the notice's first
    # two by -3: a notice found in what was received is one.
    expected = numbered(written)
    offset = lost = pos = 0
    for m in _NOTICE.finditer(received):
        segment = received[pos : m.start()]
        assert segment == expected[offset : offset + len(segment)]
        offset += len(segment) + int(m[1])
        lost += int(m[1])
        pos = m.end()
    assert received[pos:] == expected[offset:]
    assert lost == q.lost_total


async def test_a_waiting_reader_wakes_for_output_and_ends_with_the_queue() -> None:
    q = ReaderQueue()
    pieces: list[bytes] = []

    async def reader() -> None:
        async for piece in q:
            pieces.append(bytes(piece))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        q.put(b"one")
        q.put(b"two")
        await trio.testing.wait_all_tasks_blocked()
        q.put(b"three")
        q.close()
    assert pieces == [b"onetwo", b"three"]


def test_a_closed_queue_refuses_output_and_hands_out_what_it_held() -> None:
    q = ReaderQueue()
    q.put(b"last words")
    q.close()
    with pytest.raises(trio.ClosedResourceError):
        q.put(b"more")
    q.notice(TAKEOVER_NOTICE)  # nobody to tell: dropped quietly
    assert q.receive_nowait() == b"last words"
    with pytest.raises(trio.EndOfChannel):
        q.receive_nowait()


# -- the fan-out to attached readers ---------------------------------------------------------


def unopened_console(tmp_path: Path) -> Console:
    log = ConsoleLog(str(tmp_path / "g.console.log"), 64 << 20, 1)
    return Console(Host(root=str(tmp_path)), "/dev/nmdm-g.1B", log)


def drain(att_output: ReaderQueue) -> bytes:
    out = bytearray()
    while True:
        try:
            out += att_output.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return bytes(out)


async def test_a_writer_taken_over_is_told_so_in_its_place_and_keeps_reading(
    tmp_path: Path,
) -> None:
    console = unopened_console(tmp_path)
    first = console.attach(writer=True)
    watcher = console.attach(writer=False)
    console._record(b"before ")
    second = console.attach(writer=True)
    console._record(b"after")
    assert (first.writer, watcher.writer, second.writer) == (False, False, True)
    assert drain(first.output) == b"before " + TAKEOVER_NOTICE + b"after"
    assert drain(watcher.output) == b"before after"
    assert drain(second.output) == b"after"
    with pytest.raises(ConsoleTakenOver):
        await console.write(b"ls\r", first)


def test_a_reader_that_falls_behind_loses_only_its_own_output(tmp_path: Path) -> None:
    console = unopened_console(tmp_path)
    slow = console.attach(writer=False)
    fast = console.attach(writer=False)
    data = numbered(READER_QUEUE + 300_000)
    received = bytearray()
    for i in range(0, len(data), 65536):
        console._record(data[i : i + 65536])
        received += drain(fast.output)
    assert received == data
    assert fast.output.lost_total == 0
    assert drain(slow.output) == loss_notice(300_000) + data[-READER_QUEUE:]
    assert console.tail() == data[-console.ring_size :]


def test_a_detached_reader_gets_what_was_queued_and_nothing_after(tmp_path: Path) -> None:
    console = unopened_console(tmp_path)
    att = console.attach(writer=False)
    console._record(b"queued")
    console.detach(att)
    console._record(b"later")
    assert console.attachments == 0
    assert drain(att.output) == b"queued"
    with pytest.raises(trio.EndOfChannel):
        att.output.receive_nowait()


# -- the pump on a real pair -----------------------------------------------------------------


async def test_a_console_flood_reaches_a_reader_and_the_log_byte_for_byte(
    tmp_path: Path,
) -> None:
    from supervisor.vmm.sim import install, teardown

    root = tmp_path / "host"
    host = install(str(root))
    log_path = tmp_path / "flood.console.log"
    console = Console(host, "/dev/nmdm-flood.1B", ConsoleLog(str(log_path), 64 << 20, 1))
    data = b"".join(b"%08d flood line for the console pump\r\n" % i for i in range(30_000))
    try:
        await console.open()
        att = console.attach(writer=False)

        def guest() -> None:  # bhyve's side of the pair, writing as fast as it can
            fd = os.open(host.path("/dev/nmdm-flood.1A"), os.O_WRONLY | os.O_NOCTTY)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view[:65536]) :]
            finally:
                os.close(fd)

        got = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(console.run)
            writer = threading.Thread(target=guest)
            writer.start()
            with trio.fail_after(60):
                while len(got) < len(data):
                    got += await att.output.receive()
            nursery.cancel_scope.cancel()
        writer.join()
        assert bytes(got) == data
        assert att.output.lost_total == 0
        assert console.total == len(data)
        assert log_path.read_bytes() == data
    finally:
        await console.aclose()
        teardown(str(root))


# -- the console log ---------------------------------------------------------------------------


def test_the_console_log_makes_its_directory_on_first_output(tmp_path: Path) -> None:
    path = tmp_path / "log" / "guests" / "g.console.log"
    log = ConsoleLog(str(path), 1 << 20, 1)
    log.write(b"FreeBSD/amd64 (g) (ttyu0)\n")
    log.write(b"login: ")
    log.close()
    assert path.read_bytes() == b"FreeBSD/amd64 (g) (ttyu0)\nlogin: "


def test_the_console_log_rotates_by_size_and_keeps_what_it_is_told(tmp_path: Path) -> None:
    path = tmp_path / "g.console.log"
    log = ConsoleLog(str(path), 100, 2)
    for i in range(7):
        log.write(f"{i}".encode() * 60)  # each write but the first crosses 100 bytes
    log.close()
    assert path.read_bytes() == b"6" * 60
    assert (tmp_path / "g.console.log.1").read_bytes() == b"4" * 60 + b"5" * 60
    assert (tmp_path / "g.console.log.2").read_bytes() == b"2" * 60 + b"3" * 60
    assert not (tmp_path / "g.console.log.3").exists()
