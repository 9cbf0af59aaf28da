"""A guest's console pair: bhyve holds one end, the supervisor the other.

On FreeBSD the pair is nmdm(4): bhyve is given ``-l com1,/dev/nmdm<X>A`` and the
supervisor opens ``/dev/nmdm<X>B``; devfs creates both nodes on the first lookup. On
the simulated host there is no devfs clone handler, so the pair must be asked for
first. :func:`ensure_pair` does whatever the host needs, :func:`open_console` opens the
supervisor's end the same way on both; a long-lived user (the daemon) wraps its life
in :func:`session` so that the simulated host's requests share one connection.

The implementation is chosen once, here, from whether the host is rooted (simulated)
and from the OS; nothing else in the supervisor asks.
"""

from __future__ import annotations

import os
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from supervisor.errors import HostNotReadyError, InvalidValueError, UnsupportedError
from supervisor.host import Host
from supervisor.vmm.platform._nmdm import NmdmPath as NmdmPath
from supervisor.vmm.platform._nmdm import make_raw
from supervisor.vmm.platform._nmdm import parse_nmdm_path as parse_nmdm_path

_EnsurePair = Callable[[Host, NmdmPath], Awaitable[None]]
_EnsurePairs = Callable[[Host, list[NmdmPath]], Awaitable[None]]
_Session = Callable[[Host], AbstractAsyncContextManager[None]]

#: How a real (unrooted) host and a simulated (rooted) host make a pair on this OS;
#: None where that kind of host cannot exist here.
_REAL: _EnsurePair | None = None
_ROOTED: _EnsurePair | None = None
_ROOTED_MANY: _EnsurePairs | None = None
_ROOTED_SESSION: _Session | None = None

if sys.platform.startswith("freebsd"):
    from supervisor.vmm.platform import _nmdm_freebsd

    _REAL = _nmdm_freebsd.ensure_pair
elif sys.platform == "linux":
    from supervisor.vmm.platform import _nmdm_sim

    _ROOTED = _nmdm_sim.ensure_pair
    _ROOTED_MANY = _nmdm_sim.ensure_pairs
    _ROOTED_SESSION = _nmdm_sim.session

#: How the supervisor opens its end: never our controlling tty, never blocking.
OPEN_FLAGS = os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC


async def ensure_pair(host: Host, b_path: str) -> None:
    """Make sure the console pair that *b_path* belongs to can be opened on *host*.

    Call it before bhyve starts and before :func:`open_console`. On FreeBSD it only
    checks the name; on the simulated host it creates the pair.

    Args:
        host: the host the guest runs on.
        b_path: the FreeBSD path of the supervisor's end, ``/dev/nmdm<X>B``.

    Raises:
        InvalidValueError: *b_path* is not an nmdm path.
        UnsupportedError: this kind of host has no console pairs on this OS.
        HostNotReadyError: the simulated host's relay did not answer.
    """
    end = parse_nmdm_path(b_path)
    make_pair = _ROOTED if host.is_rooted else _REAL
    if make_pair is None:
        kind = f"a simulated host (root {host.root})" if host.is_rooted else "this host"
        raise UnsupportedError(
            f"console pair {b_path}: nmdm pairs are not available on {kind} under {sys.platform}"
        )
    await make_pair(host, end)


async def ensure_pairs(host: Host, b_paths: list[str]) -> None:
    """Prepare many pairs ahead of their guests' starts, as far as this host can.

    Nothing on FreeBSD (see :func:`ensure_pair`). Within a :func:`session` on the
    simulated host, one request to the relay makes them all, and each guest's own
    :func:`ensure_pair` then asks nothing. Never raises for a pair: what could not be
    made here is made, or reported, by that guest's :func:`ensure_pair`.

    Raises:
        HostNotReadyError: the simulated host's relay did not answer in time.
    """
    if not host.is_rooted or _ROOTED_MANY is None:
        return
    ends = []
    for path in b_paths:
        try:
            ends.append(parse_nmdm_path(path))
        except InvalidValueError:
            continue
    await _ROOTED_MANY(host, ends)


@asynccontextmanager
async def session(host: Host) -> AsyncIterator[None]:
    """Within it, :func:`ensure_pair` calls for *host* in this trio run share what they
    can: on the simulated host, one connection to the relay. Nothing on FreeBSD."""
    if host.is_rooted and _ROOTED_SESSION is not None:
        async with _ROOTED_SESSION(host):
            yield
    else:
        yield


def open_console(host: Host, b_path: str) -> int:
    """Open the supervisor's end of a console pair and return its descriptor.

    The end is opened read-write, non-blocking and without becoming a controlling
    tty, then put in raw mode with CLOCAL set, so that bhyve closing its end never
    turns ours into a hung-up tty that reads only EOF. The caller owns the descriptor
    (wrap it in :class:`trio.lowlevel.FdStream`).

    Raises:
        InvalidValueError: *b_path* is not an nmdm path.
        HostNotReadyError: the node does not exist (nmdm.ko not loaded, or the
            simulated pair was not ensured) or is not a terminal.
    """
    end = parse_nmdm_path(b_path)
    try:
        fd = os.open(host.path(end.path), OPEN_FLAGS)
    except FileNotFoundError:
        raise HostNotReadyError(
            f"console {b_path}: no such device (is nmdm.ko loaded? kldload nmdm)",
            field="console",
        ) from None
    try:
        # tcgetattr is also the terminal check (ENOTTY): no isatty() call of its own.
        make_raw(fd, clocal=True)
    except termios.error:
        os.close(fd)
        raise HostNotReadyError(f"console {b_path}: not a terminal", field="console") from None
    except BaseException:
        os.close(fd)
        raise
    return fd
