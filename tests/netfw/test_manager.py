"""Network start and stop on a simulated host, with pf and with ipfw: bridges, rules,
forwarding, and what is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from supervisor.config import NetworkSection
from supervisor.errors import HostNotReadyError, HostToolError, InvalidStateError
from supervisor.host import Host
from supervisor.netfw.manager import NetworkManager
from supervisor.vmm.hostexec import run_tool
from supervisor.vmm.sim import hardware, ifconfig, install, ipfw, pfctl, teardown
from supervisor.vmm.sim.hardware import DEFAULT_KLDS


def net_xml(name: str, bridge: str, subnet: int, forward: str = "<forward mode='nat'/>") -> str:
    return (
        f"<network><name>{name}</name>{forward}<bridge name='{bridge}'/>"
        f"<ip address='10.{subnet}.0.1' prefix='24'/></network>"
    )


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    root = str(tmp_path / "h")
    h = install(root, klds=(*DEFAULT_KLDS, "pf.ko", "ipfw.ko"))
    try:
        yield h
    finally:
        teardown(root)


async def manager_for(host: Host, nursery: trio.Nursery, **config: object) -> NetworkManager:
    section = NetworkSection(external_interface="igb0", **config)  # type: ignore[arg-type]
    m = NetworkManager(host, section, "/var/run/bhyvesupd", "/var/log/bhyvesupd")
    await nursery.start(m.run)
    return m


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def test_pf_network_start_and_stop(host: Host, nursery: trio.Nursery) -> None:
    m = await manager_for(host, nursery)
    m.define(net_xml("a", "bridge3", 30))
    m.define(net_xml("iso", "vmiso0", 31, forward=""))
    await m.start("a")
    await m.start("iso")
    await m.start("a")  # idempotent
    ifs = ifconfig.interfaces(host.root)
    assert ifs["bridge3"]["inet"] == [["10.30.0.1", 24]]
    assert ifs["bridge3"]["up"]
    assert ifs["vmiso0"]["description"] == "bhyvesupd network iso"
    assert list(pfctl.anchors(host.root)) == ["bhyvesupd/a"]  # an isolated network: no NAT
    assert hardware.load(host.root).sysctl["net.inet.ip.forwarding"] == 1

    # A guest's tap on the bridge: stopping is refused.
    await run_tool(host, ["ifconfig", "tap0", "create"], check=True)
    await run_tool(host, ["ifconfig", "bridge3", "addm", "tap0"], check=True)
    with pytest.raises(InvalidStateError, match=r"guests are attached to bridge3 \(tap0\)"):
        await m.stop("a")
    await run_tool(host, ["ifconfig", "bridge3", "deletem", "tap0"], check=True)
    await m.stop("a")
    assert "bridge3" not in ifconfig.interfaces(host.root)
    assert pfctl.anchors(host.root) == {}

    # Another daemon finds the network that was left active.
    again = NetworkManager(
        host,
        NetworkSection(external_interface="igb0"),
        "/var/run/bhyvesupd",
        "/var/log/bhyvesupd",
    )
    await nursery.start(again.run)
    assert again.active == {"iso"}


async def test_a_bridge_that_is_not_ours_is_refused(host: Host, nursery: trio.Nursery) -> None:
    m = await manager_for(host, nursery)
    m.define(net_xml("a", "bridge0", 30))  # the host's own switch
    with pytest.raises(HostNotReadyError) as e:
        await m.start("a")
    assert e.value.field == "bridge.name"
    assert "a" not in m.active


async def test_ipfw_rebuilds_the_daemons_set(host: Host, nursery: trio.Nursery) -> None:
    await run_tool(host, ["ipfw", "-q", "add", "500", "allow", "ip", "from", "any", "to", "any"])
    m = await manager_for(host, nursery, firewall="ipfw")
    m.define(net_xml("a", "vma0", 30))
    m.define(net_xml("b", "vmb0", 40, forward="<forward mode='nat' dev='em1'/>"))
    await m.start("a")
    await m.start("b")
    state = ipfw.state_of(host.root)
    assert [(r["number"], r["set"], r["body"]) for r in state["rules"]] == [
        (500, 0, "allow ip from any to any"),  # the user's rule, untouched
        (10000, 7, "nat 100 ip4 from 10.30.0.0/24 to any out via igb0"),
        (10010, 7, "nat 101 ip4 from 10.40.0.0/24 to any out via em1"),
        (10020, 7, "nat 100 ip4 from any to me in via igb0"),
        (10030, 7, "nat 101 ip4 from any to me in via em1"),
    ]
    assert set(state["nat"]) == {"100", "101"}
    await m.stop("b")
    state = ipfw.state_of(host.root)
    assert [r["number"] for r in state["rules"]] == [500, 10000, 10010]
    assert set(state["nat"]) == {"100"}


async def test_nat_needs_an_external_interface(host: Host, nursery: trio.Nursery) -> None:
    m = NetworkManager(host, NetworkSection(), "/var/run/bhyvesupd", "/var/log/bhyvesupd")
    await nursery.start(m.run)
    m.define(net_xml("a", "vma0", 30))
    with pytest.raises(HostNotReadyError) as e:
        await m.start("a")
    assert e.value.field == "forward.dev"


async def test_a_failed_start_leaves_no_bridge(tmp_path: Path, nursery: trio.Nursery) -> None:
    root = str(tmp_path / "nopf")
    host = install(root)  # pf.ko is not loaded
    try:
        m = await manager_for(host, nursery)
        m.define(net_xml("a", "vma0", 30))
        with pytest.raises(HostToolError, match="/dev/pf"):
            await m.start("a")
        assert "vma0" not in ifconfig.interfaces(root)
        assert m.active == set()
    finally:
        teardown(root)
