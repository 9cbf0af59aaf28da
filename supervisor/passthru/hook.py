"""The passthrough launch hook: a hostdev must be on ppt(4) and is given to one guest.

Before each launch of a guest with ``<hostdev>`` devices the hook reads ``pciconf -lv``
and refuses the start (:class:`~supervisor.errors.HostNotReadyError`, naming the field)
when a device is missing or not held by ppt, saying how to fix it: ``pptdevs`` in
/boot/loader.conf or ``devctl set driver -f pciD:B:S:F ppt``. It claims each device for
the guest until its final stop, so a second guest asking for the same device is refused.
bhyve needs the guest's memory wired for passthrough; the argv builder adds ``-S``
whenever a hostdev is present and the hook notes in the log that it did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from supervisor.actors.guest import LaunchPlan
from supervisor.domain.model import Domain
from supervisor.errors import HostNotReadyError, InvalidStateError
from supervisor.host import Host
from supervisor.log import get_logger
from supervisor.passthru.nodedev import find, selector_of
from supervisor.vmm import hostparse
from supervisor.vmm.hostexec import run_tool

log = get_logger("bhyvesupd.passthru")


def ppt_fix(selector: str, bsf: str) -> str:
    """How to give a device to ppt, in both ways FreeBSD offers."""
    return (
        f'add {bsf} to pptdevs="..." in /boot/loader.conf (with vmm_load="YES") and reboot, '
        f"or run: devctl set driver -f {selector} ppt"
    )


class PassthruHook:
    """Checks and claims each guest's passthrough devices (a LaunchHook)."""

    def __init__(
        self,
        host: Host,
        is_active: Callable[[str], bool] | None = None,
        running: Callable[[], Iterable[tuple[str, Domain]]] | None = None,
    ) -> None:
        self.host = host
        #: Whether a guest still runs; a claim of a guest that stopped is stale (its
        #: release may not have run yet when the next guest starts).
        self.is_active = is_active
        #: The guests running now (name, definition): a guest adopted after a daemon
        #: restart holds its devices without ever having passed through this hook.
        self.running = running
        #: ``pci0:B:S:F`` → the guest holding it.
        self.claims: dict[str, str] = {}

    def owner(self, selector: str) -> str | None:
        """The guest that holds the device *selector*, if any."""
        return self.claims.get(selector)

    def adopt(self, name: str, domain: Domain) -> None:
        """Record the devices of a running guest found after a daemon restart."""
        for hd in domain.hostdevs:
            self.claims[selector_of(hd.host)] = name

    @property
    def held(self) -> Mapping[str, str]:
        return dict(self.claims)

    async def before_launch(self, name: str, plan: LaunchPlan) -> None:
        domain = plan.domain
        if domain is None or not domain.hostdevs:
            return
        r = await run_tool(self.host, hostparse.pciconf_argv(), check=True, timeout=30)
        devices = hostparse.parse_pciconf(r.stdout)
        wanted: list[str] = []
        for i, hd in enumerate(domain.hostdevs):
            field = f"devices.hostdev[{i}].source.address"
            sel = selector_of(hd.host)
            bsf = f"{hd.host.bus}/{hd.host.slot}/{hd.host.function}"
            dev = find(devices, hd.host)
            if dev is None:
                raise HostNotReadyError(f"{field}: the host has no PCI device {sel}", field=field)
            if not dev.is_ppt:
                held = f"held by {dev.name}" if dev.driver else "not attached to ppt"
                raise HostNotReadyError(
                    f"{field}: {sel} is {held}, not ppt: {ppt_fix(sel, bsf)}", field=field
                )
            holder = self.claims.get(sel)
            if holder is not None and self.is_active is not None and not self.is_active(holder):
                holder = None
            if holder is None and self.running is not None:
                holder = next(
                    (
                        other
                        for other, d in self.running()
                        if other != name and any(selector_of(h.host) == sel for h in d.hostdevs)
                    ),
                    None,
                )
            if holder is not None and holder != name:
                raise InvalidStateError(
                    f"{field}: {sel} ({dev.name}) is given to running guest {holder!r}",
                    field=field,
                )
            wanted.append(sel)
        for sel in wanted:
            self.claims[sel] = name
        if "-S" in plan.bhyve and not domain.wired:
            log.info(
                "wired_memory_added",
                guest=name,
                devices=wanted,
                note="guest memory is wired (bhyve -S) because passthrough needs it",
            )

    async def after_stop(self, name: str, plan: LaunchPlan) -> None:
        devices = {selector_of(hd.host) for hd in (plan.domain.hostdevs if plan.domain else ())}
        for sel, holder in list(self.claims.items()):
            if sel not in devices:
                continue
            if holder == name:
                del self.claims[sel]
