"""Console pairs on the simulated host: the relay of :mod:`supervisor.vmm.sim.nmdm`.

This is the one place in the supervisor that knows the simulator exists: the
simulated host has no devfs to create a pair on lookup, so the pair is asked for
before anything opens it.
"""

from __future__ import annotations

import trio

from supervisor.host import Host
from supervisor.vmm.platform._nmdm import NmdmPath
from supervisor.vmm.sim import nmdm


async def ensure_pair(host: Host, end: NmdmPath) -> None:
    """Have the simulated host's relay create the pair (starting the relay if needed)."""
    # Blocking: it may start the relay process and waits for its answer.
    await trio.to_thread.run_sync(nmdm.ensure_pair, host.root, end.path)
