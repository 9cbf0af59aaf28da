"""NAT rule generation for pf and ipfw. Pure.

pf: each network gets a sub-anchor of the daemon's anchor (``bhyvesupd/NAME``), loaded
with ``pfctl -a bhyvesupd/NAME -f -`` and flushed with ``-F all``; the user's pf.conf
calls the anchors (:func:`supervisor.hostcheck.checks.pf_anchor_lines`) and is never
rewritten. The rules: ``nat`` of the network out of the external interface, one ``rdr``
per port forward, and ``pass`` rules (``quick``, so a later ``block`` in the user's
ruleset does not undo them) for the network's traffic and the forwarded ports.

ipfw: in-kernel NAT shares one instance per external interface among every network that
leaves by it (an inbound ``nat`` rule cannot tell networks apart, and with
``net.inet.ip.fw.one_pass=1`` the first ``nat`` match ends the search), so the rule set
is rebuilt as a whole: ``delete set S``, one ``nat N config`` per interface (with every
port forward as ``redirect_port``), then per network an outbound ``nat`` rule and per
interface one inbound ``nat ... to me in via IF`` rule, all in set S from the base
number on. The user's own rules in other sets are never touched.
"""

from __future__ import annotations

from collections.abc import Sequence

from supervisor.netfw.network import Network


def pf_anchor_name(anchor: str, net: Network) -> str:
    """``bhyvesupd/NAME``: where *net*'s pf rules are loaded."""
    return f"{anchor}/{net.name}"


def pf_rules(net: Network, ext_if: str) -> str:
    """The pf rules of NAT network *net* going out of *ext_if* (pf.conf syntax)."""
    subnet = net.subnet
    lines = [
        f"# bhyvesupd network {net.name}: {subnet} on {net.bridge}, NAT out of {ext_if}",
        f"nat on {ext_if} inet from {subnet} to any -> ({ext_if})",
    ]
    for f in net.port_forwards:
        lines.append(
            f"rdr on {ext_if} inet proto {f.proto} to ({ext_if}) port {f.port} "
            f"-> {f.to} port {f.toport}"
        )
    lines.append(f"pass quick on {net.bridge} inet from {subnet} to any keep state")
    for f in net.port_forwards:
        lines.append(
            f"pass in quick on {ext_if} inet proto {f.proto} from any to {f.to} "
            f"port {f.toport} keep state"
        )
    return "\n".join(lines) + "\n"


def pf_load_argv(anchor: str, net: Network) -> list[str]:
    """``pfctl -a ANCHOR/NAME -f -`` (the rules go on standard input)."""
    return ["pfctl", "-a", pf_anchor_name(anchor, net), "-f", "-"]


def pf_flush_argv(anchor: str, net: Network) -> list[str]:
    """``pfctl -a ANCHOR/NAME -F all``: the network's rules gone, nothing else."""
    return ["pfctl", "-a", pf_anchor_name(anchor, net), "-F", "all"]


def ipfw_commands(
    nets: Sequence[tuple[Network, str]],
    *,
    rule_set: int,
    rule_base: int,
    nat_base: int,
) -> list[list[str]]:
    """The ipfw commands that make the daemon's set *rule_set* NAT every network of
    *nets* (``(network, external interface)`` pairs), replacing what it held before.

    Rules are numbered from *rule_base* in steps of 10; NAT instances from *nat_base*,
    one per external interface in the order they first appear.
    """
    cmds: list[list[str]] = [["ipfw", "-q", "delete", "set", str(rule_set)]]
    nat_ids: dict[str, int] = {}
    for _, ext in nets:
        nat_ids.setdefault(ext, nat_base + len(nat_ids))
    for ext, nat_id in nat_ids.items():
        config = ["if", ext, "same_ports", "unreg_only", "reset"]
        for net, e in nets:
            if e != ext:
                continue
            for f in net.port_forwards:
                config += ["redirect_port", f.proto, f"{f.to}:{f.toport}", str(f.port)]
        cmds.append(["ipfw", "-q", "nat", str(nat_id), "config", *config])
    number = rule_base
    for net, ext in nets:
        cmds.append(
            [
                "ipfw", "-q", "add", str(number), "set", str(rule_set),
                "nat", str(nat_ids[ext]), "ip4", "from", str(net.subnet), "to", "any",
                "out", "via", ext,
            ]
        )  # fmt: skip
        number += 10
    for ext, nat_id in nat_ids.items():
        cmds.append(
            [
                "ipfw", "-q", "add", str(number), "set", str(rule_set),
                "nat", str(nat_id), "ip4", "from", "any", "to", "me", "in", "via", ext,
            ]
        )  # fmt: skip
        number += 10
    return cmds


def ipfw_stale_nat(previous: Sequence[int], current: Sequence[list[str]]) -> list[list[str]]:
    """``ipfw nat N delete`` for instances of *previous* that *current* no longer has."""
    kept = {int(c[3]) for c in current if len(c) > 4 and c[2] == "nat" and c[4] == "config"}
    return [["ipfw", "-q", "nat", str(n), "delete"] for n in previous if n not in kept]
