"""Watching a process that is not our child on Linux: a pidfd, and the simulated
bhyve's status file.

A pidfd tells that a process has ended but not how: only its parent learns the
status, and an adopted bhyve's parent is init. So the simulated bhyve writes its
outcome to ``/var/run/bhyvesim/<pid>.status`` just before it exits, and the watcher
reads (and removes) that file. No file means an end without a trace, such as SIGKILL:
the exit is unknown, as it would be on FreeBSD had the process been reaped first.
"""

from __future__ import annotations

import contextlib
import os

import trio

from supervisor.host import Host
from supervisor.vmm.platform._exitstatus import UNKNOWN, ExitInfo, is_bhyve_of, parse_status_text

#: Where the simulated bhyve leaves its outcome (a FreeBSD path of the simulated host).
STATUS_DIR = "/var/run/bhyvesim"


def status_path(pid: int) -> str:
    """The FreeBSD path of the status file of *pid*."""
    return f"{STATUS_DIR}/{pid}.status"


async def wait_for_exit(host: Host, pid: int) -> ExitInfo:
    await wait_ended(pid)
    return collect_status(host, pid)


async def wait_ended(pid: int) -> None:
    """Return once process *pid* has ended (at once when it is gone already).

    A child that ended stays a zombie until its parent reaps it, and its pidfd is
    readable from then on: the parent can wait here and reap with ``waitpid`` after.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        trio.lowlevel.notify_closing(pidfd)
        os.close(pidfd)


def collect_status(host: Host, pid: int) -> ExitInfo:
    """Read and remove the status file of *pid*; :data:`UNKNOWN` when there is none."""
    path = host.path(status_path(pid))
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return UNKNOWN
    # A pid is used again sooner or later; a file left behind would give the next
    # holder of this pid a status that is not its own.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return parse_status_text(text)


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The command name is in parentheses and may itself contain ") ".
    fields = stat.rpartition(b")")[2].split()
    return bool(fields) and fields[0] in (b"Z", b"X")


async def process_title(host: Host, pid: int) -> str | None:
    # procfs answers from memory: no need for a thread.
    return read_title(pid)


def read_title(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    title = cmdline.partition(b"\0")[0]
    return title.decode("utf-8", "surrogateescape") or None


def read_identity(pid: int) -> tuple[str, str] | None:
    """Process *pid*'s command name and arguments, as FreeBSD's ``ps -o comm= -o args=``
    gives them: the title once one is set (it overwrites the arguments), else the
    command line, its words separated by spaces."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            comm = f.read().rstrip(b"\n")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    args = b" ".join(part for part in cmdline.split(b"\0") if part)
    if not args:
        return None
    return comm.decode("utf-8", "surrogateescape"), args.decode("utf-8", "surrogateescape")


async def process_identity(host: Host, pid: int) -> tuple[str, str] | None:
    return read_identity(pid)


async def find_bhyves(host: Host, name: str) -> list[int]:
    # One machine here may carry several simulated hosts with guests of the same
    # name: a process counts for *host* only if it holds a file under its root (a
    # bhyve holds its log, its disks, its console end).
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        identity = read_identity(int(entry))
        if identity is not None and is_bhyve_of(*identity, name):
            pid = int(entry)
            if not host.is_rooted or _holds_file_under(pid, host.root):
                found.append(pid)
    return sorted(found)


def _holds_file_under(pid: int, root: str) -> bool:
    prefix = os.path.join(os.path.realpath(root), "")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False
