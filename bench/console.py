"""Console relay: bytes per second from a guest's UART to an attached client, no loss.

The bench plays the guest's UART: it writes a numbered pattern into the A side of the
guest's nmdm pair (where bhyve's com1 writes), blocking when the pair is full, so nothing
is dropped before the supervisor. bhyvesupd reads the B side into its ring, its console
log and every attached client; a read-only ``console.attach`` client counts what arrives
and checks it byte for byte against what was written. The peer is the same pair read
directly (``cat`` of the B side): the relay's ceiling on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Daemon, SimHost, report, temp_root, wait_for

MB = 1 << 20


def _pattern(total: int) -> bytes:
    line_no = 0
    out = bytearray()
    while len(out) < total:
        out += f"{line_no:012d} console relay bench pattern abcdefghijklmnopqrstuvwxy\r\n".encode()
        line_no += 1
    return bytes(out[:total])


def _writer(path: str, data: bytes, done: list[float]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view[:65536])
            view = view[n:]
    finally:
        os.close(fd)
    done.append(time.monotonic())


def _through_daemon(total: int) -> tuple[float, int, bool]:
    with temp_root("bench-console-") as d:
        sim = SimHost(d / "host")
        (name,) = sim.define_files(1, prefix="c")
        daemon = Daemon(sim, d / "daemon.out")
        try:
            daemon.wait_socket()
            wait_for(
                "guest running", lambda: daemon.call("domain.list")[0]["state"] == "running", 60
            )
            prompt = f"{name}# ".encode()
            wait_for("prompt", lambda: prompt in _tail(daemon, name), 30)
            time.sleep(0.5)  # the guest is idle now: everything that follows is ours
            c = daemon.client()
            c.call("console.attach", name=name, mode="ro")
            sock, early = c.raw_socket()
            sock.settimeout(30)
            data = _pattern(total)
            done: list[float] = []
            t0 = time.monotonic()
            th = threading.Thread(
                target=_writer, args=(sim.host.path(f"/dev/nmdm-{name}.1A"), data, done)
            )
            th.start()
            got = bytearray(early)
            try:
                while len(got) < total:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    got += chunk
            except TimeoutError:
                pass  # bytes were lost: the count below says how many
            t1 = time.monotonic()
            th.join()
            sock.close()
            return total / (t1 - t0), total - len(got), bytes(got) == data
        finally:
            daemon.stop()
            sim.teardown()


def _tail(daemon: Daemon, name: str) -> bytes:
    import base64

    return base64.b64decode(daemon.call("console.tail", name=name)["data"])


def _direct(total: int) -> float:
    """The same pair read straight from its B side: the relay's ceiling."""
    with temp_root("bench-console-peer-") as d:
        sim = SimHost(d / "host")
        from supervisor.vmm.sim import nmdm

        nmdm.ensure_pair(str(sim.root), "/dev/nmdm-peer.1A")
        try:
            b = os.open(sim.host.path("/dev/nmdm-peer.1B"), os.O_RDONLY | os.O_NOCTTY)
            import tty

            tty.setraw(b)
            data = _pattern(total)
            done: list[float] = []
            t0 = time.monotonic()
            th = threading.Thread(
                target=_writer, args=(sim.host.path("/dev/nmdm-peer.1A"), data, done)
            )
            a_fd = os.open(sim.host.path("/dev/nmdm-peer.1A"), os.O_RDWR | os.O_NOCTTY)
            tty.setraw(a_fd)
            th.start()
            n = 0
            while n < total:
                n += len(os.read(b, 1 << 20))
            t1 = time.monotonic()
            th.join()
            os.close(b)
            os.close(a_fd)
            return total / (t1 - t0)
        finally:
            sim.teardown()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    total = (16 if args.quick else 256) * MB
    rate, lost, exact = _through_daemon(total)
    ceiling = _direct(total)
    return [
        report(
            "console.relay_rate",
            rate / MB,
            "MB/s",
            peer=ceiling / MB,
            peer_name="same nmdm pair read directly",
            lower_is_better=False,
            target=">= 50 MB/s",
        ),
        report("console.relay_lost", lost, "bytes", target="0"),
        report("console.relay_exact", 1 if exact else 0, "(1 = byte-identical)"),
    ]


if __name__ == "__main__":
    main()
