"""Console pairs on the simulated host: the relay of :mod:`supervisor.vmm.sim.nmdm`.

This is the one place in the supervisor that knows the simulator exists: the
simulated host has no devfs to create a pair on lookup, so the pair is asked for
before anything opens it.

On FreeBSD the pair costs the daemon one open(2); here it costs a request to the
relay. The request is made from the event loop (a connect, one line each way) so that
a guest start does not also cost a worker thread; only when no relay answers yet is
the blocking client used, in a thread, to start one. Within a :func:`session` (the
daemon's lifetime) the requests share one connection: connecting and closing a
socket per guest was most of what a pair cost the daemon.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from supervisor._triosock import open_unix
from supervisor.errors import HostNotReadyError, SupervisorError
from supervisor.host import Host
from supervisor.vmm.platform._nmdm import NmdmPath
from supervisor.vmm.sim import nmdm

#: The open sessions of this trio run: the simulated host's root -> its link.
_LINKS: trio.lowlevel.RunVar[dict[str, _Link]] = trio.lowlevel.RunVar("nmdm_sim_links")


class _Link:
    """One connection to a relay, shared by the requests of a session.

    Requests are combined: those made while an exchange is under way queue up, and the
    next task to take the link sends them all at once and reads their answers (the
    relay answers a connection's requests in order). Guests starting together cost
    one round trip, not one each.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.sock: trio.socket.SocketType | None = None
        self.lock = trio.Lock()
        self.queue: list[_Ask] = []
        #: Pairs (``nmdm0``) the relay made or found on this connection's requests.
        self.made: set[str] = set()

    async def ask(self, request: dict[str, str]) -> bytes | None:
        """The relay's answer line, or None when this link cannot be used (no relay
        runs, or the one it knew has gone): ask the way a lone request does."""
        return (await self.ask_all([request]))[0]

    async def ask_all(self, requests: list[dict[str, str]]) -> list[bytes | None]:
        """The relay's answer lines to *requests*, in order (see :meth:`ask`)."""
        mine = [_Ask(r) for r in requests]
        # Queued together, with no checkpoint between: one exchange takes all of them.
        self.queue.extend(mine)
        async with self.lock:
            if mine[0].answered:
                return [a.line for a in mine]
            batch, self.queue = self.queue, []
            lines: list[bytes] = []
            try:
                if self.sock is None:
                    self.sock = await _connect(self.root)
                    if self.sock is None:
                        # No relay yet: the host's first pair. It is started once, here,
                        # while the requests behind wait for this link, instead of each
                        # of a burst of starting guests finding no relay and starting
                        # one from a thread of its own.
                        first = batch[0].request
                        await trio.to_thread.run_sync(nmdm.ensure_pair, self.root, first["path"])
                        self.sock = await _connect(self.root)
                if self.sock is not None:
                    with trio.fail_after(nmdm.REQUEST_TIMEOUT):
                        lines = await _exchange_all(self.sock, [a.request for a in batch])
            except OSError:
                pass
            except BaseException as exc:
                # Timed out, cancelled half-way, or no connection to be had: what the
                # relay sends next answers nobody, and the others ask another way.
                self.close()
                for a in batch:
                    a.answer(None)
                if isinstance(exc, trio.TooSlowError):
                    raise HostNotReadyError(
                        f"nmdm relay of {self.root}: no answer to {requests[0]['op']!r}: timed out"
                    ) from exc
                raise
            if len(lines) < len(batch):
                self.close()  # a relay that went away: the next request reconnects
            for i, a in enumerate(batch):
                a.answer(lines[i] if i < len(lines) else None)
            return [a.line for a in mine]

    def knows(self, host: Host, end: NmdmPath) -> bool:
        """Whether *end*'s pair was made on this link and its node still leads to it."""
        return end.pair in self.made and os.path.exists(host.path(end.path))

    def settle(self, request: dict[str, str], end: NmdmPath, line: bytes) -> None:
        """Read the relay's *line* in answer to ensuring *end*'s pair, and remember the
        pair as made.

        Raises:
            SupervisorError: the relay refused (see :func:`nmdm.decode_reply`).
        """
        nmdm.decode_reply(self.root, request, line)
        self.made.add(end.pair)

    def close(self) -> None:
        self.made.clear()  # a relay that restarts has none of the old pairs
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _Ask:
    """A request waiting for its answer (None: ask another way)."""

    __slots__ = ("answered", "line", "request")

    def __init__(self, request: dict[str, str]) -> None:
        self.request = request
        self.answered = False
        self.line: bytes | None = None

    def answer(self, line: bytes | None) -> None:
        self.answered = True
        self.line = line


@asynccontextmanager
async def session(host: Host) -> AsyncIterator[None]:
    """Share one relay connection among this run's requests for *host*'s pairs."""
    try:
        links = _LINKS.get()
    except LookupError:
        links = {}
        _LINKS.set(links)
    link = links.setdefault(host.root, _Link(host.root))
    try:
        yield
    finally:
        if links.get(host.root) is link:
            del links[host.root]
        link.close()


async def ensure_pair(host: Host, end: NmdmPath) -> None:
    """Have the simulated host's relay create the pair (starting the relay if needed)."""
    link = _LINKS.get({}).get(host.root)
    request = _ensure_request(end)
    if link is not None:
        if link.knows(host, end):
            return  # made in this session (see ensure_pairs)
        line = await link.ask(request)
        if line is not None:
            link.settle(request, end, line)
            return
    line = await _ask_running_relay(host.root, request)
    if line is None:
        # Blocking: it may start the relay process and waits for its answer.
        await trio.to_thread.run_sync(nmdm.ensure_pair, host.root, end.path)
        return
    nmdm.decode_reply(host.root, request, line)


async def ensure_pairs(host: Host, ends: list[NmdmPath]) -> None:
    """Have the relay create *ends*' pairs in one exchange, ahead of their guests'
    starts, whose own :func:`ensure_pair` then asks nothing. Within a :func:`session`
    only; a pair it could not make is left for that guest's own request to report."""
    link = _LINKS.get({}).get(host.root)
    if link is None or not ends:
        return
    requests = [_ensure_request(end) for end in ends]
    for end, request, line in zip(ends, requests, await link.ask_all(requests), strict=True):
        if line is None:
            return  # no relay, or it went away: each guest asks on its own
        with contextlib.suppress(SupervisorError):
            link.settle(request, end, line)


def _ensure_request(end: NmdmPath) -> dict[str, str]:
    return {"op": "ensure", "path": end.path}


async def _connect(root: str) -> trio.socket.SocketType | None:
    """A socket connected to *root*'s relay, or None when no relay listens.

    Raises:
        HostNotReadyError: the relay's queue stayed full for the request timeout.
    """
    dir_fd = nmdm.open_control_dir(root)
    if dir_fd is None:
        return None
    try:
        # A relay busy with many starts at once can have a full queue.
        with trio.fail_after(nmdm.REQUEST_TIMEOUT):
            return await open_unix(nmdm.control_address(dir_fd))
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except trio.TooSlowError as exc:
        raise HostNotReadyError(
            f"nmdm relay of {root}: accept queue full for {nmdm.REQUEST_TIMEOUT} s"
        ) from exc
    finally:
        os.close(dir_fd)


async def _exchange(sock: trio.socket.SocketType, request: dict[str, str]) -> bytes:
    """Send *request*; its answer line (short when the relay hung up)."""
    lines = await _exchange_all(sock, [request])
    return lines[0] if lines else b""


async def _exchange_all(
    sock: trio.socket.SocketType, requests: list[dict[str, str]]
) -> list[bytes]:
    """Send *requests* in one write; their answer lines, in order (fewer when the relay
    hung up first)."""
    data = b"".join(nmdm.encode_request(r) for r in requests)
    while data:
        data = data[await sock.send(data) :]
    lines: list[bytes] = []
    pending = b""
    while len(lines) < len(requests):
        chunk = await sock.recv(65536)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        lines.extend(line + b"\n" for line in complete)
    return lines


async def _ask_running_relay(root: str, request: dict[str, str]) -> bytes | None:
    """The relay's answer line to *request* over a connection of its own, or None
    when no relay listens."""
    sock = await _connect(root)
    if sock is None:
        return None
    with sock:
        try:
            with trio.fail_after(nmdm.REQUEST_TIMEOUT):
                return await _exchange(sock, request)
        except (OSError, trio.TooSlowError) as exc:
            raise HostNotReadyError(
                f"nmdm relay of {root}: no answer to {request['op']!r}: {exc or 'timed out'}"
            ) from exc
