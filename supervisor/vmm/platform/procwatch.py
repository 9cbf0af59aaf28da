"""Watching a bhyve that is not our child.

When the daemon restarts it adopts the guests that kept running; their bhyve
processes are now init's children, so ``waitpid()`` cannot see them. FreeBSD's
kqueue can (``EVFILT_PROC``/``NOTE_EXIT``, which even carries the exit status);
Linux has a pidfd for "it ended" and the simulated bhyve's status file for "how". One
implementation per OS, chosen here at import.

The outcome is an :class:`ExitInfo`; ``known=False`` means the process ended without
a trace, and the guest's actor must find out what happened from ``/dev/vmm`` and
bhyvectl instead.
"""

from __future__ import annotations

import os
import sys

from supervisor.errors import InvalidValueError, UnsupportedError
from supervisor.host import Host
from supervisor.vmm.platform._exitstatus import UNKNOWN as UNKNOWN
from supervisor.vmm.platform._exitstatus import ExitInfo as ExitInfo
from supervisor.vmm.platform._exitstatus import decode_wait_status as decode_wait_status
from supervisor.vmm.platform._exitstatus import find_ps_bhyve as find_ps_bhyve
from supervisor.vmm.platform._exitstatus import format_status_text as format_status_text
from supervisor.vmm.platform._exitstatus import is_bhyve_of as is_bhyve_of
from supervisor.vmm.platform._exitstatus import parse_ps_title as parse_ps_title
from supervisor.vmm.platform._exitstatus import parse_status_text as parse_status_text

if sys.platform == "linux":
    from supervisor.vmm.platform import _pidfd as _impl
    from supervisor.vmm.platform._pidfd import STATUS_DIR as STATUS_DIR
    from supervisor.vmm.platform._pidfd import status_path as status_path
elif sys.platform != "win32":
    from supervisor.vmm.platform import _kqueue as _impl
else:  # pragma: no cover - the supervisor needs a Unix
    raise UnsupportedError(f"procwatch: no way to watch processes on {sys.platform}")


def _check_pid(pid: int) -> None:
    # 0 and negative numbers mean process groups to kill(2); never a guest.
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise InvalidValueError(f"pid: must be an integer > 0, got {pid!r}", field="pid")


async def wait_for_exit(host: Host, pid: int) -> ExitInfo:
    """Wait until process *pid*, which need not be our child, has ended.

    Returns at once when it has already gone. Cancelling the wait leaves the process
    alone.

    Args:
        host: the host the process runs on (the simulated host keeps its status files
            under its root).
        pid: the process to watch.

    Returns:
        How it ended; ``known`` is False when that cannot be learnt (already reaped
        before the watch began; on the simulated host, killed without leaving a
        status file).

    Raises:
        InvalidValueError: *pid* is not a positive integer.
    """
    _check_pid(pid)
    return await _impl.wait_for_exit(host, pid)


def pid_alive(pid: int) -> bool:
    """Whether process *pid* exists and has not ended (a zombie has ended).

    Raises:
        InvalidValueError: *pid* is not a positive integer.
    """
    _check_pid(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; it is just not ours to signal
    return not _impl.is_zombie(pid)


async def process_title(host: Host, pid: int) -> str | None:
    """The title of process *pid* (``bhyve: web1`` once bhyve has set it), or None.

    This is argv[0] as the process left it: bhyve's setproctitle(3) replaces its
    arguments with the title. Early in its start-up bhyve still shows its original
    command (``/usr/sbin/bhyve`` here, the whole command line on FreeBSD, where
    ps(1) provides it).

    Returns:
        The title, or None when there is no such process or it has no arguments.

    Raises:
        InvalidValueError: *pid* is not a positive integer.
    """
    _check_pid(pid)
    return await _impl.process_title(host, pid)


async def is_bhyve(host: Host, pid: int, name: str) -> bool:
    """Whether process *pid* is the bhyve of the VM *name*: titled ``bhyve: NAME``, or
    still showing the command it was started with, in the window before bhyve sets its
    title (see :func:`is_bhyve_of`).

    Raises:
        InvalidValueError: *pid* is not a positive integer.
    """
    _check_pid(pid)
    identity = await _impl.process_identity(host, pid)
    return identity is not None and is_bhyve_of(*identity, name)


async def find_bhyve(host: Host, name: str) -> int | None:
    """The pid of the running bhyve of the VM *name* on *host* (see :func:`is_bhyve`),
    or None.

    For a guest whose pid file is gone while its VM exists: a bhyve found this way
    is taken over rather than its VM destroyed under it. A VM name is unique on a
    host, so at most one should match; when several do, none is chosen.
    """
    found = [pid for pid in await _impl.find_bhyves(host, name) if not _impl.is_zombie(pid)]
    return found[0] if len(found) == 1 else None
