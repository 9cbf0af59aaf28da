"""libvirt network XML: what is read, what is refused (with the field), round trips."""

from __future__ import annotations

import ipaddress

import pytest

from supervisor.errors import InvalidValueError
from supervisor.netfw.network import format_network_xml, parse_network_xml

NAT = """<network>
  <name>nat0</name>
  <uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>
  <forward mode='nat' dev='igb0'/>
  <bridge name='vmnat0' stp='on' delay='0'/>
  <ip address='10.10.0.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='10.10.0.50' end='10.10.0.200'/>
      <host mac='58:9C:FC:00:00:05' ip='10.10.0.5' name='web1'/>
    </dhcp>
  </ip>
  <metadata>
    <bhyvesup:portforward xmlns:bhyvesup='urn:bhyve-supervisor:network:1'
        proto='tcp' port='2222' to='10.10.0.5' toport='22'/>
  </metadata>
</network>"""


def test_a_nat_network_is_read_completely() -> None:
    net = parse_network_xml(NAT)
    assert net.name == "nat0"
    assert net.bridge == "vmnat0"
    assert net.forward == "nat"
    assert net.forward_dev == "igb0"
    assert net.address == ipaddress.IPv4Interface("10.10.0.1/24")
    assert net.dhcp_range == (
        ipaddress.IPv4Address("10.10.0.50"),
        ipaddress.IPv4Address("10.10.0.200"),
    )
    assert net.hosts[0].mac == "58:9c:fc:00:00:05"
    assert net.port_forwards[0].port == 2222
    assert net.port_forwards[0].toport == 22


def test_round_trip() -> None:
    net = parse_network_xml(NAT)
    assert parse_network_xml(format_network_xml(net)) == net


def test_markup_in_a_value_is_escaped_and_reads_back() -> None:
    net = parse_network_xml(NAT.replace("name='web1'", 'name="o\'brien &amp; &lt;co&gt;"'))
    assert net.hosts[0].name == "o'brien & <co>"
    text = format_network_xml(net)
    assert "name='o&apos;brien &amp; &lt;co&gt;'" in text
    assert parse_network_xml(text) == net


def test_isolated_network_without_forward() -> None:
    net = parse_network_xml(
        "<network><name>iso</name><bridge name='bridge5'/><ip address='192.168.50.1' "
        "prefix='24'/></network>"
    )
    assert net.forward == "none"
    assert net.dhcp_range is None


@pytest.mark.parametrize(
    ("xml", "field"),
    [
        (NAT.replace("mode='nat'", "mode='route'"), "forward.mode"),
        (NAT.replace("vmnat0", "averyveryverylongbridge"), "bridge.name"),
        (NAT.replace("start='10.10.0.50'", "start='10.10.1.50'"), "ip.dhcp.range.start"),
        (NAT.replace("ip='10.10.0.5'", "ip='10.10.0.1'"), "ip.dhcp.host[0].ip"),
        (NAT.replace("port='2222'", "port='70000'"), "metadata.portforward[0].port"),
        (NAT.replace("<name>nat0</name>", "<name>a b</name>"), "name"),
        (NAT.replace("<uuid>", "<dns/><bandwidth/><uuid>"), "bandwidth"),
        (NAT.replace("netmask='255.255.255.0'", "netmask='255.0.255.0'"), "ip.netmask"),
        (NAT.replace("3e3fce45-4f53", "3e3fce45-zz"), "uuid"),
    ],
)
def test_bad_values_name_the_field(xml: str, field: str) -> None:
    with pytest.raises(InvalidValueError) as e:
        parse_network_xml(xml)
    assert e.value.field == field
