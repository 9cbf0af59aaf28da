"""The simulated ``dnsmasq(8)`` of a simulated host: a DHCP server with no network.

The simulated host's bridges exist only in its ifconfig state, so a real dnsmasq could
not bind to them (the real one is exercised in network namespaces by the tests). This
stand-in checks what the real one checks before serving: options it knows, a readable
``--conf-file``, and every ``interface=`` present on the host (else ``dnsmasq: unknown
interface NAME``, status 2, as with ``bind-interfaces``). Then it writes its
pid file (``--pid-file`` or ``pid-file=``), stays in the foreground as
``--keep-in-foreground`` asks, re-reads its ``dhcp-hostsfile`` on SIGHUP and exits 0
on SIGTERM. It registers with the simulated host so teardown ends it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from supervisor.host import Host
from supervisor.vmm.sim import ifconfig, procs
from supervisor.vmm.sim.host import ROOTED


def check(root: str, args: Sequence[str], err: TextIO) -> tuple[int, str | None]:
    """Validate the command line and its configuration; (status, pid file)."""
    pid_file = None
    conf = None
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "--conf-file":
            conf = value
        elif key == "--pid-file":
            pid_file = value
        elif key not in ("--keep-in-foreground", "--no-daemon", "--test", "--log-facility"):
            err.write(f"dnsmasq: bad command line options: {arg}\n")
            return 1, None
    if conf is None:
        return 0, pid_file
    host = Host(root=root, rooted=ROOTED)
    try:
        with open(host.path(conf), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        err.write(f"dnsmasq: cannot read {conf}: {exc.strerror}\n")
        return 3, None
    present = ifconfig.interfaces(root)
    for line in lines:
        key, _, value = line.strip().partition("=")
        if key == "interface" and value not in present:
            err.write(f"dnsmasq: unknown interface {value}\n")
            return 2, None
        if key == "pid-file":
            pid_file = value
    return 0, pid_file


def _hosts_files(root: str, args: Sequence[str]) -> list[str]:
    conf = next((a.partition("=")[2] for a in args if a.startswith("--conf-file=")), None)
    if conf is None:
        return []
    with open(Host(root=root, rooted=ROOTED).path(conf), encoding="utf-8") as f:
        return [
            line.strip().partition("=")[2]
            for line in f
            if line.strip().startswith("dhcp-hostsfile=")
        ]


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the installed ``/usr/local/sbin/dnsmasq`` of the host at *root*."""
    status, pid_file = check(root, argv[1:], sys.stderr)
    if status != 0 or "--test" in argv:
        if status == 0:
            sys.stderr.write("dnsmasq: syntax check OK.\n")
        return status
    procs.register(root)
    try:
        if pid_file:
            with open(Host(root=root, rooted=ROOTED).path(pid_file), "w", encoding="ascii") as f:
                f.write(f"{os.getpid()}\n")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        hosts = _hosts_files(root, argv[1:])

        def reread(*_: object) -> None:
            # SIGHUP: dnsmasq re-reads its dhcp-hostsfile (and says so).
            for path in hosts:
                sys.stderr.write(f"dnsmasq-dhcp: read {path}\n")
            sys.stderr.flush()

        signal.signal(signal.SIGHUP, reread)
        sys.stderr.write("dnsmasq: started, version 2.90 (simulated)\n")
        sys.stderr.flush()
        while True:
            time.sleep(3600)
    finally:
        procs.unregister(root)
