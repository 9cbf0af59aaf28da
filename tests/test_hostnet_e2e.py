"""End to end on the simulated host: host-validate and nodedev-list through bhyvesupctl,
a passthrough guest that starts only once its device is on ppt, and a NAT network whose
guests get taps, rules and a supervised dnsmasq; leftovers of a killed daemon are
swept at the next start while the network's bridge stays up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from supervisor.vmm.sim import ifconfig, install, pfctl, teardown
from supervisor.vmm.sim.hardware import DEFAULT_KLDS
from tests.test_daemon_e2e import Sim, sim  # noqa: F401  (the daemon fixture)

NETWORK = """<network><name>nat0</name><forward mode='nat' dev='igb0'/>
<bridge name='vmnat0'/><ip address='10.10.0.1' prefix='24'>
<dhcp><range start='10.10.0.100' end='10.10.0.200'/></dhcp></ip></network>"""


def guest(name: str, *, nic: str = "", hostdev_bus: int | None = None) -> str:
    hostdev = (
        "<hostdev mode='subsystem' type='pci' managed='no'><source>"
        f"<address domain='0x0000' bus='{hostdev_bus:#x}' slot='0x00' function='0x0'/>"
        "</source></hostdev>"
        if hostdev_bus is not None
        else ""
    )
    return f"""<domain type='bhyve'><name>{name}</name><memory unit='MiB'>128</memory>
<vcpu>1</vcpu><os><type>hvm</type>
<loader readonly='yes' type='pflash'>/usr/local/share/uefi-firmware/BHYVE_UEFI.fd</loader>
</os><devices>{nic}{hostdev}
<serial type='nmdm'><source master='/dev/nmdm-{name}.1A' slave='/dev/nmdm-{name}.1B'/></serial>
</devices></domain>"""


def nat_nic(mac: str) -> str:
    return (
        f"<interface type='network'><source network='nat0'/><mac address='{mac}'/>"
        "<model type='virtio'/></interface>"
    )


def ctl(s: Sim, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.cli.main", "-s", s.socket, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def bhyve_argv(s: Sim, name: str) -> str:
    log = (s.root / f"var/log/bhyvesupd/{name}.bhyve.log").read_text()
    return [line for line in log.splitlines() if line.startswith("--- ")][-1]


def test_host_validate_and_nodedev_list(sim: Sim) -> None:  # noqa: F811
    r = ctl(sim, "host-validate", "--json")
    assert r.returncode == 2, r.stdout + r.stderr  # pf is not loaded: a warning only
    data = json.loads(r.stdout)
    assert data["result"] == "WARN"
    assert {c["key"]: c["result"] for c in data["checks"]}["vmm"] == "PASS"
    r = ctl(sim, "nodedev-list", "--cap", "pci", "--names")
    assert r.returncode == 0
    assert "pci_0000_06_00_0" in r.stdout.split()
    # A host without VT-x, checked locally: FAIL and exit status 1.
    broken = sim.root.parent / "broken"
    install(str(broken), virtualization=False)
    r = ctl(sim, "host-validate", "--sim", str(broken))
    assert r.returncode == 1
    assert "lacks virtualization support" in r.stdout
    assert " BHYVE: Checking if module vmm is loaded" in r.stdout


def test_passthrough_guest_starts_only_on_ppt_and_gets_wired_memory(sim: Sim) -> None:  # noqa: F811
    sim.call("domain.define", xml=guest("pt1", hostdev_bus=2))
    info = sim.call("domain.start", name="pt1")
    assert info["state"] != "running"
    assert "devctl set driver -f pci0:2:0:0 ppt" in str(info["last_error"])
    sim.call("domain.clear", name="pt1")

    subprocess.run([str(sim.root / "usr/sbin/devctl"), "set", "driver", "-f", "pci0:2:0:0",
                    "ppt"], check=True)  # fmt: skip
    info = sim.call("domain.start", name="pt1")
    assert info["state"] == "running", info
    argv = bhyve_argv(sim, "pt1")
    assert " -S " in argv
    assert "passthru,2/0/0" in argv
    held = {d["selector"]: d["guest"] for d in sim.call("nodedev.list")}
    assert held["pci0:2:0:0"] == "pt1"
    log = (sim.root / "var/log/bhyvesupd/bhyvesupd.log").read_text()
    assert '"event": "wired_memory_added"' in log

    # The same device for a second guest: refused while pt1 runs.
    sim.call("domain.define", xml=guest("pt2", hostdev_bus=2))
    info = sim.call("domain.start", name="pt2")
    assert "given to running guest 'pt1'" in str(info["last_error"])
    sim.call("domain.destroy", name="pt1")
    sim.call("domain.clear", name="pt2")
    assert sim.call("domain.start", name="pt2")["state"] == "running"


def test_nat_network_taps_dhcp_and_leftovers(sim: Sim) -> None:  # noqa: F811
    root = str(sim.root)
    install(root, klds=(*DEFAULT_KLDS, "pf.ko"))  # the operator loads pf
    sim.call("network.define", xml=NETWORK)
    r = ctl(sim, "net-start", "nat0")
    assert r.returncode == 0, r.stderr
    assert pfctl.anchors(root)["bhyvesupd/nat0"][0] == [
        "nat",
        "nat on igb0 inet from 10.10.0.0/24 to any -> (igb0)",
    ]
    assert ctl(sim, "net-list").stdout.splitlines()[2].split()[:3] == ["nat0", "active", "vmnat0"]

    sim.call("domain.define", xml=guest("n1", nic=nat_nic("58:9c:fc:00:00:11")))
    assert sim.call("domain.start", name="n1")["state"] == "running"
    assert "virtio-net,tap0,mac=58:9c:fc:00:00:11" in bhyve_argv(sim, "n1")
    state = ifconfig.interfaces(root)
    assert state["vmnat0"]["members"] == ["tap0"]
    hosts = (sim.root / "var/run/bhyvesupd/net-nat0.hosts").read_text()
    assert hosts == "58:9c:fc:00:00:11,10.10.0.2,n1\n"
    # No lease yet (the simulated guest does not ask): reported, with no address.
    assert sim.call("domain.interface_addresses", name="n1") == [
        {"name": "tap0", "hwaddr": "58:9c:fc:00:00:11", "network": "nat0", "addrs": []}
    ]

    # dnsmasq dies: the daemon starts it again.
    pid = sim.call("network.list")[0]["dhcp_pid"]
    os.kill(pid, signal.SIGKILL)
    sim.wait_for("dnsmasq restarted", lambda: sim.call("network.list")[0]["dhcp_pid"] not in
                 (None, pid))  # fmt: skip

    r = ctl(sim, "net-stop", "nat0")
    assert r.returncode == 1
    assert "guests are attached to vmnat0 (tap0)" in r.stderr

    # The final stop removes the tap; the bridge stays up, never bounced.
    sim.call("domain.destroy", name="n1")
    sim.wait_for("tap0 destroyed", lambda: "tap0" not in ifconfig.interfaces(root))
    state = ifconfig.interfaces(root)
    assert state["vmnat0"]["up"]
    assert state["vmnat0"]["link_changes"] == 1

    # The daemon is killed while n1 runs, then n1's bhyve dies too: the next daemon
    # finds the leftover tap and removes it, and brings the network back.
    assert sim.call("domain.start", name="n1")["state"] == "running"
    bhyve_pid = sim.info("n1")["pid"]
    sim.proc.kill()
    sim.proc.wait(timeout=10)
    os.kill(bhyve_pid, signal.SIGKILL)
    assert "tap0" in ifconfig.interfaces(root)
    out = open(sim.root.parent / "daemon2.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.daemon", "--sim", root, "--no-examples"],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        sim.wait_for("the new daemon", lambda: _answers(sim), timeout=30)
        state = ifconfig.interfaces(root)
        assert "tap0" not in state
        assert state["vmnat0"]["members"] == []
        assert state["vmnat0"]["link_changes"] == 1
        # `bhyvesupd --sim` installs the host afresh (pf unloaded, as after a reboot
        # without pf_enable); once pf is back, starting the network adopts the bridge
        # the daemon left up, without bouncing it.
        install(root, klds=(*DEFAULT_KLDS, "pf.ko"))
        assert ctl(sim, "net-start", "nat0").returncode == 0
        assert sim.call("network.list")[0]["active"] is True
        assert ifconfig.interfaces(root)["vmnat0"]["link_changes"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        out.close()
        teardown(root)


def _answers(s: Sim) -> bool:
    try:
        s.call("connect.is_alive")
    except Exception:
        return False
    time.sleep(0.3)  # the sweep runs before the socket opens; let restore finish
    return True
