"""NAT networks defined as libvirt network XML. Pure.

What is read (everything else in the XML is refused with the field named, so a setting
is never silently ignored)::

    <network>
      <name>default</name>
      <uuid>...</uuid>                       optional
      <forward mode='nat' dev='igb0'/>       nat (dev optional), or no <forward>: isolated
      <bridge name='vmnat0'/>
      <ip address='10.10.0.1' netmask='255.255.255.0'>   or prefix='24'
        <dhcp>
          <range start='10.10.0.50' end='10.10.0.200'/>
          <host mac='58:9c:fc:00:00:01' ip='10.10.0.5' name='web1'/>
        </dhcp>
      </ip>
      <metadata>
        <bhyvesup:portforward xmlns:bhyvesup='urn:bhyve-supervisor:network:1'
            proto='tcp' port='2222' to='10.10.0.5' toport='22'/>
      </metadata>
    </network>

Port forwards live in the daemon's metadata namespace: libvirt's network XML has no
element for them.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Literal

import attrs

from supervisor._record import Record
from supervisor.errors import InvalidValueError

if TYPE_CHECKING:
    from lxml import etree

NS = "urn:bhyve-supervisor:network:1"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: FreeBSD interface names: IFNAMSIZ is 16 with the NUL.
_IFNAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,14}")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _bad(field: str, message: str) -> InvalidValueError:
    return InvalidValueError(f"{field}: {message}", field=field)


def check_ifname(field: str, name: str) -> str:
    if not _IFNAME_RE.fullmatch(name):
        raise _bad(field, f"not a FreeBSD interface name (max 15 chars), got {name!r}")
    return name


@attrs.frozen(repr=False)
class StaticHost(Record):
    mac: str
    ip: ipaddress.IPv4Address
    name: str | None = None


@attrs.frozen(repr=False)
class PortForward(Record):
    proto: Literal["tcp", "udp"]
    port: int
    to: ipaddress.IPv4Address
    toport: int


@attrs.frozen(repr=False)
class Network(Record):
    """One network: a bridge with the gateway address, optional NAT and DHCP."""

    name: str
    bridge: str
    address: ipaddress.IPv4Interface
    forward: Literal["nat", "none"] = "nat"
    forward_dev: str | None = None
    uuid: str | None = None
    dhcp_range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None = None
    hosts: tuple[StaticHost, ...] = ()
    port_forwards: tuple[PortForward, ...] = ()

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return self.address.network

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.address.ip

    def __attrs_post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise _bad("name", f"use letters, digits, '_', '.', '-', got {self.name!r}")
        check_ifname("bridge.name", self.bridge)
        if self.uuid is not None and not _UUID_RE.fullmatch(self.uuid):
            raise _bad("uuid", f"not a UUID, got {self.uuid!r}")
        if self.forward_dev is not None:
            check_ifname("forward.dev", self.forward_dev)
        net = self.subnet
        if self.address.ip in (net.network_address, net.broadcast_address):
            raise _bad("ip.address", f"{self.address.ip} is not a host address of {net}")
        if self.dhcp_range is not None:
            start, end = self.dhcp_range
            for which, a in (("start", start), ("end", end)):
                if a not in net:
                    raise _bad(f"ip.dhcp.range.{which}", f"{a} is outside {net}")
            if int(end) < int(start):
                raise _bad("ip.dhcp.range", f"end {end} is before start {start}")
        seen: set[str] = set()
        for i, h in enumerate(self.hosts):
            field = f"ip.dhcp.host[{i}]"
            if h.ip not in net or h.ip == self.gateway:
                raise _bad(f"{field}.ip", f"{h.ip} is not a free address of {net}")
            if h.mac in seen:
                raise _bad(f"{field}.mac", f"{h.mac} is listed twice")
            seen.add(h.mac)
        for i, pf in enumerate(self.port_forwards):
            field = f"metadata.portforward[{i}]"
            if pf.to not in net:
                raise _bad(f"{field}.to", f"{pf.to} is outside {net}")
            for key in ("port", "toport"):
                if not 1 <= getattr(pf, key) <= 65535:
                    raise _bad(f"{field}.{key}", f"must be 1..65535, got {getattr(pf, key)}")


def _attr(el: etree._Element, name: str, field: str) -> str:
    value = el.get(name)
    if value is None or not value.strip():
        raise _bad(field, "missing")
    return value.strip()


def _ip(field: str, text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise _bad(field, f"not an IPv4 address, got {text!r}") from None


def _int(field: str, text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise _bad(field, f"not a number, got {text!r}") from None


_KNOWN = {"name", "uuid", "forward", "bridge", "ip", "metadata", "mac", "domain", "dns"}


def parse_network_xml(data: bytes | str) -> Network:
    """A :class:`Network` from libvirt network XML.

    Raises:
        InvalidValueError: malformed XML or a bad or unsupported value (the field named).
    """
    # Here, not at the top: a host with no network to load starts without lxml.
    from supervisor.domain.xml import parse_xml_document

    root = parse_xml_document(data)
    if root.tag != "network":
        raise _bad("network", f"the root element must be <network>, got <{root.tag}>")
    for child in root:
        if isinstance(child.tag, str) and child.tag not in _KNOWN:
            raise _bad(child.tag, "not supported by bhyvesupd networks")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise _bad("name", "missing")
    fwd = root.find("forward")
    forward: Literal["nat", "none"] = "none"
    forward_dev = None
    if fwd is not None:
        mode = fwd.get("mode", "nat")
        if mode != "nat":
            raise _bad("forward.mode", f"bhyvesupd networks do NAT only, got {mode!r}")
        forward = "nat"
        forward_dev = fwd.get("dev")
    br = root.find("bridge")
    if br is None:
        raise _bad("bridge.name", "missing")
    bridge = _attr(br, "name", "bridge.name")
    ips = root.findall("ip")
    if len(ips) != 1:
        raise _bad("ip", f"exactly one IPv4 <ip> is supported, got {len(ips)}")
    ip_el = ips[0]
    if ip_el.get("family", "ipv4") != "ipv4":
        raise _bad("ip.family", "only ipv4 is supported")
    addr = _ip("ip.address", _attr(ip_el, "address", "ip.address"))
    if ip_el.get("prefix") is not None:
        prefix = _int("ip.prefix", ip_el.get("prefix", ""))
    elif ip_el.get("netmask") is not None:
        try:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{ip_el.get('netmask')}").prefixlen
        except ValueError:
            raise _bad("ip.netmask", f"not a netmask, got {ip_el.get('netmask')!r}") from None
    else:
        prefix = 24
    if not 8 <= prefix <= 30:
        raise _bad("ip.prefix", f"must be 8..30, got {prefix}")
    dhcp_range = None
    hosts: list[StaticHost] = []
    dhcp = ip_el.find("dhcp")
    if dhcp is not None:
        rng = dhcp.findall("range")
        if len(rng) > 1:
            raise _bad("ip.dhcp.range", "one range is supported")
        if rng:
            dhcp_range = (
                _ip("ip.dhcp.range.start", _attr(rng[0], "start", "ip.dhcp.range.start")),
                _ip("ip.dhcp.range.end", _attr(rng[0], "end", "ip.dhcp.range.end")),
            )
        for i, h in enumerate(dhcp.findall("host")):
            field = f"ip.dhcp.host[{i}]"
            mac = _attr(h, "mac", f"{field}.mac").lower()
            if not _MAC_RE.fullmatch(mac):
                raise _bad(f"{field}.mac", f"not a MAC address, got {mac!r}")
            hosts.append(
                StaticHost(mac, _ip(f"{field}.ip", _attr(h, "ip", f"{field}.ip")), h.get("name"))
            )
    forwards: list[PortForward] = []
    meta = root.find("metadata")
    if meta is not None:
        for i, pf in enumerate(meta.findall(f"{{{NS}}}portforward")):
            field = f"metadata.portforward[{i}]"
            proto = pf.get("proto", "tcp")
            if proto not in ("tcp", "udp"):
                raise _bad(f"{field}.proto", f"must be tcp or udp, got {proto!r}")
            forwards.append(
                PortForward(
                    "tcp" if proto == "tcp" else "udp",
                    _int(f"{field}.port", _attr(pf, "port", f"{field}.port")),
                    _ip(f"{field}.to", _attr(pf, "to", f"{field}.to")),
                    _int(f"{field}.toport", pf.get("toport") or pf.get("port") or ""),
                )
            )
    return Network(
        name=name,
        bridge=bridge,
        address=ipaddress.IPv4Interface(f"{addr}/{prefix}"),
        forward=forward,
        forward_dev=forward_dev,
        uuid=(root.findtext("uuid") or "").strip() or None,
        dhcp_range=dhcp_range,
        hosts=tuple(hosts),
        port_forwards=tuple(forwards),
    )


#: What an XML attribute value may not contain as it is.
_ATTR_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"}
)


def format_network_xml(net: Network) -> str:
    """The libvirt network XML of *net* (reads back to an equal :class:`Network`)."""

    def q(value: str) -> str:
        # Single-quoted like the rest of the document. (xml.sax.saxutils would do this,
        # but importing it drags in urllib, http and email: a megabyte of the daemon.)
        return "'" + value.translate(_ATTR_ESCAPES) + "'"

    lines = ["<network>", f"  <name>{net.name}</name>"]
    if net.uuid:
        lines.append(f"  <uuid>{net.uuid}</uuid>")
    if net.forward == "nat":
        dev = f" dev={q(net.forward_dev)}" if net.forward_dev else ""
        lines.append(f"  <forward mode='nat'{dev}/>")
    lines.append(f"  <bridge name={q(net.bridge)}/>")
    lines.append(f"  <ip address='{net.gateway}' prefix='{net.subnet.prefixlen}'>")
    if net.dhcp_range is not None or net.hosts:
        lines.append("    <dhcp>")
        if net.dhcp_range is not None:
            lines.append(f"      <range start='{net.dhcp_range[0]}' end='{net.dhcp_range[1]}'/>")
        for h in net.hosts:
            name = f" name={q(h.name)}" if h.name else ""
            lines.append(f"      <host mac='{h.mac}' ip='{h.ip}'{name}/>")
        lines.append("    </dhcp>")
    lines.append("  </ip>")
    if net.port_forwards:
        lines.append("  <metadata>")
        for pf in net.port_forwards:
            lines.append(
                f"    <bhyvesup:portforward xmlns:bhyvesup='{NS}' proto='{pf.proto}' "
                f"port='{pf.port}' to='{pf.to}' toport='{pf.toport}'/>"
            )
        lines.append("  </metadata>")
    lines.append("</network>")
    return "\n".join(lines) + "\n"
