"""Host validation, PCI node devices and networks on the bus.

``connect.host_validate`` runs the host checks against the daemon's own host (real or
simulated); ``nodedev.list`` lists PCI functions from ``pciconf -lv``; ``network.*``
define, list, start and stop NAT networks; ``domain.interface_addresses`` reads the
DHCP leases of a guest's NICs (libvirt's ``domifaddr --source lease``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from supervisor._lazy import lazy_module
from supervisor.netfw.network import format_network_xml
from supervisor.passthru.nodedev import describe
from supervisor.rpc.dispatch import CallContext, Registry
from supervisor.vmm import hostparse
from supervisor.vmm.hostexec import run_tool

if TYPE_CHECKING:
    from supervisor.hostcheck import checks as hc
    from supervisor.hostcheck import probe
else:
    # Loaded by the first validation, not by every start of the daemon.
    hc = lazy_module("supervisor.hostcheck.checks")
    probe = lazy_module("supervisor.hostcheck.probe")

if TYPE_CHECKING:
    from supervisor.daemon import Daemon


def register(reg: Registry, daemon: Daemon) -> None:
    """Add the host and network methods, bound to *daemon*, to *reg*."""
    method = reg.method
    nets = daemon.networks

    @method("connect.host_validate", access="ro")
    async def host_validate(ctx: CallContext) -> dict[str, Any]:
        """Check the daemon's host for bhyve: one verdict per check, and the overall one."""
        c = daemon.config.network
        checks = await probe.validate(daemon.host, firewall=c.firewall, pf_anchor=c.pf_anchor)
        return {
            "result": hc.overall(checks).value,
            "checks": [x.to_dict() for x in checks],
        }

    @method("nodedev.list", access="ro")
    async def nodedev_list(ctx: CallContext, cap: Literal["pci"] = "pci") -> list[dict[str, Any]]:
        """The host's PCI functions (``pciconf -lv``), with the guest holding each."""
        r = await run_tool(daemon.host, hostparse.pciconf_argv(), check=True, timeout=30)
        out = []
        for dev in hostparse.parse_pciconf(r.stdout):
            d = describe(dev)
            d["guest"] = daemon.passthru.owner(dev.selector)
            out.append(d)
        return out

    @method("network.define", access="rw")
    async def network_define(ctx: CallContext, xml: str) -> dict[str, Any]:
        """Define a network from libvirt network XML (or replace its definition)."""
        return nets.info(nets.define(xml).name)

    @method("network.undefine", access="rw")
    async def network_undefine(ctx: CallContext, name: str) -> None:
        """Remove an inactive network's definition."""
        nets.undefine(name)

    @method("network.list", access="ro")
    async def network_list(ctx: CallContext) -> list[dict[str, Any]]:
        """Every network, sorted by name."""
        return [nets.info(n) for n in sorted(nets.networks)]

    @method("network.get_xml", access="ro")
    async def network_get_xml(ctx: CallContext, name: str) -> dict[str, Any]:
        """A network's definition as libvirt network XML."""
        return {"xml": format_network_xml(nets.get(name))}

    @method("network.start", access="rw")
    async def network_start(ctx: CallContext, name: str) -> dict[str, Any]:
        """Bring a network up: bridge, NAT rules, forwarding, dnsmasq."""
        return await nets.start(name)

    @method("network.stop", access="rw")
    async def network_stop(ctx: CallContext, name: str) -> dict[str, Any]:
        """Take a network down (refused while guests are attached)."""
        return await nets.stop(name)

    @method("network.dhcp_leases", access="ro")
    async def network_dhcp_leases(ctx: CallContext, name: str) -> list[dict[str, Any]]:
        """The leases the network's dnsmasq has handed out."""
        return [
            {"mac": x.mac, "ip": x.ip, "hostname": x.hostname, "expiry": x.expiry}
            for x in nets.leases(name)
        ]

    @method("domain.interface_addresses", access="ro")
    async def interface_addresses(
        ctx: CallContext,
        name: str | None = None,
        uuid: str | None = None,
        source: Literal["lease"] = "lease",
    ) -> list[dict[str, Any]]:
        """Each NIC's addresses from the DHCP leases of its network."""
        g = daemon.lookup(name, uuid)
        return nets.interface_addresses(g.domain, daemon.taps.table.get(g.domain.name, {}))
