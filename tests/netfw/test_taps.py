"""The tap launch hook on a simulated host: taps created, joined, kept across reboots,
removed at the final stop; bridges never bounce; leftovers swept; names survive a
daemon restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.actors.guest import LaunchPlan
from supervisor.domain.xml import parse_domain_xml
from supervisor.errors import HostNotReadyError
from supervisor.host import Host
from supervisor.netfw.taps import TapHook, owned_taps
from supervisor.vmm.argv import build_commands
from supervisor.vmm.caps import DEFAULT
from supervisor.vmm.hostexec import run_tool
from supervisor.vmm.sim import ifconfig, install, teardown

RUN = "/var/run/bhyvesupd"


def domain_xml(name: str, bridges: tuple[str, ...]) -> str:
    nics = "".join(
        f"<interface type='bridge'><source bridge='{b}'/><model type='virtio'/></interface>"
        for b in bridges
    )
    return (
        f"<domain type='bhyve'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type><loader readonly='yes' type='pflash'>"
        "/usr/local/share/uefi-firmware/BHYVE_UEFI.fd</loader></os>"
        f"<devices>{nics}</devices></domain>"
    )


class NoNetworks:
    def bridge_for(self, network: str, field: str) -> str:
        raise HostNotReadyError(f"{field}: no network {network}", field=field)

    async def ensure_lease(self, network: str, mac: str, guest: str) -> None:
        raise AssertionError("no network NICs here")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    root = str(tmp_path / "h")
    h = install(root)
    try:
        yield h
    finally:
        teardown(root)


def plan_for(hook: TapHook, name: str, bridges: tuple[str, ...]) -> LaunchPlan:
    d = parse_domain_xml(domain_xml(name, bridges).encode())
    cmds = build_commands(d, DEFAULT, taps=hook.resolver(name))
    return LaunchPlan(loader=cmds.loader, bhyve=cmds.bhyve, domain=d)


async def test_taps_from_start_to_final_stop(host: Host) -> None:
    await run_tool(host, ["ifconfig", "bridge1", "create", "up"], check=True)
    await run_tool(host, ["ifconfig", "tap0", "create"], check=True)  # someone else's tap
    hook = TapHook(host, RUN, NoNetworks())
    await hook.sweep(lambda _: False)  # learns the host's interfaces; tap0 is not ours
    web = plan_for(hook, "web", ("bridge1", "bridge1"))
    db = plan_for(hook, "db", ("bridge1",))
    assert "virtio-net,tap1" in " ".join(web.bhyve)
    assert "virtio-net,tap2" in " ".join(web.bhyve)
    assert "virtio-net,tap3" in " ".join(db.bhyve)

    await hook.before_launch("web", web)
    await hook.before_launch("db", db)
    state = ifconfig.interfaces(host.root)
    assert state["bridge1"]["members"] == ["tap1", "tap2", "tap3"]
    assert state["tap1"]["description"] == "bhyvesupd guest web nic 0"
    assert state["tap1"]["up"]
    # A reboot launches again: nothing changes, nothing fails.
    await hook.before_launch("web", web)
    assert ifconfig.interfaces(host.root)["bridge1"]["members"] == ["tap1", "tap2", "tap3"]

    # Another daemon (a restart) reads the same names back.
    assert owned_taps(host, RUN, "web") == ("tap1", "tap2")
    again = TapHook(host, RUN, NoNetworks())
    assert "virtio-net,tap3" in " ".join(plan_for(again, "db", ("bridge1",)).bhyve)

    await hook.after_stop("web", web)
    await hook.after_stop("db", db)
    state = ifconfig.interfaces(host.root)
    assert set(state) == {"igb0", "lo0", "bridge0", "bridge1", "tap0"}
    assert state["bridge1"]["members"] == []
    # The bridge stayed up through the first addm and the last deletem.
    assert state["bridge1"]["up"]
    assert state["bridge1"]["link_changes"] == 1
    assert owned_taps(host, RUN, "web") == ()


async def test_a_missing_bridge_stops_the_launch_with_the_fix(host: Host) -> None:
    hook = TapHook(host, RUN, NoNetworks())
    plan = plan_for(hook, "web", ("nosuch0",))
    with pytest.raises(HostNotReadyError) as e:
        await hook.before_launch("web", plan)
    assert e.value.field == "devices.interface[0].source.bridge"
    assert "ifconfig bridge create name nosuch0" in str(e.value)


async def test_sweep_removes_leftovers_of_dead_guests_only(host: Host) -> None:
    await run_tool(host, ["ifconfig", "bridge1", "create", "up"], check=True)
    hook = TapHook(host, RUN, NoNetworks())
    for name in ("alive", "dead"):
        await hook.before_launch(name, plan_for(hook, name, ("bridge1",)))
    # The daemon dies (kill -9); a new one starts and sweeps.
    fresh = TapHook(host, RUN, NoNetworks())
    removed = await fresh.sweep(lambda guest: guest == "alive")
    assert removed == ["tap1"]
    state = ifconfig.interfaces(host.root)
    assert state["bridge1"]["members"] == ["tap0"]
    assert owned_taps(host, RUN, "alive") == ("tap0",)
    assert owned_taps(host, RUN, "dead") == ()
