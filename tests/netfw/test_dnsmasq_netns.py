"""The real dnsmasq, run and supervised by the network manager, serves a static lease
to a real DHCP client (busybox udhcpc) through a bridge and a veth pair.

Everything lives in two network namespaces this test creates and deletes: "srv" holds
the network's bridge (the host side) and dnsmasq, "guest" holds the other end of the
veth pair (the guest's NIC). Only namespace addresses are used; no interface of the
machine itself is created or touched (the veth pair is made inside "srv").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from supervisor.config import NetworkSection
from supervisor.domain.xml import parse_domain_xml
from supervisor.host import Host
from supervisor.netfw.manager import NetworkManager
from tests.conftest import require_real

MAC = "58:9c:fc:00:00:07"
NETWORK = """<network><name>natns</name><forward mode='nat' dev='eth0'/>
<bridge name='br0'/><ip address='10.77.0.1' prefix='24'>
<dhcp><range start='10.77.0.100' end='10.77.0.150'/></dhcp></ip></network>"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    have = all(shutil.which(t) for t in ("ip", "dnsmasq", "busybox")) and os.geteuid() == 0
    require_real(have, "root with ip (iproute2), dnsmasq and busybox")
    srv, guest = f"bhs-srv-{os.getpid()}", f"bhs-guest-{os.getpid()}"
    try:
        ip("netns", "add", srv)
        ip("netns", "add", guest)
        ip("-n", srv, "link", "add", "br0", "type", "bridge")
        ip("-n", srv, "link", "add", "tap0", "type", "veth", "peer", "name", "vtnet0",
           "netns", guest)  # fmt: skip
        ip("-n", srv, "link", "set", "tap0", "master", "br0")
        ip("-n", srv, "addr", "add", "10.77.0.1/24", "dev", "br0")
        for link in ("lo", "br0", "tap0"):
            ip("-n", srv, "link", "set", link, "up")
        ip("-n", guest, "link", "set", "vtnet0", "address", MAC)
        for link in ("lo", "vtnet0"):
            ip("-n", guest, "link", "set", link, "up")
        yield srv, guest
    finally:
        for ns in (srv, guest):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await trio.sleep(0.05)
    raise AssertionError("timed out")


def guest_xml() -> bytes:
    return (
        "<domain type='bhyve'><name>g1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type><loader readonly='yes' type='pflash'>"
        "/usr/local/share/uefi-firmware/BHYVE_UEFI.fd</loader></os><devices>"
        f"<interface type='network'><source network='natns'/><mac address='{MAC}'/>"
        "<model type='virtio'/></interface></devices></domain>"
    ).encode()


async def test_real_dnsmasq_leases_a_static_address(
    namespaces: tuple[str, str], tmp_path: Path
) -> None:
    srv, guest = namespaces
    # A host whose dnsmasq runs inside the "srv" namespace; every other path is used as
    # it is (nothing is rooted but /usr, where the wrapper lives).
    sbin = tmp_path / "usr/local/sbin"
    sbin.mkdir(parents=True)
    wrapper = sbin / "dnsmasq"
    wrapper.write_text(
        f'#!/bin/sh\nexec ip netns exec {srv} {shutil.which("dnsmasq")} --user=root "$@"\n'
    )
    wrapper.chmod(0o755)
    host = Host(root=str(tmp_path), rooted=("/usr",))
    for d in ("nets", "run", "log", "db"):
        (tmp_path / d).mkdir()
    manager = NetworkManager(
        host,
        NetworkSection(networks_dir=str(tmp_path / "nets")),
        str(tmp_path / "run"),
        str(tmp_path / "log"),
        db_dir=str(tmp_path / "db"),
    )
    domain = parse_domain_xml(guest_xml())
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: manager.run(restore=False, task_status=task_status))
        manager.define(NETWORK)
        manager.active.add("natns")
        manager.start_dhcp("natns")
        await manager.ensure_lease("natns", MAC, "g1")  # as the tap hook does at launch
        await until(lambda: manager.dhcp_pid("natns") is not None)
        first = manager.dhcp_pid("natns")
        assert first is not None

        async def dhcp_client() -> str:
            r = await trio.run_process(
                ["ip", "netns", "exec", guest, "busybox", "udhcpc", "-i", "vtnet0", "-n",
                 "-q", "-f", "-t", "8", "-T", "1", "-s", "/bin/true"],
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
            return (r.stdout + r.stderr).decode()

        # dnsmasq needs a moment to bind; udhcpc retries on its own.
        out = await dhcp_client()
        assert "lease of 10.77.0.2 obtained" in out, out
        await until(lambda: bool(manager.leases("natns")))
        addrs = manager.interface_addresses(domain, {"0": "tap0"})
        assert addrs == [
            {
                "name": "tap0",
                "hwaddr": MAC,
                "network": "natns",
                "addrs": [{"type": "ipv4", "addr": "10.77.0.2", "prefix": 24}],
            }
        ]

        # dnsmasq dies: the manager starts another, which serves again.
        os.kill(first, 9)
        await until(lambda: manager.dhcp_pid("natns") not in (None, first))
        assert "lease of 10.77.0.2 obtained" in await dhcp_client()
        second = manager.dhcp_pid("natns")
        assert second is not None
        nursery.cancel_scope.cancel()
    # Cancelled with the daemon: no dnsmasq is left behind.
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)
