"""A registry of the long-lived processes of one simulated host, for teardown.

A simulated bhyve renames itself (``bhyve: NAME``) and is often not a child of the
test that started it, so it cannot be found by command line or by ``wait``. Each one
registers its pid and kernel start time under ``ROOT/.simkernel/procs/``; teardown
kills exactly the registered processes whose start time still matches, never a
process that merely reused the pid.

A process registers itself first thing, but Python takes a while to get there, and
a host torn down just after its guests were launched would miss the late ones. So
teardown marks the host first (:func:`end`), and a process registering on a marked
host kills itself as teardown would have: a torn-down host stays down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from supervisor.vmm.sim.kernel import KERNEL_DIR


def _dir(root: str) -> str:
    return os.path.join(root, KERNEL_DIR, "procs")


def start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of *pid*, or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after it.
    fields = stat.rpartition(")")[2].split()
    return int(fields[19])


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return None


def _marker(root: str) -> str:
    return os.path.join(root, KERNEL_DIR, "torn-down")


def register(root: str, pid: int | None = None) -> None:
    """Record *pid* (default: this process) as a process of the host at *root*.

    This process, registering on a host that :func:`end` has torn down, is killed.
    """
    own = pid is None or pid == os.getpid()
    pid = os.getpid() if pid is None else pid
    os.makedirs(_dir(root), exist_ok=True)
    with open(os.path.join(_dir(root), str(pid)), "w", encoding="ascii") as f:
        f.write(f"{start_time(pid)}\n")
    # Registered first, checked second: teardown marks first and lists second, so a
    # process is either in its list or sees its mark.
    if own and os.path.exists(_marker(root)):
        unregister(root, pid)
        os.kill(pid, signal.SIGKILL)


def end(root: str, timeout: float = 5.0) -> list[int]:
    """Tear the host at *root* down for good: mark it, then :func:`kill_all`.

    Returns:
        the pids that were killed.
    """
    os.makedirs(os.path.dirname(_marker(root)), exist_ok=True)
    with open(_marker(root), "w", encoding="ascii"):
        pass
    return kill_all(root, timeout)


def unregister(root: str, pid: int | None = None) -> None:
    """Forget *pid* (default: this process)."""
    pid = os.getpid() if pid is None else pid
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(_dir(root), str(pid)))


def live(root: str) -> list[int]:
    """The registered processes of *root* that are still running."""
    out: list[int] = []
    if not os.path.isdir(_dir(root)):
        return out
    for entry in os.listdir(_dir(root)):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(os.path.join(_dir(root), entry), encoding="ascii") as f:
                recorded = f.read().strip()
        except FileNotFoundError:
            continue
        if recorded == str(start_time(pid)) and _state(pid) not in (None, "Z"):
            out.append(pid)
        else:
            unregister(root, pid)
    return sorted(out)


def kill_all(root: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL every live registered process of *root* and wait until they are gone.

    Returns:
        the pids that were killed.
    """
    pids = live(root)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        # Not necessarily our children: poll /proc until they are gone or zombies.
        while _state(pid) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.01)
        unregister(root, pid)
    return pids
