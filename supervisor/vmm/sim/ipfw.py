"""The simulated ``ipfw(8)``: numbered rules in sets and in-kernel NAT instances.

Supported: ``[-q] add [NUM] [set N] ACTION BODY``, ``[-q] delete NUM...``,
``[-q] delete set N``, ``list``/``show``, ``nat N config ...``, ``nat N delete``,
``nat show config``. Rules are checked against the subset of ipfw's grammar a bhyve
host uses (facts §9): ``nat N``/``allow``/``deny``/``skipto N``/``count`` actions over
``ip|ip4|all|tcp|udp from ADDR [port] to ADDR [port] [in|out] [via|recv|xmit IF]``.
Without ipfw.ko every command fails; ``nat`` loads ipfw_nat on demand as ipfw does.
``list`` prints ``NNNNN rule`` lines and, like ipfw, the default rule 65535.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import attrs

from supervisor.vmm.sim import hardware, state

DOC = "ipfw"

_ADDR = r"(?:not\s+)?(?:any|me|[0-9.]+(?:/\d+)?|table\(\d+\))"
_PORTS = r"(?:\s+\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)?"
_ACTION = r"(?:nat\s+\d+|allow|accept|pass|permit|deny|drop|reset|skipto\s+\d+|count)"
_OPTION = r"(?:in|out|via\s+\S+|recv\s+\S+|xmit\s+\S+|keep-state|established|setup)"
RULE_RE = re.compile(
    rf"{_ACTION}\s+(?:ip|ip4|all|tcp|udp|icmp)\s+from\s+{_ADDR}{_PORTS}\s+to\s+{_ADDR}"
    rf"{_PORTS}(?:\s+{_OPTION})*"
)
NAT_CONFIG_RE = re.compile(
    r"(?:(?:if|ip)\s+\S+|same_ports|unreg_only|unreg_cgn|reset|deny_in|log|reverse|"
    r"redirect_port\s+(?:tcp|udp)\s+[0-9.]+:\d+(?:-\d+)?\s+\d+(?:-\d+)?)"
)


def _default() -> dict[str, Any]:
    return {"rules": [], "nat": {}}


def state_of(root: str) -> dict[str, Any]:
    """Rules and NAT instances (tests)."""
    return state.read(root, DOC, _default)


class _Fail(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _add(doc: dict[str, Any], words: list[str], out: TextIO, quiet: bool) -> None:
    number = None
    if words and words[0].isdigit():
        number = int(words.pop(0))
    rule_set = 0
    if len(words) >= 2 and words[0] == "set":
        if not words[1].isdigit() or int(words[1]) > 31:
            raise _Fail(f"illegal set {words[1]}")
        rule_set = int(words[1])
        words = words[2:]
    body = " ".join(words)
    if not RULE_RE.fullmatch(body):
        raise _Fail(f"invalid rule: {body}" if body else "missing action")
    rules: list[dict[str, Any]] = doc["rules"]
    if number is None:
        number = (max((r["number"] for r in rules), default=0) // 100 + 1) * 100
    if not 1 <= number <= 65534:
        raise _Fail(f"rule number {number} is out of range")
    rules.append({"number": number, "set": rule_set, "body": body})
    rules.sort(key=lambda r: int(r["number"]))
    if not quiet:
        out.write(f"{number:05d} {body}\n")


def _command(
    root: str,
    hw: hardware.Hardware,
    doc: dict[str, Any],
    words: list[str],
    out: TextIO,
    quiet: bool,
) -> None:
    cmd, rest = words[0], words[1:]
    if cmd == "add":
        _add(doc, rest, out, quiet)
    elif cmd == "delete":
        if len(rest) == 2 and rest[0] == "set":
            doc["rules"] = [r for r in doc["rules"] if str(r["set"]) != rest[1]]
        else:
            for n in rest:
                before = len(doc["rules"])
                doc["rules"] = [r for r in doc["rules"] if str(r["number"]) != n]
                if len(doc["rules"]) == before:
                    raise _Fail(f"rule {n}: setsockopt(IP_FW_XDEL): No such process")
    elif cmd in ("list", "show", "-S"):
        for r in doc["rules"]:
            shown = f"set {r['set']} " if "-S" in words else ""
            out.write(f"{r['number']:05d} {shown}{r['body']}\n")
        out.write("65535 deny ip from any to any\n")
    elif cmd == "nat":
        if rest[:2] == ["show", "config"]:
            for n in sorted(doc["nat"], key=int):
                out.write(f"ipfw nat {n} config {doc['nat'][n]}\n")
        elif len(rest) >= 2 and rest[0].isdigit() and rest[1] == "config":
            config = " ".join(rest[2:])
            pos = 0
            while pos < len(config):
                m = NAT_CONFIG_RE.match(config, pos)
                if m is None:
                    raise _Fail(f"unrecognised option ``{config[pos:].split()[0]}''")
                pos = m.end()
                while pos < len(config) and config[pos] == " ":
                    pos += 1
            if "ipfw_nat.ko" not in hw.klds:
                hardware.save(root, attrs.evolve(hw, klds=(*hw.klds, "libalias.ko", "ipfw_nat.ko")))
            doc["nat"][rest[0]] = config
        elif len(rest) == 2 and rest[0].isdigit() and rest[1] == "delete":
            if doc["nat"].pop(rest[0], None) is None:
                raise _Fail(f"nat {rest[0]}: setsockopt(IP_FW_NAT44_DESTROY): No such process")
        else:
            raise _Fail(f"invalid nat command: {' '.join(rest)}")
    else:
        raise _Fail(f"bad command `{cmd}'")


def run(root: str, args: Sequence[str], out: TextIO, err: TextIO) -> int:
    words = list(args)
    quiet = False
    while words and words[0].startswith("-"):
        if words[0] != "-q":
            err.write(f"ipfw: illegal option -- {words[0].lstrip('-')}\n")
            return 64
        quiet = True
        words.pop(0)
    hw = hardware.load(root)
    if "ipfw.ko" not in hw.klds:
        err.write("ipfw: retrieving config failed: Protocol not available\n")
        return 71
    if not words:
        err.write('usage: ipfw [options]\ndo "ipfw -h" or "man ipfw" for details\n')
        return 64
    try:
        with state.locked(root, DOC, _default) as doc:
            _command(root, hw, doc, words, out, quiet)
    except _Fail as exc:
        err.write(f"ipfw: {exc.message}\n")
        return 64
    return 0


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the installed ``/sbin/ipfw`` of the simulated host at *root*."""
    return run(root, argv[1:], sys.stdout, sys.stderr)
