"""The console pump against a real (simulated nmdm) pair: a flood arrives whole."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import trio

from supervisor.actors.console import Console, ConsoleLog


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
                    got += await att.receive.receive()
            nursery.cancel_scope.cancel()
        writer.join()
        assert bytes(got) == data
        assert att.lost == 0
        assert console.total == len(data)
        assert log_path.read_bytes() == data
    finally:
        await console.aclose()
        teardown(str(root))
