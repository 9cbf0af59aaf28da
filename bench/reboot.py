"""Reboot turnaround: the supervisor's own time from "bhyve exited 0" to the next exec.

The guest reboots itself (``reboot`` typed on its console: bhyve exits 0). For
bhyvesupd the interval is read from its JSON log, ``bhyve_exited`` to the next
``guest_started`` of the same guest (stamped with microseconds). The peer is supervisord
with ``autorestart=true`` running the same simulated bhyve: its log's ``exited:`` to the
next ``spawned:`` (millisecond stamps). Only UEFI guests: no loader runs in between, so
the interval is the supervisor's own work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    SUPERVISORD,
    Daemon,
    SimHost,
    Supervisord,
    percentile,
    report,
    temp_root,
    wait_for,
)


def _read_until(read: Any, pattern: bytes, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while pattern not in got:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {pattern!r} on the console; got {got[-200:]!r}")
        got += read()
    return got


def _ours(reboots: int, guests: int) -> list[float]:
    with temp_root("bench-reboot-") as d:
        sim = SimHost(d / "host")
        names = sim.define_files(guests, prefix="r")
        daemon = Daemon(sim, d / "daemon.out")
        try:
            daemon.wait_socket()
            wait_for(
                "guests running",
                lambda: all(g["state"] == "running" for g in daemon.call("domain.list")),
                120,
            )
            for name in names:
                c = daemon.client()
                c.call("console.attach", name=name, mode="rw")
                sock, early = c.raw_socket()
                sock.settimeout(30)
                prompt = f"{name}# ".encode()
                sock.sendall(b"\r")  # a fresh prompt: the last one came before we attached
                if prompt not in early:
                    _read_until(lambda s=sock: s.recv(65536), prompt, 30)
                for _ in range(reboots):
                    time.sleep(0.25)  # ACPI enabled, as a running guest would be
                    sock.sendall(b"reboot\r")
                    _read_until(lambda s=sock: s.recv(65536), b"boot", 30)
                    _read_until(lambda s=sock: s.recv(65536), prompt, 30)
                sock.close()
            log = sim.root / "var/log/bhyvesupd/bhyvesupd.log"
            return _intervals_ours(log.read_text())
        finally:
            daemon.stop()
            sim.teardown()


def _intervals_ours(text: str) -> list[float]:
    exited: dict[str, float] = {}
    out = []
    for line in text.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        name = ev.get("guest")
        when = dt.datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
        if ev.get("event") == "bhyve_exited" and "exit 0" in str(ev.get("status")):
            exited[name] = when
        elif ev.get("event") == "guest_started" and name in exited:
            out.append((when - exited.pop(name)) * 1000)
    return out


_SD_LINE = re.compile(r"^(\S+ \S+) \w+ (exited|spawned): '?([\w-]+)'?")


def _intervals_supervisord(text: str) -> list[float]:
    exited: dict[str, float] = {}
    out = []
    for line in text.splitlines():
        m = _SD_LINE.match(line)
        if not m:
            continue
        when = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        what, name = m.group(2), m.group(3)
        if what == "exited" and "exit status 0" in line:
            exited[name] = when
        elif what == "spawned" and name in exited:
            out.append((when - exited.pop(name)) * 1000)
    return out


def _peer(reboots: int, guests: int) -> list[float]:
    with temp_root("bench-reboot-sd-") as d:
        sim = SimHost(d / "host")
        names = sim.define_files(guests, prefix="r", autostart=False)
        programs = {n: sim.bhyve_argv(n) for n in names}
        sd = Supervisord(d, programs, autorestart="true", loglevel="info")
        try:
            sd.wait_socket()
            rpc = sd.rpc()
            wait_for(
                "programs running",
                lambda: all(p["statename"] == "RUNNING" for p in rpc.getAllProcessInfo()),
                120,
            )
            for name in names:
                # Type on the nmdm B side, as a console user would under supervisord.
                b_path = sim.host.path(f"/dev/nmdm-{name}.1B")
                wait_for(f"{b_path}", lambda p=b_path: os.path.exists(p), 30)
                b = os.open(sim.host.path(f"/dev/nmdm-{name}.1B"), os.O_RDWR | os.O_NOCTTY)
                try:
                    prompt = f"{name}# ".encode()

                    def read(fd: int = b) -> bytes:
                        return os.read(fd, 65536)

                    os.write(b, b"\r")
                    _read_until(read, prompt, 30)
                    for _ in range(reboots):
                        time.sleep(0.25)
                        os.write(b, b"reboot\r")
                        _read_until(read, b"boot", 30)
                        _read_until(read, prompt, 30)
                finally:
                    os.close(b)
            rpc.stopAllProcesses()
            return _intervals_supervisord((d / "supervisord.log").read_text())
        finally:
            sd.stop()
            sim.teardown()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    reboots, guests = (4, 2) if args.quick else (20, 5)
    ours = _ours(reboots, guests)
    peer = _peer(reboots, guests) if os.path.exists(SUPERVISORD) else []
    if not ours:
        return [report("reboot.turnaround_p50", None, "ms")]
    sd = "supervisord exited->spawned"
    return [
        report("reboot.count", len(ours), "reboots"),
        report(
            "reboot.turnaround_p50",
            percentile(ours, 50),
            "ms",
            peer=percentile(peer, 50) if peer else None,
            peer_name=sd,
            target="< 10 ms",
        ),
        report(
            "reboot.turnaround_p99",
            percentile(ours, 99),
            "ms",
            peer=percentile(peer, 99) if peer else None,
            peer_name=sd,
        ),
    ]


if __name__ == "__main__":
    main()
