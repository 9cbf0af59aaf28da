"""Fixtures for the simulated host: an installed root that is always torn down."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.host import Host
from supervisor.vmm.sim import install, teardown

#: Processes and consoles a test started, reaped and closed when its host is torn down.
_STARTED: list[subprocess.Popen[str]] = []
_CONSOLES: list[Console] = []


@pytest.fixture
def sim_root(tmp_path: Path) -> Iterator[str]:
    """A directory for a simulated host; every process it started is killed afterwards."""
    root = str(tmp_path / "host")
    try:
        yield root
    finally:
        teardown(root)
        while _STARTED:
            proc = _STARTED.pop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=GUARD)
        while _CONSOLES:
            _CONSOLES.pop().close()


@pytest.fixture
def sim(sim_root: str) -> Host:
    """A default simulated FreeBSD 15.0 Intel host."""
    return install(sim_root)


def run(host: Host, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a simulated host tool the way the supervisor does: its path, then argv."""
    return subprocess.run(
        [host.tool(tool), *args], capture_output=True, text=True, timeout=30, check=False
    )


FIRMWARE = "/usr/local/share/uefi-firmware/BHYVE_UEFI.fd"
#: A guard against a hung test, never a measure of speed.
GUARD = 20.0


class Console:
    """The B end of a guest's nmdm console, as the supervisor opens it."""

    def __init__(self, host: Host, path: str) -> None:
        from supervisor.vmm.sim import nmdm

        nmdm.ensure_pair(host.root, path)
        self.fd = os.open(host.path(path), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.seen = b""
        _CONSOLES.append(self)

    def expect(self, text: bytes) -> bytes:
        """Read until *text* has appeared; returns everything read up to and with it."""
        deadline = time.monotonic() + GUARD
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} never came; got {self.seen!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096)
                except BlockingIOError:
                    pass
        upto = self.seen.index(text) + len(text)
        out, self.seen = self.seen[:upto], self.seen[upto:]
        return out

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def bhyve_argv(
    host: Host,
    name: str,
    *extra: str,
    cpus: int = 1,
    memory: str = "256M",
    bootrom: bool = True,
    console: bool = True,
) -> list[str]:
    """A typical UEFI guest's bhyve command line, as the supervisor builds it."""
    argv = [host.tool("bhyve"), "-c", str(cpus), "-m", memory, "-H", "-s", "0,hostbridge"]
    argv += [*extra, "-s", "31,lpc"]
    if console:
        argv += ["-l", f"com1,/dev/nmdm-{name}.1A"]
    if bootrom:
        argv += ["-l", f"bootrom,{FIRMWARE}"]
    return [*argv, name]


def start(host: Host, argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _STARTED.append(proc)
    return proc


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for a bhyve to end; its status (negative for a signal) and output."""
    out, err = proc.communicate(timeout=GUARD)
    return proc.returncode, out, err


def boot(host: Host, name: str, *extra: str, **kw: Any) -> tuple[subprocess.Popen[str], Console]:
    """Start a guest and wait for its prompt."""
    console = Console(host, f"/dev/nmdm-{name}.1B")
    proc = start(host, bhyve_argv(host, name, *extra, **kw))
    console.expect(f"{name}# ".encode())
    return proc, console


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll a state the simulated kernel exposes until it holds (a guard, not a timing)."""
    deadline = time.monotonic() + GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.02)


def status_file(host: Host, pid: int) -> str:
    with open(host.path(f"/var/run/bhyvesim/{pid}.status"), encoding="ascii") as f:
        return f.read().strip()
