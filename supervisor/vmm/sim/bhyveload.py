"""The simulated ``bhyveload(8)``: create (or re-initialise) a VM and "load a kernel".

Follows bhyveload's ``main()``: options are checked as getopt meets them (a ``-c``
or ``-d`` that cannot be opened is ``Could not open 'PATH'``, exit 64), then
``vm_create()`` — an existing VM is reused and re-initialised, which fails with
``vm_reinit: Device busy`` while its vCPUs are not all suspended — then guest memory
(``vm_setup_memory: Invalid argument`` for a size that differs from the VM's), then
the loader prints on its console and exits 0. The VM is left ready for a bhyve
without a bootrom. :func:`load` is shared with the grub-bhyve stand-in.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import termios
import tty
from collections.abc import Sequence

from supervisor.errors import SupervisorError
from supervisor.host import Host
from supervisor.vmm.bhyveopts import BhyveCommandError, parse_bhyveload_argv
from supervisor.vmm.sim import bsd, hardware
from supervisor.vmm.sim.host import ROOTED
from supervisor.vmm.sim.kernel import Kernel

EX_USAGE = 64
#: Where the loaded "kernel" leaves its mark in guest memory.
KERNEL_GPA = 0x200000


class LoaderExit(Exception):
    """The loader stops with *status* after printing *message* on standard error."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def open_console(root: str, host: Host, path: str) -> int:
    """Open a loader console tty as bhyveload does (creating an nmdm pair on lookup).

    Raises:
        OSError: it cannot be opened or is not a tty.
    """
    if os.path.basename(path).startswith("nmdm"):
        try:
            from supervisor.vmm.sim import nmdm

            nmdm.ensure_pair(root, path)
        except (ImportError, SupervisorError):
            pass
    fd = os.open(host.path(path), os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
    if not os.isatty(fd):
        os.close(fd)
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
    tty.setraw(fd)
    mode = termios.tcgetattr(fd)
    mode[2] |= termios.CLOCAL
    termios.tcsetattr(fd, termios.TCSANOW, mode)
    return fd


def load(
    root: str,
    name: str,
    memsize: int,
    *,
    wired: bool,
    console: int,
    banner: bytes,
) -> None:
    """Create or re-initialise VM *name*, set up its memory and print *banner*.

    Raises:
        LoaderExit: as the loader fails (``vm_create``, ``vm_reinit``,
            ``vm_setup_memory`` errors, exit 1).
    """
    hw = hardware.load(root)
    kernel = Kernel(root, hw)
    need_reinit = False
    try:
        kernel.create(name)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise LoaderExit(1, f"vm_create: {bsd.strerror(e.errno or 0)}\n") from None
        need_reinit = True
    if need_reinit:
        try:
            kernel.reinit(name)
        except OSError as e:
            raise LoaderExit(1, f"vm_reinit: {bsd.strerror(e.errno or 0)}\n") from None
    try:
        kernel.setup_memory(name, memsize, wired=wired)
    except OSError as e:
        raise LoaderExit(1, f"vm_setup_memory: {bsd.strerror(e.errno or 0)}\n") from None
    fd = os.open(kernel.device_path(name), os.O_WRONLY)
    try:
        os.pwrite(fd, f"BHYVESIM-KERNEL:{name}".encode(), KERNEL_GPA)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):  # nobody reads the console: carry on
        os.write(console, banner)


def run(root: str, argv: Sequence[str]) -> int:
    """Run ``bhyveload ARGV`` on the simulated host at *root*."""
    host = Host(root=root, rooted=ROOTED)
    try:
        cmd = parse_bhyveload_argv(argv)
    except BhyveCommandError as e:
        sys.stderr.write(e.stderr)
        return e.exit_status
    prog = os.path.basename(argv[0]) or "bhyveload"
    console = sys.stdout.fileno()
    try:
        # getopt order: the console and disks are opened while options are read.
        if cmd.console is not None:
            try:
                console = open_console(root, host, cmd.console)
            except OSError:
                raise LoaderExit(EX_USAGE, f"{prog}: Could not open '{cmd.console}'\n") from None
        for disk in cmd.disks:
            try:
                os.close(os.open(host.path(disk), os.O_RDWR))
            except OSError:
                raise LoaderExit(EX_USAGE, f"{prog}: Could not open '{disk}'\n") from None
        banner = (
            f"Consoles: userboot\r\n\r\nBHYVESIM loader for {cmd.vmname}\r\n"
            f"Loading /boot/kernel/kernel...\r\nBooting...\r\n"
        ).encode()
        loader = cmd.loader or "/boot/userboot.so"
        load(root, cmd.vmname, cmd.memsize, wired=cmd.wired, console=console, banner=b"")
        if not os.path.exists(host.path(loader)):
            sys.stdout.write(f'Cannot open "{loader}"\n')
            return 1
        with contextlib.suppress(OSError):
            os.write(console, banner)
    except LoaderExit as e:
        sys.stdout.flush()
        sys.stderr.write(e.message)
        return e.status
    return 0


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the installed ``/usr/sbin/bhyveload`` of the simulated host."""
    return run(root, argv)
