"""The simulated FreeBSD host: bhyve, bhyvectl, bhyveload, grub-bhyve, kldstat, sysctl.

:func:`install` lays out a FreeBSD host under a directory and puts simulated tools at
the FreeBSD paths of :data:`supervisor.host.TOOL_PATHS`; the supervisor runs them with
the very argv it gives a real host. They print FreeBSD's output shapes and exit codes
and share one simulated vmm kernel, so ``/dev/vmm/NAME`` lives from create to destroy
whatever happens to the bhyve process, as on FreeBSD. :func:`teardown` kills whatever
processes a test left running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor._lazy import lazy_attributes

if TYPE_CHECKING:
    from supervisor.vmm.sim.hardware import Hardware as Hardware
    from supervisor.vmm.sim.host import install as install
    from supervisor.vmm.sim.host import teardown as teardown

__all__ = ["Hardware", "install", "teardown"]

# Loaded on first use: the supervisor imports one module of this package (the nmdm
# relay's client) on every Linux start, and the whole simulator behind it on none.
_LAZY = {
    "Hardware": "supervisor.vmm.sim.hardware",
    "install": "supervisor.vmm.sim.host",
    "teardown": "supervisor.vmm.sim.host",
}


__getattr__ = lazy_attributes(__name__, _LAZY)
