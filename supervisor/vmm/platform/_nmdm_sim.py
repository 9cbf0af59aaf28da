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

import trio

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
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    with sock:
        try:
            try:
                await sock.connect(nmdm.control_address(dir_fd))
            finally:
                os.close(dir_fd)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
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
