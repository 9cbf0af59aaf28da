"""dnsmasq for a network: its configuration, static leases and lease file. Pure.

One dnsmasq per network binds to the network's bridge only (``interface=`` with
``bind-interfaces``, so it never answers on the host's other interfaces nor fights a
dnsmasq the user runs), hands out the ``<dhcp><range>`` and gives every guest NIC on the
network its static address through a ``dhcp-hostsfile`` (re-read on SIGHUP, so a new
guest needs no restart). Lease file lines are ``EXPIRY MAC IP HOSTNAME CLIENTID``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

import attrs

from supervisor._record import Record
from supervisor.netfw.network import Network


def dnsmasq_conf(
    net: Network,
    *,
    lease_file: str,
    hosts_file: str,
    pid_file: str,
    user: str | None = None,
    lease_time: str = "12h",
    dns: bool = True,
) -> str:
    """dnsmasq's configuration file for *net* (FreeBSD paths)."""
    lines = [
        f"# bhyvesupd network {net.name}: generated, rewritten at each start",
        f"interface={net.bridge}",
        "bind-interfaces",
        "except-interface=lo0",
        f"listen-address={net.gateway}",
        "strict-order",
        "dhcp-authoritative",
        "dhcp-no-override",
        f"dhcp-leasefile={lease_file}",
        f"dhcp-hostsfile={hosts_file}",
        f"pid-file={pid_file}",
        f"dhcp-option=option:router,{net.gateway}",
    ]
    if not dns:
        lines.append("port=0")
    if user is not None:
        lines.append(f"user={user}")
    if net.dhcp_range is not None:
        start, end = net.dhcp_range
        lines.append(f"dhcp-range={start},{end},{net.subnet.netmask},{lease_time}")
    elif net.hosts:
        # Static leases only: dnsmasq still needs a range saying the subnet is served.
        lines.append(f"dhcp-range={net.subnet.network_address},static,{net.subnet.netmask}")
    return "\n".join(lines) + "\n"


def hosts_file(entries: Iterable[tuple[str, ipaddress.IPv4Address, str | None]]) -> str:
    """``MAC,IP[,NAME]`` lines for dnsmasq's ``dhcp-hostsfile``."""
    out = []
    for mac, ip, name in entries:
        out.append(f"{mac},{ip}" + (f",{name}" if name else ""))
    return "\n".join(out) + ("\n" if out else "")


def assign_static(
    net: Network,
    wanted: Iterable[tuple[str, str]],
    previous: Mapping[str, str],
) -> dict[str, str]:
    """A static address for every ``(mac, guest)`` of *wanted*: MAC → IP.

    A MAC listed in the network's ``<host>`` keeps that address; one assigned before
    (*previous*) keeps it while it is still free and in the subnet; the others take the
    lowest free address of the subnet outside the DHCP range, or, when the range covers
    the subnet, from the top of the range down. Deterministic for the same inputs.

    Raises:
        InvalidValueError: the subnet has no free address left.
    """
    from supervisor.errors import InvalidValueError

    fixed = {h.mac: str(h.ip) for h in net.hosts}
    taken = {str(net.gateway), *fixed.values()}
    result: dict[str, str] = {}
    pending = []
    for mac, _guest in wanted:
        if mac in fixed:
            result[mac] = fixed[mac]
        elif (
            mac in previous
            and previous[mac] not in taken
            and (ipaddress.IPv4Address(previous[mac]) in net.subnet)
        ):
            result[mac] = previous[mac]
            taken.add(previous[mac])
        else:
            pending.append(mac)
    rng = net.dhcp_range
    hosts = list(net.subnet.hosts())
    outside = [a for a in hosts if rng is None or not (int(rng[0]) <= int(a) <= int(rng[1]))]
    inside = [a for a in reversed(hosts) if a not in outside]
    candidates = [str(a) for a in (*outside, *inside)]
    for mac in pending:
        for a in candidates:
            if a not in taken:
                result[mac] = a
                taken.add(a)
                break
        else:
            raise InvalidValueError(
                f"network {net.name}: no address left in {net.subnet} for {mac}", field="mac"
            )
    return result


@attrs.frozen(repr=False)
class Lease(Record):
    expiry: int
    mac: str
    ip: str
    hostname: str | None
    client_id: str | None


def parse_leases(text: str) -> list[Lease]:
    """dnsmasq's lease file (``EXPIRY MAC IP HOSTNAME CLIENTID``, ``*`` = none).

    IPv6 ``duid`` lines and anything malformed are skipped: the file is rewritten by
    dnsmasq while we read it, and a torn last line must not break the reader.
    """
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] == "duid" or not parts[0].isdigit():
            continue
        try:
            ipaddress.IPv4Address(parts[2])
        except ValueError:
            continue
        out.append(
            Lease(
                int(parts[0]),
                parts[1].lower(),
                parts[2],
                None if parts[3] == "*" else parts[3],
                None if len(parts) < 5 or parts[4] == "*" else parts[4],
            )
        )
    return out
