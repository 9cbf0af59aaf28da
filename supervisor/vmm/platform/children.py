"""Long-lived children: bhyve and its loader, started and waited for from the event loop.

A guest's bhyve must outlive the daemon, so it is started in a session of its own
(a terminal's ^C or a signal to the daemon's process group never reaches it) with its
output going to a file (a pipe whose reader died would kill it with SIGPIPE).

It is started with ``posix_spawn(3)``: on FreeBSD and on glibc that is a vfork-style
spawn, which costs the same whatever the daemon's size, and it runs in the calling
thread. ``subprocess`` (what ``trio.lowlevel.open_process`` uses) builds a Popen object
and has trio hand it to a worker thread; for 500 guests starting at once those were a
fifth of the daemon's start-up CPU. The exit is then waited for without a thread as
well, the way the OS tells a parent that a child ended: kqueue ``EVFILT_PROC`` on
FreeBSD, a pidfd on Linux; ``waitpid`` then reaps it and gives the status.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from supervisor.errors import UnsupportedError

if sys.platform == "linux":
    from supervisor.vmm.platform._pidfd import wait_ended as _wait_ended
elif sys.platform != "win32":
    from supervisor.vmm.platform._kqueue import wait_ended as _wait_ended
else:  # pragma: no cover - the supervisor needs a Unix
    raise UnsupportedError(f"children: no way to watch processes on {sys.platform}")

#: Python ignores these at start-up and an exec keeps ignored signals ignored; a
#: child must get the defaults back, as subprocess's ``restore_signals`` does.
_RESTORE = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)

#: Whether this libc can put a spawned child in a new session (POSIX_SPAWN_SETSID is
#: an extension: glibc has it; a libc without it gets a process group of its own).
_setsid_supported = True


def spawn_detached(argv: Sequence[str], *, env: Mapping[str, str], output_fd: int) -> int:
    """Start ``argv`` as a child in a new session and return its pid.

    stdin is ``/dev/null``; stdout and stderr go to *output_fd*, which the caller keeps
    (and may close once this returns). Every other descriptor the daemon holds is
    close-on-exec (Python's default), so the child inherits none of them.

    Raises:
        OSError: the program could not be executed (its errno says why: ENOENT,
            EACCES, ...).
    """
    global _setsid_supported
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, output_fd, 1),
        (os.POSIX_SPAWN_DUP2, output_fd, 2),
    ]
    while True:
        # Without POSIX_SPAWN_SETSID, a process group of its own keeps the terminal's
        # signals away just the same: they go to the foreground group only.
        session: dict[str, Any] = {"setsid": True} if _setsid_supported else {"setpgroup": 0}
        try:
            return os.posix_spawn(
                argv[0], list(argv), env, file_actions=actions, setsigdef=_RESTORE, **session
            )
        except NotImplementedError:
            if not _setsid_supported:
                raise
            _setsid_supported = False


async def wait_child(pid: int) -> int:
    """Wait until our child *pid* ends, reap it and return its status in
    :mod:`subprocess`'s convention (the exit code, or minus the signal that killed it).

    Cancelling the wait leaves the child running and unreaped; a later call can still
    wait for it.
    """
    while True:
        await _wait_ended(pid)
        returncode = _reap(pid)
        if returncode is not None:
            return returncode
        # kqueue can refuse the registration of a process that is still exiting
        # (ESRCH) before waitpid sees it gone: give the kernel a moment, never a spin.
        await trio.sleep(0.001)


def _reap(pid: int) -> int | None:
    """The status of our ended child *pid*, reaping it; None while it still runs."""
    done, status = os.waitpid(pid, os.WNOHANG)
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


async def run_to_end(
    argv: Sequence[str], *, env: Mapping[str, str], output_fd: int, kill_after: float = 5.0
) -> int:
    """:func:`spawn_detached`, then :func:`wait_child`: a short program (a loader) run
    the same way as bhyve, in a session of its own.

    Unlike bhyve, a loader has no business outliving the launch that ran it: when the
    wait is cancelled the program gets SIGTERM, then SIGKILL after *kill_after*
    seconds, and is reaped before the cancellation goes on.

    Raises:
        OSError: the program could not be executed.
    """
    pid = spawn_detached(argv, env=env, output_fd=output_fd)
    try:
        return await wait_child(pid)
    except BaseException:
        with trio.CancelScope(shield=True):
            signal_quietly(pid, signal.SIGTERM)
            with trio.move_on_after(kill_after):
                await wait_child(pid)
                raise
            signal_quietly(pid, signal.SIGKILL)
            await wait_child(pid)
        raise


def signal_quietly(pid: int, signo: int) -> None:
    """Send *signo* to *pid*; a process already gone is no error."""
    try:
        os.kill(pid, signo)
    except ProcessLookupError:
        pass
