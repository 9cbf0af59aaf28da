"""The simulated ``pfctl(8)``: the main ruleset and anchors, checked against pf's grammar.

Supported: ``-e``/``-d`` (enable/disable), ``[-a ANCHOR] -f FILE|-`` (load; a rule pf
would not parse gives ``FILE:LINE: syntax error`` and status 1, loading nothing),
``[-a ANCHOR] -F all|rules|nat`` (flush), ``[-a ANCHOR] -s rules|nat|Anchors|info``
(``-sr``, ``-sn``, ``-sA``, ``-si`` too) and ``-n`` (parse only). Without pf.ko every
command fails with ``pfctl: /dev/pf: No such file or directory``. The grammar is the
subset of pf.conf(5) a bhyve host uses (facts §9): macros, ``nat``/``rdr``/``match``/
``pass``/``block`` rules and the ``anchor``/``nat-anchor``/``rdr-anchor`` calls.
"""

from __future__ import annotations

import getopt
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from supervisor.host import Host
from supervisor.vmm.sim import hardware, state
from supervisor.vmm.sim.host import ROOTED

DOC = "pf"

_ADDR = r"(?:!?\s*(?:any|self|[0-9.]+(?:/\d+)?|\([A-Za-z0-9_.]+\)|<[A-Za-z0-9_]+>))"
_PORT = r"(?:port\s+(?:=\s*)?\d+(?::\d+)?)"
_PROTO = r"(?:proto\s+(?:tcp|udp|icmp|\{\s*tcp\s*,?\s*udp\s*\}))"
_ON = r"(?:on\s+[A-Za-z0-9_.]+)"
_FROMTO = rf"(?:all|from\s+{_ADDR}(?:\s+{_PORT})?\s+to\s+{_ADDR}(?:\s+{_PORT})?)"
_ANCHOR_NAME = r'"[A-Za-z0-9_./*-]+"'

RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        (
            "nat",
            rf"nat(?:\s+pass)?\s+{_ON}\s+(?:inet\s+)?(?:{_PROTO}\s+)?{_FROMTO}"
            rf"\s+->\s+{_ADDR}(?:\s+{_PORT})?(?:\s+round-robin)?",
        ),
        (
            "nat",
            rf"rdr(?:\s+pass)?\s+{_ON}\s+(?:inet\s+)?(?:{_PROTO}\s+)?"
            rf"(?:from\s+{_ADDR}\s+)?to\s+{_ADDR}(?:\s+{_PORT})?\s+->\s+{_ADDR}"
            rf"(?:\s+{_PORT})?",
        ),
        ("nat", rf"(?:nat|rdr|binat)-anchor\s+{_ANCHOR_NAME}(?:\s+{_ON})?(?:\s+{_FROMTO})?"),
        (
            "filter",
            rf"match\s+(?:in|out)\s+{_ON}\s+(?:inet\s+)?{_FROMTO}"
            rf"\s+nat-to\s+{_ADDR}",
        ),
        (
            "filter",
            rf"(?:pass|block(?:\s+(?:drop|return))?)(?:\s+(?:in|out))?(?:\s+log)?"
            rf"(?:\s+quick)?(?:\s+{_ON})?(?:\s+inet)?(?:\s+{_PROTO})?(?:\s+{_FROMTO})?"
            rf"(?:\s+(?:keep|modulate|synproxy)\s+state)?",
        ),
        ("filter", rf"anchor\s+{_ANCHOR_NAME}(?:\s+(?:in|out))?(?:\s+{_ON})?(?:\s+{_FROMTO})?"),
        ("option", r"set\s+\S+(?:\s+.*)?"),
        ("option", r"scrub\s+.*"),
    )
)

_MACRO_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"]*)"')


class PfSyntaxError(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def parse(text: str) -> list[tuple[str, str]]:
    """(kind, rule) for every rule of a pf.conf text, macros expanded.

    Raises:
        PfSyntaxError: a line pf would reject (its number).
    """
    macros: dict[str, str] = {}
    rules: list[tuple[str, str]] = []
    joined = text.replace("\\\n", " ")
    for number, raw in enumerate(joined.split("\n"), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _MACRO_RE.fullmatch(line)
        if m:
            macros[m.group(1)] = m.group(2)
            continue

        def expand(match: re.Match[str], line_no: int = number) -> str:
            if match.group(1) not in macros:
                raise PfSyntaxError(line_no)
            return macros[match.group(1)]

        line = re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", expand, line)
        line = " ".join(line.split())
        for kind, pattern in RULES:
            if pattern.fullmatch(line):
                rules.append((kind, line))
                break
        else:
            raise PfSyntaxError(number)
    return rules


def _default() -> dict[str, Any]:
    return {"enabled": False, "anchors": {}}


def anchors(root: str) -> dict[str, list[list[str]]]:
    """Loaded rules per anchor (``""`` is the main ruleset), for tests."""
    return dict(state.read(root, DOC, _default)["anchors"])


_USAGE = (
    "usage: pfctl [-AdeghMmNnOPqRrvz] [-a anchor] [-D macro=value] [-F modifier]\n"
    "\t[-f file] [-i interface] [-K host | network]\n"
    "\t[-k host | network | gateway | label | id] [-o level] [-p device]\n"
    "\t[-s modifier] [-t table -T command [address ...]] [-x level]\n"
)


def run(root: str, args: Sequence[str], stdin: TextIO, out: TextIO, err: TextIO) -> int:
    try:
        opts, rest = getopt.getopt(list(args), "a:deF:f:nqs:v")
    except getopt.GetoptError:
        err.write(_USAGE)
        return 1
    if rest:
        err.write(_USAGE)
        return 1
    if "pf.ko" not in hardware.load(root).klds:
        err.write("pfctl: /dev/pf: No such file or directory\n")
        return 1
    values = dict(opts)
    flags = {o for o, _ in opts}
    anchor = values.get("-a", "").strip("/")
    quiet = "-q" in flags
    with state.locked(root, DOC, _default) as doc:
        table: dict[str, list[list[str]]] = doc["anchors"]
        if "-e" in flags:
            if doc["enabled"]:
                err.write("pfctl: pf already enabled\n")
                return 1
            doc["enabled"] = True
            if not quiet:
                err.write("pf enabled\n")
        if "-d" in flags:
            if not doc["enabled"]:
                err.write("pfctl: pf not enabled\n")
                return 1
            doc["enabled"] = False
            if not quiet:
                err.write("pf disabled\n")
        if "-F" in values:
            what = values["-F"]
            kinds = {"all": ("nat", "filter", "option"), "rules": ("filter",), "nat": ("nat",)}.get(
                what
            )
            if kinds is None:
                err.write(f"pfctl: Unknown flush modifier '{what}'\n")
                return 1
            table[anchor] = [r for r in table.get(anchor, []) if r[0] not in kinds]
            if not table[anchor]:
                table.pop(anchor)
            if not quiet:
                for k in kinds:
                    if k != "option":
                        err.write(f"{'rules' if k == 'filter' else 'nat'} cleared\n")
        if "-f" in values:
            source = values["-f"]
            if source == "-":
                text, label = stdin.read(), "stdin"
            else:
                try:
                    with open(Host(root=root, rooted=ROOTED).path(source), encoding="utf-8") as f:
                        text = f.read()
                except OSError as exc:
                    err.write(f"pfctl: {source}: {exc.strerror}\n")
                    return 1
                label = source
            try:
                rules = parse(text)
            except PfSyntaxError as exc:
                err.write(f"{label}:{exc.line}: syntax error\n")
                return 1
            if "-n" not in flags:
                if rules:
                    table[anchor] = [list(r) for r in rules]
                else:
                    table.pop(anchor, None)
        if "-s" in values:
            what = values["-s"]
            if what in ("r", "rules", "n", "nat"):
                kind = "filter" if what[0] == "r" else "nat"
                for k, rule in table.get(anchor, []):
                    if k == kind:
                        out.write(rule + "\n")
            elif what in ("A", "Anchors"):
                prefix = f"{anchor}/" if anchor else ""
                for name in sorted(table):
                    if name and name.startswith(prefix):
                        out.write(f"  {name}\n")
            elif what in ("i", "info"):
                out.write(f"Status: {'Enabled' if doc['enabled'] else 'Disabled'}\n")
            else:
                err.write(f"pfctl: Unknown show modifier '{what}'\n")
                return 1
    return 0


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the installed ``/sbin/pfctl`` of the simulated host at *root*."""
    return run(root, argv[1:], sys.stdin, sys.stdout, sys.stderr)
