"""Console pairs on FreeBSD: nmdm(4) itself."""

from __future__ import annotations

from supervisor.host import Host
from supervisor.vmm.platform._nmdm import NmdmPath


async def ensure_pair(host: Host, end: NmdmPath) -> None:
    """Nothing to do: devfs creates both ends on the lookup that opening one makes.

    A ``stat()`` here would create the pair just as well, but so does bhyve's own
    open of the A end and ours of the B end, and a pair made by a mere lookup is never
    torn down (nmdm.c ``nmdm_clone()``), so an early lookup would only leave litter.
    """
