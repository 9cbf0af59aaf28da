"""Watching a process that is not our child on FreeBSD: kqueue ``EVFILT_PROC``.

``NOTE_EXIT`` fires for any process we may see, child or not, and its ``data`` is the
wait(2) status, so an adopted bhyve's outcome is known exactly. The one gap is a
process that has already been reaped when we look: kevent() then fails with ESRCH
and the status is gone with it.
"""

from __future__ import annotations

import contextlib
import select
import subprocess
import sys
from typing import cast

import trio

from supervisor.host import Host
from supervisor.vmm.platform._exitstatus import (
    UNKNOWN,
    ExitInfo,
    decode_wait_status,
    find_ps_bhyve,
    parse_ps_identity,
)

assert sys.platform != "linux"
assert sys.platform != "win32"

# Some Python builds lack the constant; its value is the same on every BSD.
_NOTE_EXIT: int = getattr(select, "KQ_NOTE_EXIT", 0x80000000)


def _event(pid: int, flags: int) -> select.kevent:
    return select.kevent(pid, filter=select.KQ_FILTER_PROC, flags=flags, fflags=_NOTE_EXIT)


async def wait_for_exit(host: Host, pid: int) -> ExitInfo:
    event = await _note_exit(pid)
    if event is None:
        # Already reaped: its status went to whoever reaped it, so nobody here can say
        # how it ended.
        return UNKNOWN
    return decode_wait_status(event.data)


async def wait_ended(pid: int) -> None:
    """Return once our child *pid* has ended; the caller reaps it with ``waitpid``.

    A child that has ended already is a zombie: kevent() may then refuse the
    registration (ESRCH), which says the same thing.
    """
    await _note_exit(pid)


async def _note_exit(pid: int) -> select.kevent | None:
    """The ``NOTE_EXIT`` event of *pid* once it has ended (its ``data`` is the wait
    status), or None at once when kevent() finds no such process (ESRCH)."""
    kqueue = trio.lowlevel.current_kqueue()
    try:
        kqueue.control([_event(pid, select.KQ_EV_ADD | select.KQ_EV_ONESHOT)], 0)
    except ProcessLookupError:
        return None

    def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        with contextlib.suppress(ProcessLookupError):
            kqueue.control([_event(pid, select.KQ_EV_DELETE)], 0)
        return trio.lowlevel.Abort.SUCCEEDED

    # trio wakes the task with the kevent itself, though it annotates the result as Abort.
    return cast("select.kevent", await trio.lowlevel.wait_kevent(pid, select.KQ_FILTER_PROC, abort))


def is_zombie(pid: int) -> bool:
    # init reaps orphans at once on FreeBSD; a zombie is a moment, not a state to
    # report.
    return False


async def process_title(host: Host, pid: int) -> str | None:
    identity = await process_identity(host, pid)
    return None if identity is None else identity[1]


async def process_identity(host: Host, pid: int) -> tuple[str, str] | None:
    result = await trio.run_process(
        [host.tool("ps"), "-ww", "-o", "comm=", "-o", "args=", "-p", str(pid)],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    return parse_ps_identity(result.stdout.decode("utf-8", "surrogateescape"))


async def find_bhyves(host: Host, name: str) -> list[int]:
    # Processes are per host here: one ps of every process says it.
    result = await trio.run_process(
        [host.tool("ps"), "-ax", "-ww", "-o", "pid=", "-o", "comm=", "-o", "args="],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0:
        return []
    return find_ps_bhyve(result.stdout.decode("utf-8", "surrogateescape"), name)
