"""bhyvesupctl's host and network verbs.

``host-validate`` asks the daemon to check its host (``connect.host_validate``); with
``--local``, or when no daemon answers, the checks run in this process against this
machine (or, with ``--sim DIR``, the simulated host at DIR). Its exit status is 0 when
every check passed, 1 when one failed, 2 when there were only warnings.
``nodedev-list --cap pci``, ``net-define``/``net-undefine``/``net-list``/``net-start``/
``net-stop``/``net-dumpxml``/``net-dhcp-leases`` and ``domifaddr`` are plain calls.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from supervisor.cli.control import (
    EXIT_OK,
    connect,
    out,
    read_input,
    verb,
)
from supervisor.cli.render import render_json
from supervisor.host import FREEBSD, Host
from supervisor.hostcheck import checks as hc
from supervisor.rpc.errors import DaemonNotRunningError


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) if c is not None else "-" for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    head = " ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    lines = [head.rstrip(), "-" * len(head)]
    for r in cells:
        lines.append(" ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _local_checks(args: argparse.Namespace) -> list[hc.Check]:
    host: Host = FREEBSD
    if args.sim:
        from supervisor.vmm.sim.host import ROOTED

        host = Host(root=os.path.abspath(args.sim), rooted=ROOTED)
    # The local checks need the probing (and trio) only when asked for.
    import trio

    from supervisor.hostcheck.probe import validate

    return trio.run(lambda: validate(host, firewall=args.firewall))


def _from_dicts(items: Sequence[dict[str, Any]]) -> list[hc.Check]:
    return [
        hc.Check(
            str(d["key"]),
            str(d["description"]),
            hc.Verdict(d["result"]),
            d.get("detail"),
            d.get("fix"),
        )
        for d in items
    ]


def cmd_host_validate(args: argparse.Namespace) -> int:
    checks: list[hc.Check] | None = None
    if not args.local and not args.sim:
        try:
            with connect(args) as client:
                result = client.call("connect.host_validate")
            checks = _from_dicts(result["checks"])
        except DaemonNotRunningError as exc:
            sys.stderr.write(f"bhyvesupctl: {exc}; checking this machine\n")
            checks = None
    if checks is None:
        checks = _local_checks(args)
    if args.json:
        out(
            render_json(
                {"result": hc.overall(checks).value, "checks": [c.to_dict() for c in checks]}
            )
        )
    else:
        out(hc.render(checks))
    return hc.exit_status(checks)


def cmd_nodedev_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        devs = client.call("nodedev.list", cap=args.cap)
    if args.json:
        out(render_json(devs))
    elif args.names:
        for d in devs:
            out(str(d["name"]))
    else:
        rows = [
            (d["name"], d["selector"], d["device_name"], d.get("guest"), d.get("product"))
            for d in devs
        ]
        out(_table(("Name", "Address", "Driver", "Guest", "Device"), rows))
    return EXIT_OK


def cmd_net_define(args: argparse.Namespace) -> int:
    xml = read_input(args.file)
    with connect(args) as client:
        info = client.call("network.define", xml=xml)
    out(f"Network {info['name']} defined")
    return EXIT_OK


def cmd_net_undefine(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.call("network.undefine", name=args.name)
    out(f"Network {args.name} has been undefined")
    return EXIT_OK


def cmd_net_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        nets = client.call("network.list")
    if args.json:
        out(render_json(nets))
        return EXIT_OK
    rows = [
        (
            n["name"],
            "active" if n["active"] else "inactive",
            n["bridge"],
            n["address"],
            n["forward"],
            n["dhcp_pid"],
        )
        for n in nets
    ]
    out(_table(("Name", "State", "Bridge", "Address", "Forward", "DHCP pid"), rows))
    return EXIT_OK


def cmd_net_start(args: argparse.Namespace) -> int:
    with connect(args, timeout=120) as client:
        client.call("network.start", name=args.name)
    out(f"Network {args.name} started")
    return EXIT_OK


def cmd_net_stop(args: argparse.Namespace) -> int:
    with connect(args, timeout=120) as client:
        client.call("network.stop", name=args.name)
    out(f"Network {args.name} stopped")
    return EXIT_OK


def cmd_net_dumpxml(args: argparse.Namespace) -> int:
    with connect(args) as client:
        xml = str(client.call("network.get_xml", name=args.name)["xml"])
    sys.stdout.write(xml)
    return EXIT_OK


def cmd_net_leases(args: argparse.Namespace) -> int:
    with connect(args) as client:
        leases = client.call("network.dhcp_leases", name=args.name)
    if args.json:
        out(render_json(leases))
        return EXIT_OK
    rows = [(x["mac"], x["ip"], x["hostname"], x["expiry"]) for x in leases]
    out(_table(("MAC address", "IP address", "Hostname", "Expiry"), rows))
    return EXIT_OK


def cmd_domifaddr(args: argparse.Namespace) -> int:
    with connect(args) as client:
        ifaces = client.call("domain.interface_addresses", name=args.name)
    if args.json:
        out(render_json(ifaces))
        return EXIT_OK
    rows = []
    for i in ifaces:
        addrs = i["addrs"] or [None]
        for a in addrs:
            shown = f"{a['addr']}/{a['prefix']}" if a else None
            rows.append((i["name"], i["hwaddr"], "ipv4" if a else None, shown))
    out(_table(("Name", "MAC address", "Protocol", "Address"), rows))
    return EXIT_OK


def register(sub: Any) -> None:
    """Add the host and network verbs to *sub*."""
    p = verb(sub, "host-validate", cmd_host_validate, "check that the host can run bhyve guests")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--local", action="store_true", help="check this machine, not the daemon's")
    p.add_argument("--sim", metavar="DIR", help="check the simulated host at DIR (implies --local)")
    p.add_argument(
        "--firewall",
        choices=["pf", "ipfw"],
        default="pf",
        help="with --local: the NAT firewall to check for (default pf)",
    )

    p = verb(sub, "nodedev-list", cmd_nodedev_list, "list host devices (PCI functions)")
    p.add_argument("--cap", choices=["pci"], default="pci", help="device capability (pci)")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p.add_argument("--names", action="store_true", help="names only, as virsh prints them")

    p = verb(sub, "net-define", cmd_net_define, "define a network from libvirt network XML")
    p.add_argument("file", metavar="FILE", help="network XML, '-' for standard input")
    p = verb(sub, "net-undefine", cmd_net_undefine, "remove an inactive network's definition")
    p.add_argument("name", metavar="NETWORK")
    p = verb(sub, "net-list", cmd_net_list, "list networks")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p = verb(sub, "net-start", cmd_net_start, "start a network (bridge, NAT, DHCP)")
    p.add_argument("name", metavar="NETWORK")
    p = verb(sub, "net-stop", cmd_net_stop, "stop a network", aliases=["net-destroy"])
    p.add_argument("name", metavar="NETWORK")
    p = verb(sub, "net-dumpxml", cmd_net_dumpxml, "print a network's XML")
    p.add_argument("name", metavar="NETWORK")
    p = verb(sub, "net-dhcp-leases", cmd_net_leases, "show a network's DHCP leases")
    p.add_argument("name", metavar="NETWORK")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p = verb(sub, "domifaddr", cmd_domifaddr, "show a guest's addresses from DHCP leases")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
