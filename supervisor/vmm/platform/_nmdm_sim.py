"""Console pairs on the simulated host: the relay of :mod:`supervisor.vmm.sim.nmdm`.

This is the one place in the supervisor that knows the simulator exists: the
simulated host has no devfs to create a pair on lookup, so the pair is asked for
before anything opens it.

On FreeBSD the pair costs the daemon one open(2); here it costs a request to the
relay. The request is made from the event loop (a connect, one line each way) so that
a guest start does not also cost a worker thread; only when no relay answers yet is
the blocking client used, in a thread, to start one.
"""

from __future__ import annotations

import os
import socket

import trio

from supervisor._sockutil import pause, try_connect
from supervisor.errors import HostNotReadyError
from supervisor.host import Host
from supervisor.vmm.platform._nmdm import NmdmPath
from supervisor.vmm.sim import nmdm


async def ensure_pair(host: Host, end: NmdmPath) -> None:
    """Have the simulated host's relay create the pair (starting the relay if needed)."""
    request = {"op": "ensure", "path": end.path}
    line = await _ask_running_relay(host.root, request)
    if line is None:
        # Blocking: it may start the relay process and waits for its answer.
        await trio.to_thread.run_sync(nmdm.ensure_pair, host.root, end.path)
        return
    nmdm.decode_reply(host.root, request, line)


async def _ask_running_relay(root: str, request: dict[str, str]) -> bytes | None:
    """The relay's answer line to *request*, or None when no relay listens."""
    dir_fd = nmdm.open_control_dir(root)
    if dir_fd is None:
        return None
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    raw.setblocking(False)
    with trio.socket.from_stdlib_socket(raw) as sock:
        try:
            with trio.fail_after(nmdm.REQUEST_TIMEOUT):
                try:
                    # A relay busy with many starts at once can have a full queue.
                    attempt = 0
                    while not try_connect(raw, nmdm.control_address(dir_fd)):
                        await trio.sleep(pause(attempt))
                        attempt += 1
                finally:
                    os.close(dir_fd)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except trio.TooSlowError as exc:
            raise HostNotReadyError(
                f"nmdm relay of {root}: accept queue full for {nmdm.REQUEST_TIMEOUT} s"
            ) from exc
        try:
            with trio.fail_after(nmdm.REQUEST_TIMEOUT):
                data = nmdm.encode_request(request)
                while data:
                    data = data[await sock.send(data) :]
                line = bytearray()
                while not line.endswith(b"\n"):
                    chunk = await sock.recv(4096)
                    if not chunk:
                        break
                    line += chunk
        except (OSError, trio.TooSlowError) as exc:
            raise HostNotReadyError(
                f"nmdm relay of {root}: no answer to {request['op']!r}: {exc or 'timed out'}"
            ) from exc
        return bytes(line)
