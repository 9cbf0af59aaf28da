"""The simulated pciconf, devctl, ifconfig, pfctl and ipfw: state kept between runs,
FreeBSD's output shapes (read back by the supervisor's own parsers) and failures."""

from __future__ import annotations

import io
from pathlib import Path

from supervisor.netfw.ifparse import parse_ifconfig
from supervisor.vmm.hostparse import parse_pciconf
from supervisor.vmm.sim import hardware, ifconfig, ipfw, pci, pfctl
from supervisor.vmm.sim.hardware import Hardware


def _root(tmp_path: Path, klds: tuple[str, ...] = hardware.DEFAULT_KLDS) -> str:
    root = str(tmp_path)
    hardware.save(root, Hardware(klds=klds))
    return root


def run(fn: object, root: str, *args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    if fn is pfctl.run:
        status = pfctl.run(root, args, io.StringIO(stdin), out, err)
    else:
        status = fn(root, args, out, err)  # type: ignore[operator]
    return status, out.getvalue(), err.getvalue()


def test_pciconf_lv_reads_back_and_devctl_moves_a_device_to_ppt(tmp_path: Path) -> None:
    root = _root(tmp_path)
    status, text, _ = run(pci.pciconf, root, "-lv")
    assert status == 0
    devs = {d.selector: d for d in parse_pciconf(text)}
    assert devs["pci0:6:0:0"].name == "ppt0"
    assert devs["pci0:2:0:0"].name == "igb0"
    assert devs["pci0:2:0:0"].device == "I210 Gigabit Network Connection"
    assert "igb0@pci0:2:0:0:\tclass=0x020000 rev=0x03 hdr=0x00 vendor=0x8086" in text

    # Without -f an attached device is busy; the message is FreeBSD's.
    status, _, err = run(pci.devctl, root, "set", "driver", "pci0:2:0:0", "ppt")
    assert (status, err) == (1, "devctl: Failed to set pci0:2:0:0 driver to ppt: Device busy\n")
    assert run(pci.devctl, root, "set", "driver", "-f", "pci0:2:0:0", "ppt")[0] == 0
    devs = {d.selector: d for d in parse_pciconf(run(pci.pciconf, root, "-l")[1])}
    assert devs["pci0:2:0:0"].name == "ppt1"
    assert devs["pci0:2:0:0"].is_ppt
    # And back to its own driver by name.
    assert run(pci.devctl, root, "clear", "driver", "-f", "ppt1")[0] == 0
    devs = {d.selector: d for d in parse_pciconf(run(pci.pciconf, root, "-l")[1])}
    assert devs["pci0:2:0:0"].name == "igb0"
    status, _, err = run(pci.devctl, root, "set", "driver", "-f", "pci0:9:0:0", "ppt")
    assert status == 1
    assert err.endswith("No such file or directory\n")


def test_ppt_needs_vmm(tmp_path: Path) -> None:
    root = _root(tmp_path, klds=("nmdm.ko",))
    status, _, err = run(pci.devctl, root, "set", "driver", "-f", "pci0:2:0:0", "ppt")
    assert status == 1
    assert "No such file or directory" in err


def test_ifconfig_bridge_and_taps(tmp_path: Path) -> None:
    root = _root(tmp_path)
    assert run(ifconfig.run, root, "bridge", "create")[1] == "bridge1\n"
    assert run(ifconfig.run, root, "tap", "create")[1] == "tap0\n"
    assert run(ifconfig.run, root, "bridge1", "inet", "10.0.0.1/24", "up")[0] == 0
    assert run(ifconfig.run, root, "tap0", "description", "bhyvesupd guest a nic 0", "up")[0] == 0
    assert run(ifconfig.run, root, "bridge1", "addm", "tap0")[0] == 0
    status, _, err = run(ifconfig.run, root, "bridge1", "addm", "tap0")
    assert (status, err) == (1, "ifconfig: BRDGADD tap0: File exists\n")
    status, _, err = run(ifconfig.run, root, "bridge1", "addm", "tap7")
    assert (status, err) == (1, "ifconfig: BRDGADD tap7: No such file or directory\n")
    status, _, err = run(ifconfig.run, root, "tap0", "create")
    assert (status, err) == (1, "ifconfig: SIOCIFCREATE2 (tap0): File exists\n")
    ifs = parse_ifconfig(run(ifconfig.run, root)[1])
    assert list(ifs) == ["igb0", "lo0", "bridge0", "bridge1", "tap0"]
    assert ifs["bridge0"].members == ("igb0",)
    assert ifs["bridge1"].members == ("tap0",)
    assert ifs["bridge1"].inet == ("10.0.0.1",)
    assert ifs["tap0"].description == "bhyvesupd guest a nic 0"
    assert {"UP", "PROMISC"} <= ifs["tap0"].flags
    text = run(ifconfig.run, root, "bridge1")[1]
    assert text.startswith("bridge1: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,")
    assert "\tinet 10.0.0.1 netmask 0xffffff00 broadcast 10.0.0.255\n" in text
    assert "\tmember: tap0 flags=143<LEARNING,DISCOVER,AUTOEDGE,AUTOPTP>\n" in text
    # Removing the last member leaves the bridge up, and it never went down.
    assert run(ifconfig.run, root, "bridge1", "deletem", "tap0")[0] == 0
    assert run(ifconfig.run, root, "tap0", "destroy")[0] == 0
    state = ifconfig.interfaces(root)
    assert "tap0" not in state
    assert state["bridge1"]["up"]
    assert state["bridge1"]["link_changes"] == 1  # the one "up"
    assert run(ifconfig.run, root, "-l")[1] == "igb0 lo0 bridge0 bridge1\n"
    status, _, err = run(ifconfig.run, root, "tap0", "destroy")
    assert (status, err) == (1, "ifconfig: interface tap0 does not exist\n")


def test_ifconfig_rename(tmp_path: Path) -> None:
    root = _root(tmp_path)
    run(ifconfig.run, root, "bridge", "create")
    assert run(ifconfig.run, root, "bridge1", "name", "vmnat0")[1] == "vmnat0\n"
    assert "vmnat0" in parse_ifconfig(run(ifconfig.run, root)[1])


def test_pfctl_anchors_and_syntax_errors(tmp_path: Path) -> None:
    root = _root(tmp_path, klds=(*hardware.DEFAULT_KLDS, "pf.ko"))
    rules = 'ext = "igb0"\nnat on $ext inet from 10.0.0.0/24 to any -> ($ext)\npass all\n'
    assert run(pfctl.run, root, "-a", "bhyvesupd/n1", "-f", "-", stdin=rules)[0] == 0
    assert run(pfctl.run, root, "-a", "bhyvesupd/n1", "-sn")[1] == (
        "nat on igb0 inet from 10.0.0.0/24 to any -> (igb0)\n"
    )
    assert run(pfctl.run, root, "-a", "bhyvesupd", "-sA")[1] == "  bhyvesupd/n1\n"
    status, _, err = run(pfctl.run, root, "-a", "x", "-f", "-", stdin="pass all\nnat bogus\n")
    assert (status, err) == (1, "stdin:2: syntax error\n")
    assert "x" not in pfctl.anchors(root)
    assert run(pfctl.run, root, "-a", "bhyvesupd/n1", "-F", "all")[0] == 0
    assert pfctl.anchors(root) == {}
    status, _, err = run(pfctl.run, _root(tmp_path / "nopf"), "-sr")
    assert (status, err) == (1, "pfctl: /dev/pf: No such file or directory\n")


def test_ipfw_sets_and_nat(tmp_path: Path) -> None:
    root = _root(tmp_path, klds=(*hardware.DEFAULT_KLDS, "ipfw.ko"))
    assert run(ipfw.run, root, "-q", "nat", "100", "config", "if", "igb0", "same_ports")[0] == 0
    assert "ipfw_nat.ko" in hardware.load(root).klds  # loaded on demand
    add = ("-q", "add", "10000", "set", "7", "nat", "100", "ip4", "from", "10.0.0.0/24",
           "to", "any", "out", "via", "igb0")  # fmt: skip
    assert run(ipfw.run, root, *add)[0] == 0
    assert (
        run(ipfw.run, root, "-q", "add", "500", "allow", "ip", "from", "any", "to", "any")[0] == 0
    )
    assert run(ipfw.run, root, "list")[1] == (
        "00500 allow ip from any to any\n"
        "10000 nat 100 ip4 from 10.0.0.0/24 to any out via igb0\n"
        "65535 deny ip from any to any\n"
    )
    assert run(ipfw.run, root, "-q", "delete", "set", "7")[0] == 0
    assert [r["number"] for r in ipfw.state_of(root)["rules"]] == [500]
    status, _, err = run(ipfw.run, root, "-q", "add", "nat", "1", "from", "x")
    assert status == 64
    assert err.startswith("ipfw: invalid rule")
