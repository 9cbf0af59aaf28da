"""The simulated ``sysctl(8)`` over the tree :func:`hardware.sysctl_tree` derives.

Shapes as FreeBSD prints them: ``name: value`` per leaf, ``-n`` for the value alone,
a node name (``hw.vmm``) expanding to every leaf below it, ``sysctl: unknown oid
'x'`` on standard error with exit 1 (``-q`` keeps the status but not the message,
``-i`` ignores the OID). A few tunables an operator sets on a bhyve host are
writable (``name=value`` prints ``name: old -> new``); the rest are read-only.
"""

from __future__ import annotations

import getopt
import sys
from collections.abc import Sequence
from typing import TextIO

import attrs

from supervisor.vmm.sim import hardware
from supervisor.vmm.sim.hardware import Hardware, SysctlValue

_USAGE = (
    "usage: sysctl [-bdeFhiJNlnoqTtWx] [ -B <bufsize> ] [-f filename] name[=value] ...\n"
    "       sysctl [-bdeFhJlNnoqTtWx] [ -B <bufsize> ] -a\n"
)

#: OIDs the simulated host lets ``sysctl name=value`` change.
WRITABLE: frozenset[str] = frozenset(
    {
        "net.inet.ip.forwarding",
        "net.link.tap.up_on_open",
        "net.link.bridge.pfil_member",
        "net.link.bridge.pfil_bridge",
    }
)


def lookup(tree: dict[str, SysctlValue], name: str) -> list[tuple[str, SysctlValue]]:
    """The leaves *name* designates: itself, or every leaf below a node."""
    if name in tree:
        return [(name, tree[name])]
    prefix = name.rstrip(".") + "."
    return [(k, v) for k, v in tree.items() if k.startswith(prefix)]


def _line(name: str, value: SysctlValue, *, value_only: bool, name_only: bool, eq: bool) -> str:
    if name_only:
        return f"{name}\n"
    if value_only:
        return f"{value}\n"
    return f"{name}{'=' if eq else ': '}{value}\n"


def run(root: str, hw: Hardware, args: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Run ``sysctl ARGS`` against *hw* (saved back under *root* when a value is set)."""
    try:
        opts, names = getopt.getopt(list(args), "aB:bdeFf:hiJlNnoqTtWx")
    except getopt.GetoptError as e:
        err.write(f"sysctl: {e.msg}\n{_USAGE}")
        return 1
    flags = {o for o, _ in opts}
    style = {"value_only": "-n" in flags, "name_only": "-N" in flags, "eq": "-e" in flags}
    quiet, ignore = "-q" in flags, "-i" in flags
    tree = hardware.sysctl_tree(hw)
    if "-a" in flags:
        if names:
            err.write(_USAGE)
            return 1
        for name, value in tree.items():
            out.write(_line(name, value, **style))
        return 0
    if not names:
        err.write(_USAGE)
        return 1
    status = 0
    changes: dict[str, SysctlValue | None] = {}
    for arg in names:
        name, setting, new = arg.partition("=")
        leaves = lookup(tree, name)
        if not leaves:
            if ignore:
                continue
            if not quiet:
                err.write(f"sysctl: unknown oid '{name}'\n")
            status = 1
            continue
        if not setting:
            for leaf, value in leaves:
                out.write(_line(leaf, value, **style))
            continue
        if len(leaves) != 1 or leaves[0][0] != name:
            err.write(f"sysctl: oid '{name}' isn't a leaf node\n")
            status = 1
            continue
        if name not in WRITABLE:
            err.write(f"sysctl: oid '{name}' is read only\n")
            status = 1
            continue
        old = tree[name]
        if isinstance(old, int):
            try:
                parsed: SysctlValue = int(new, 0)
            except ValueError:
                err.write(f"sysctl: invalid integer '{new}'\n")
                status = 1
                continue
        else:
            parsed = new
        tree[name] = parsed
        changes[name] = parsed
        if not quiet:
            out.write(f"{name}: {old} -> {parsed}\n")
    if changes:
        hardware.save(root, attrs.evolve(hw, sysctl={**hw.sysctl, **changes}))
    return status


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the installed ``/sbin/sysctl`` of the simulated host at *root*."""
    return run(root, hardware.load(root), argv[1:], sys.stdout, sys.stderr)
