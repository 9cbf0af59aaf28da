"""virtio-9p shares: checks before a guest starts.

bhyve opens each shared directory once at start-up (before entering Capsicum), so a
missing directory fails the whole start with a terse device error. The supervisor
checks first and names the share: the source must be an existing directory, and a
``<readonly/>`` share must reach bhyve as ``,ro``.
"""

from __future__ import annotations

import os

from supervisor.actors.guest import LaunchPlan
from supervisor.errors import InvalidValueError
from supervisor.host import Host


class NinePCheck:
    """A launch hook that refuses a start whose 9p shares bhyve could not open."""

    def __init__(self, host: Host) -> None:
        self.host = host

    async def before_launch(self, name: str, plan: LaunchPlan) -> None:
        if plan.domain is None or not plan.domain.filesystems:
            return
        # Only guests with shares need the argv parser: the daemon does not load it
        # for the others.
        from supervisor.vmm.bhyveopts import parse_bhyve_argv

        shares = {
            dev.options.get("sharename"): dev.options
            for dev in parse_bhyve_argv(list(plan.bhyve)).pci_devices()
            if dev.emulation == "virtio-9p"
        }
        for i, fs in enumerate(plan.domain.filesystems):
            field = f"devices.filesystem[{i}].source.dir"
            local = self.host.path(fs.source)
            if not os.path.isdir(local):
                what = "is not a directory" if os.path.exists(local) else "does not exist"
                raise InvalidValueError(
                    f"{field}: 9p share {fs.target!r}: {fs.source} {what}", field=field
                )
            opts = shares.get(fs.target)
            if opts is None or fs.readonly != ("ro" in opts):
                raise InvalidValueError(
                    f"devices.filesystem[{i}].readonly: share {fs.target!r} would not be "
                    f"{'read-only' if fs.readonly else 'writable'} in bhyve's command line",
                    field=f"devices.filesystem[{i}].readonly",
                )

    async def after_stop(self, name: str, plan: LaunchPlan) -> None:
        return None
