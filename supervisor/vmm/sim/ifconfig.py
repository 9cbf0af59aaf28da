"""The simulated ``ifconfig(8)``: cloned bridges and taps that keep their state.

Supported: listing (``ifconfig``, ``ifconfig NAME``, ``ifconfig -l``) in FreeBSD 14's
shapes (flags word with names, ``description:``, ``ether``, ``inet A netmask 0x...
broadcast B``, bridge ``member: tapN flags=143<...>`` lines, ``groups:``), and the
operations a bhyve host uses: ``create`` (``tap create`` prints the name it chose),
``destroy``, ``up``/``down``, ``addm``/``deletem``, ``inet A/P [alias]``,
``description TEXT``/``-description`` and ``name NEW``. Arguments are applied left to
right like ifconfig does; the first failing one stops the command with ifconfig's
message (``ifconfig: BRDGADD tap9: No such file or directory``) and status 1, keeping
what the earlier ones did.

Interfaces and their flags live in one state document (:mod:`supervisor.vmm.sim.state`);
``link_changes`` counts UP/DOWN transitions so tests can tell a bridge never bounced.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from supervisor.vmm.sim import bsd, state

DOC = "net"

IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
IFF_PROMISC = 0x100
IFF_SIMPLEX = 0x800
IFF_MULTICAST = 0x8000
IFF_LOWER_UP = 0x1000000

_FLAG_NAMES = (
    (IFF_UP, "UP"),
    (IFF_BROADCAST, "BROADCAST"),
    (IFF_LOOPBACK, "LOOPBACK"),
    (IFF_RUNNING, "RUNNING"),
    (IFF_PROMISC, "PROMISC"),
    (IFF_SIMPLEX, "SIMPLEX"),
    (IFF_MULTICAST, "MULTICAST"),
    (IFF_LOWER_UP, "LOWER_UP"),
)

#: Interface kinds ``create`` can clone, by name prefix.
CLONERS = ("bridge", "tap", "tun", "epair", "lo", "vlan")


class IfError(Exception):
    """An ifconfig failure: the message ifconfig prints (without ``ifconfig: ``)."""


def _iface(name: str, kind: str, *, up: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "up": up,
        "mtu": 16384 if kind == "loop" else 1500,
        "ether": None if kind == "loop" else _mac(name),
        "inet": [],
        "members": [],
        "description": None,
        "link_changes": 0,
    }


def _mac(name: str) -> str:
    h = hashlib.sha256(name.encode()).digest()
    return "58:9c:fc:" + ":".join(f"{b:02x}" for b in h[:3])


def default_doc() -> dict[str, Any]:
    """A typical bhyve host: its physical NIC (``igb0``, a documentation address),
    ``lo0``, and the switch guests join, ``bridge0`` with igb0 as a member (rc.conf
    ``cloned_interfaces="bridge0"``, ``ifconfig_bridge0="addm igb0 up"``)."""
    igb0 = _iface("igb0", "ether", up=True)
    igb0["inet"] = [["192.0.2.10", 24]]
    lo0 = _iface("lo0", "loop", up=True)
    lo0["inet"] = [["127.0.0.1", 8]]
    bridge0 = _iface("bridge0", "bridge", up=True)
    bridge0["members"] = ["igb0"]
    return {"interfaces": {"igb0": igb0, "lo0": lo0, "bridge0": bridge0}}


def interfaces(root: str) -> dict[str, dict[str, Any]]:
    """A snapshot of the interfaces, by name (tests)."""
    return dict(state.read(root, DOC, default_doc)["interfaces"])


def _kind_of(name: str) -> str | None:
    m = re.fullmatch(r"([a-z]+?)(\d*)", name)
    if m is None or m.group(1) not in CLONERS:
        return None
    return {"lo": "loop"}.get(m.group(1), m.group(1))


def _is_member_somewhere(ifs: dict[str, dict[str, Any]], name: str) -> bool:
    return any(name in i["members"] for i in ifs.values())


def _flags(ifs: dict[str, dict[str, Any]], i: dict[str, Any]) -> int:
    flags = IFF_MULTICAST
    if i["kind"] == "loop":
        flags |= IFF_LOOPBACK
    else:
        flags |= IFF_BROADCAST | IFF_SIMPLEX
    if i["up"]:
        flags |= IFF_UP
    if i["kind"] == "tap":
        if _is_member_somewhere(ifs, i["name"]):
            flags |= IFF_PROMISC
        if i.get("opened_by"):
            flags |= IFF_RUNNING | IFF_LOWER_UP
    elif i["up"]:
        flags |= IFF_RUNNING | IFF_LOWER_UP
    return flags


def _flag_word(flags: int) -> str:
    names = ",".join(n for bit, n in _FLAG_NAMES if flags & bit)
    return f"flags={flags:x}<{names}>"


def _netmask(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF


def show(ifs: dict[str, dict[str, Any]], i: dict[str, Any]) -> str:
    """One interface as FreeBSD 14's ``ifconfig NAME`` prints it."""
    lines = [f"{i['name']}: {_flag_word(_flags(ifs, i))} metric 0 mtu {i['mtu']}"]
    if i.get("description"):
        lines.append(f"\tdescription: {i['description']}")
    if i["kind"] == "tap":
        lines.append("\toptions=80000<LINKSTATE>")
    elif i["kind"] == "bridge":
        lines.append("\toptions=0")
    if i["ether"]:
        lines.append(f"\tether {i['ether']}")
    for addr, prefix in i["inet"]:
        mask = _netmask(prefix)
        line = f"\tinet {addr} netmask 0x{mask:08x}"
        if i["kind"] != "loop":
            net = ipaddress.IPv4Network(f"{addr}/{prefix}", strict=False)
            line += f" broadcast {net.broadcast_address}"
        lines.append(line)
    if i["kind"] == "bridge":
        lines.append("\tid 00:00:00:00:00:00 priority 32768 hellotime 2 fwddelay 15")
        lines.append("\tmaxage 20 holdcnt 6 proto rstp maxaddr 2000 timeout 1200")
        lines.append("\troot id 00:00:00:00:00:00 priority 32768 ifcost 0 port 0")
        for port, member in enumerate(i["members"], start=5):
            lines.append(f"\tmember: {member} flags=143<LEARNING,DISCOVER,AUTOEDGE,AUTOPTP>")
            lines.append(f"\t        ifmaxaddr 0 port {port} priority 128 path cost 2000000")
    groups = {"bridge": "bridge", "tap": "tap", "loop": "lo"}.get(i["kind"])
    if groups:
        lines.append(f"\tgroups: {groups}")
    if i["kind"] in ("tap", "ether"):
        lines.append("\tmedia: Ethernet autoselect (1000baseT <full-duplex>)")
        carrier = i["kind"] == "ether" or bool(i.get("opened_by"))
        lines.append(f"\tstatus: {'active' if carrier else 'no carrier'}")
    lines.append("\tnd6 options=29<PERFORMNUD,IFDISABLED,AUTO_LINKLOCAL>")
    if i.get("opened_by"):
        lines.append(f"\tOpened by PID {i['opened_by']}")
    return "\n".join(lines) + "\n"


def _next_name(ifs: dict[str, dict[str, Any]], prefix: str) -> str:
    n = 0
    while f"{prefix}{n}" in ifs:
        n += 1
    return f"{prefix}{n}"


def _set_up(i: dict[str, Any], up: bool) -> None:
    if i["up"] != up:
        i["up"] = up
        i["link_changes"] += 1


def _parse_inet(value: str) -> tuple[str, int]:
    try:
        iface = ipaddress.IPv4Interface(value if "/" in value else f"{value}/8")
    except ValueError:
        raise IfError(f"{value}: bad value") from None
    return str(iface.ip), iface.network.prefixlen


def _apply(ifs: dict[str, dict[str, Any]], name: str, args: list[str], out: TextIO) -> None:
    """Apply *args* to interface *name* left to right (``create`` first, if given)."""
    if args and args[0] in ("create", "plumb"):
        args = args[1:]
        kind = _kind_of(name)
        if kind is None:
            raise IfError(f"SIOCIFCREATE2 ({name}): Invalid argument")
        if name.isalpha():
            name = _next_name(ifs, name)
            announce = True
        else:
            announce = False
        if name in ifs:
            raise IfError(f"SIOCIFCREATE2 ({name}): File exists")
        ifs[name] = _iface(name, kind)
        if announce and not any(a == "name" for a in args):
            out.write(f"{name}\n")
    elif name not in ifs:
        raise IfError(f"interface {name} does not exist")
    i = ifs[name]
    k = 0
    while k < len(args):
        arg = args[k]
        value = args[k + 1] if k + 1 < len(args) else None
        if arg in ("destroy", "unplumb"):
            for other in ifs.values():
                if name in other["members"]:
                    other["members"].remove(name)
            del ifs[name]
            return
        if arg == "up":
            _set_up(i, True)
        elif arg == "down":
            _set_up(i, False)
        elif arg in ("addm", "deletem"):
            if value is None:
                raise IfError(f"'{arg}' requires argument")
            k += 1
            op = "BRDGADD" if arg == "addm" else "BRDGDEL"
            if i["kind"] != "bridge":
                raise IfError(f"{op} {value}: Invalid argument")
            if arg == "addm":
                if value not in ifs:
                    raise IfError(f"{op} {value}: {bsd.strerror(errno.ENOENT)}")
                if value in i["members"] or _is_member_somewhere(ifs, value):
                    raise IfError(f"{op} {value}: {bsd.strerror(errno.EEXIST)}")
                i["members"].append(value)
            else:
                if value not in i["members"]:
                    raise IfError(f"{op} {value}: {bsd.strerror(errno.EINVAL)}")
                i["members"].remove(value)
        elif arg == "inet":
            if value is None:
                raise IfError("'inet' requires argument")
            k += 1
            addr = _parse_inet(value)
            alias = k + 1 < len(args) and args[k + 1] == "alias"
            if alias:
                k += 1
                i["inet"].append(list(addr))
            elif i["inet"]:
                i["inet"][0] = list(addr)
            else:
                i["inet"].append(list(addr))
        elif arg in ("description", "descr"):
            if value is None:
                raise IfError(f"'{arg}' requires argument")
            k += 1
            i["description"] = value or None
        elif arg in ("-description", "-descr"):
            i["description"] = None
        elif arg == "name":
            if value is None:
                raise IfError("'name' requires argument")
            k += 1
            if value in ifs:
                raise IfError(f"ioctl SIOCSIFNAME (set name): {bsd.strerror(errno.EEXIST)}")
            del ifs[name]
            for other in ifs.values():
                other["members"] = [value if m == name else m for m in other["members"]]
            i["name"] = name = value
            ifs[name] = i
            out.write(f"{name}\n")
        elif arg == "mtu":
            if value is None or not value.isdigit():
                raise IfError(f"mtu: bad value {value!r}")
            k += 1
            i["mtu"] = int(value)
        else:
            raise IfError(f"{arg}: bad value")
        k += 1


_USAGE = (
    "usage: ifconfig [-j jail] [-f type:format] interface address_family\n"
    "                [address [dest_address]] [parameters]\n"
    "       ifconfig [-j jail] interface create\n"
    "       ifconfig [-j jail] -a [-dDkmuv] [-f type:format] [address_family]\n"
    "       ifconfig [-j jail] -l [-du] [address_family]\n"
)


def run(root: str, args: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Run ``ifconfig ARGS`` against the simulated host at *root*."""
    argv = list(args)
    with state.locked(root, DOC, default_doc) as doc:
        ifs: dict[str, dict[str, Any]] = doc["interfaces"]
        if argv == ["-l"]:
            out.write(" ".join(ifs) + "\n")
            return 0
        if not argv or argv == ["-a"]:
            for i in ifs.values():
                out.write(show(ifs, i))
            return 0
        if argv[0].startswith("-"):
            err.write(_USAGE)
            return 1
        name, rest = argv[0], argv[1:]
        if not rest:
            if name not in ifs:
                err.write(f"ifconfig: interface {name} does not exist\n")
                return 1
            out.write(show(ifs, ifs[name]))
            return 0
        try:
            _apply(ifs, name, rest, out)
        except IfError as exc:
            err.write(f"ifconfig: {exc}\n")
            return 1
    return 0


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the installed ``/sbin/ifconfig`` of the simulated host at *root*."""
    return run(root, argv[1:], sys.stdout, sys.stderr)
