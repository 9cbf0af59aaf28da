"""The simulated ``grub-bhyve``: read the device map, then load like bhyveload.

grub-bhyve (sysutils/grub2-bhyve) maps GRUB device names to host paths through a
``device.map`` of lines such as ``(hd0) /dev/zvol/tank/vm/disk0``, boots from the
``-r`` device and leaves the VM loaded for a bhyve without a bootrom, with the same
lifecycle as bhyveload. Errors are GRUB's ``error: ...`` lines with exit 1.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Sequence

from supervisor.host import Host
from supervisor.vmm.bhyveopts import (
    BhyveCommandError,
    BhyveEarlyExit,
    GrubBhyveCommand,
    parse_grub_bhyve_argv,
)
from supervisor.vmm.sim.bhyveload import LoaderExit, load, open_console
from supervisor.vmm.sim.host import ROOTED

_MAP_LINE = re.compile(r"^\s*\(([^)]+)\)\s+(\S+)\s*$")


def parse_device_map(text: str) -> dict[str, str]:
    """``(hd0) /path`` lines → ``{"hd0": "/path"}``; comments and blank lines skipped.

    Raises:
        ValueError: a line that is neither, naming its number.
    """
    devices: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _MAP_LINE.match(line)
        if match is None:
            raise ValueError(f"line {number}: not a device map line: {line.strip()!r}")
        devices[match.group(1)] = match.group(2)
    return devices


def _boot(root: str, host: Host, cmd: GrubBhyveCommand, prog: str) -> None:
    """Read the device map, open the console and load; raises :class:`LoaderExit`."""
    devices: dict[str, str] = {}
    if cmd.device_map is not None:
        try:
            with open(host.path(cmd.device_map), encoding="utf-8") as f:
                devices = parse_device_map(f.read())
        except OSError as e:
            raise LoaderExit(
                1, f"{prog}: error: cannot open `{cmd.device_map}': {e.strerror}.\n"
            ) from None
        except ValueError as e:
            raise LoaderExit(1, f"{prog}: error: {cmd.device_map}: {e}.\n") from None
    for path in devices.values():
        if not os.path.exists(host.path(path)):
            raise LoaderExit(1, f"{prog}: error: cannot open `{path}'.\n")
    disk = (cmd.root or "hd0").split(",", 1)[0]
    if disk not in devices and disk != "host":
        raise LoaderExit(1, f"{prog}: error: no such disk `{disk}'.\n")
    console = sys.stdout.fileno()
    if cmd.cons_dev is not None:
        try:
            console = open_console(root, host, cmd.cons_dev)
        except OSError as e:
            raise LoaderExit(
                1, f"{prog}: error: cannot open `{cmd.cons_dev}': {e.strerror}.\n"
            ) from None
    banner = (
        f"BHYVESIM grub for {cmd.vmname} from ({cmd.root or disk})\r\n"
        "Booting a command list\r\n\r\n"
    ).encode()
    load(root, cmd.vmname, cmd.memsize, wired=cmd.wired, console=console, banner=banner)


def run(root: str, argv: Sequence[str]) -> int:
    """Run ``grub-bhyve ARGV`` on the simulated host at *root*."""
    host = Host(root=root, rooted=ROOTED)
    try:
        cmd = parse_grub_bhyve_argv(argv)
    except BhyveEarlyExit as e:
        sys.stdout.write(e.stdout)
        sys.stderr.write(e.stderr)
        return e.exit_status
    except BhyveCommandError as e:
        sys.stderr.write(e.stderr)
        return e.exit_status
    prog = os.path.basename(argv[0]) or "grub-bhyve"
    try:
        _boot(root, host, cmd, prog)
    except LoaderExit as e:
        with contextlib.suppress(OSError):
            sys.stderr.write(e.message)
        return e.status
    return 0


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the installed ``/usr/local/sbin/grub-bhyve`` of the simulated host."""
    return run(root, argv)
