"""dnsmasq configuration, static address assignment and lease files."""

from __future__ import annotations

import pytest

from supervisor.errors import InvalidValueError
from supervisor.netfw import dhcp
from supervisor.netfw.ifparse import parse_ifconfig
from supervisor.netfw.network import parse_network_xml

NET = parse_network_xml(
    "<network><name>n</name><forward mode='nat'/><bridge name='vmn0'/>"
    "<ip address='10.9.0.1' prefix='24'><dhcp><range start='10.9.0.100' end='10.9.0.200'/>"
    "<host mac='58:9c:fc:00:00:09' ip='10.9.0.9'/></dhcp></ip></network>"
)


def test_dnsmasq_conf_binds_to_the_bridge_only() -> None:
    conf = dhcp.dnsmasq_conf(
        NET, lease_file="/l", hosts_file="/h", pid_file="/p", user="root", dns=False
    ).splitlines()
    assert "interface=vmn0" in conf
    assert "bind-interfaces" in conf
    assert "dhcp-range=10.9.0.100,10.9.0.200,255.255.255.0,12h" in conf
    assert "dhcp-hostsfile=/h" in conf
    assert "dhcp-option=option:router,10.9.0.1" in conf
    assert "port=0" in conf
    assert "user=root" in conf


def test_static_addresses_are_deterministic_and_stable() -> None:
    wanted = [("58:9c:fc:00:00:01", "a"), ("58:9c:fc:00:00:09", "b"), ("58:9c:fc:00:00:02", "c")]
    first = dhcp.assign_static(NET, wanted, {})
    assert first == {
        "58:9c:fc:00:00:01": "10.9.0.2",
        "58:9c:fc:00:00:09": "10.9.0.9",  # the network's <host> wins
        "58:9c:fc:00:00:02": "10.9.0.3",
    }
    assert dhcp.assign_static(NET, wanted, {}) == first
    # A known MAC keeps its address even when an earlier one goes away.
    again = dhcp.assign_static(NET, wanted[1:], first)
    assert again["58:9c:fc:00:00:02"] == "10.9.0.3"
    text = dhcp.hosts_file([(m, __import__("ipaddress").IPv4Address(ip), None)
                            for m, ip in sorted(first.items())])  # fmt: skip
    assert text.splitlines()[0] == "58:9c:fc:00:00:01,10.9.0.2"


def test_a_full_subnet_is_an_error() -> None:
    tiny = parse_network_xml(
        "<network><name>t</name><bridge name='t0'/><ip address='10.1.0.1' prefix='30'/></network>"
    )
    ok = dhcp.assign_static(tiny, [("58:9c:fc:00:00:01", "a")], {})
    assert ok == {"58:9c:fc:00:00:01": "10.1.0.2"}
    with pytest.raises(InvalidValueError):
        dhcp.assign_static(tiny, [("58:9c:fc:00:00:01", "a"), ("58:9c:fc:00:00:02", "b")], {})


def test_lease_file() -> None:
    text = (
        "1764140000 58:9c:fc:00:00:01 10.9.0.2 web1 01:58:9c:fc:00:00:01\n"
        "1764140001 58:9C:FC:00:00:02 10.9.0.150 * *\n"
        "duid 00:01:00:01:2c:aa\n"
        "17641"
    )
    leases = dhcp.parse_leases(text)
    assert [(x.mac, x.ip, x.hostname) for x in leases] == [
        ("58:9c:fc:00:00:01", "10.9.0.2", "web1"),
        ("58:9c:fc:00:00:02", "10.9.0.150", None),
    ]


def test_ifconfig_shapes_real_hosts_print() -> None:
    text = (
        "vm-public: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500\n"
        "\tether 02:9e:d3:1f:2c:00 \n"
        "\tinet 10.0.0.1 netmask 0xffffff00 broadcast 10.0.0.255 \n"
        "\tmember: tap0 flags=143<LEARNING,DISCOVER,AUTOEDGE,AUTOPTP>\n"
        "\t        ifmaxaddr 0 port 4 priority 128 path cost 2000000\n"
        "\tgroups: bridge vm-switch viid-4c918@\n"
        "tap0: flags=8943<UP,BROADCAST,RUNNING,PROMISC,SIMPLEX,MULTICAST> metric 0 mtu 1500\n"
        "\tdescription: vmnet/web1/0/public\n"
        "\tOpened by PID 1234\n"
    )
    ifs = parse_ifconfig(text)
    assert ifs["vm-public"].members == ("tap0",)
    assert ifs["vm-public"].inet == ("10.0.0.1",)
    assert ifs["vm-public"].groups == ("bridge", "vm-switch", "viid-4c918@")
    assert ifs["tap0"].opened_by == 1234
    assert ifs["tap0"].up
