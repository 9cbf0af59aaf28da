"""The passthrough launch hook on a simulated host: ppt required, one guest per
device, -S present, node device names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.actors.guest import LaunchPlan
from supervisor.domain.xml import parse_domain_xml
from supervisor.errors import HostNotReadyError, InvalidStateError
from supervisor.host import Host
from supervisor.passthru.hook import PassthruHook
from supervisor.passthru.nodedev import nodedev_name
from supervisor.vmm.argv import build_commands
from supervisor.vmm.caps import DEFAULT
from supervisor.vmm.hostexec import run_tool
from supervisor.vmm.hostparse import parse_pciconf
from supervisor.vmm.sim import install, teardown


def plan(name: str, bus: int) -> LaunchPlan:
    xml = (
        f"<domain type='bhyve'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type><loader readonly='yes' type='pflash'>"
        "/usr/local/share/uefi-firmware/BHYVE_UEFI.fd</loader></os><devices>"
        "<hostdev mode='subsystem' type='pci' managed='no'><source>"
        f"<address domain='0x0000' bus='{bus:#x}' slot='0x00' function='0x0'/>"
        "</source></hostdev></devices></domain>"
    )
    d = parse_domain_xml(xml.encode())
    cmds = build_commands(d, DEFAULT)
    return LaunchPlan(loader=cmds.loader, bhyve=cmds.bhyve, domain=d)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    root = str(tmp_path / "h")
    h = install(root)
    try:
        yield h
    finally:
        teardown(root)


async def test_a_device_must_be_on_ppt(host: Host) -> None:
    hook = PassthruHook(host)
    p = plan("web", 2)
    assert "-S" in p.bhyve
    assert "passthru,2/0/0" in " ".join(p.bhyve)
    with pytest.raises(HostNotReadyError) as e:
        await hook.before_launch("web", p)
    msg = str(e.value)
    assert e.value.field == "devices.hostdev[0].source.address"
    assert "pci0:2:0:0 is held by igb0, not ppt" in msg
    assert 'pptdevs="..." in /boot/loader.conf' in msg
    assert "devctl set driver -f pci0:2:0:0 ppt" in msg
    # The operator follows the advice; the start goes through.
    await run_tool(host, ["devctl", "set", "driver", "-f", "pci0:2:0:0", "ppt"], check=True)
    await hook.before_launch("web", p)
    assert hook.owner("pci0:2:0:0") == "web"


async def test_one_running_guest_per_device(host: Host) -> None:
    hook = PassthruHook(host)
    await hook.before_launch("a", plan("a", 6))
    await hook.before_launch("a", plan("a", 6))  # a reboot of the holder is fine
    with pytest.raises(InvalidStateError) as e:
        await hook.before_launch("b", plan("b", 6))
    assert "given to running guest 'a'" in str(e.value)
    await hook.after_stop("a", plan("a", 6))
    await hook.before_launch("b", plan("b", 6))
    assert hook.owner("pci0:6:0:0") == "b"


async def test_a_device_the_host_does_not_have(host: Host) -> None:
    with pytest.raises(HostNotReadyError, match="the host has no PCI device pci0:9:0:0"):
        await PassthruHook(host).before_launch("x", plan("x", 9))


async def test_node_device_names(host: Host) -> None:
    r = await run_tool(host, ["pciconf", "-lv"], check=True)
    names = [nodedev_name(d) for d in parse_pciconf(r.stdout)]
    assert names == [
        "pci_0000_00_00_0",
        "pci_0000_00_14_0",
        "pci_0000_00_1f_3",
        "pci_0000_02_00_0",
        "pci_0000_06_00_0",
    ]


async def test_a_device_of_an_adopted_guest_is_held(host: Host) -> None:
    # After a daemon restart, "a" runs (adopted) without having passed through the hook.
    running = [("a", plan("a", 6).domain)]
    hook = PassthruHook(host, running=lambda: [(n, d) for n, d in running if d is not None])
    with pytest.raises(InvalidStateError, match="given to running guest 'a'"):
        await hook.before_launch("b", plan("b", 6))
    running.clear()
    await hook.before_launch("b", plan("b", 6))
