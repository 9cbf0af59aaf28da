"""What ``ifconfig`` prints, parsed. Pure.

Accepts the shapes real hosts print (facts §13): trailing blanks on ``inet`` lines
(10.x), renamed bridges and extra ``groups:``, ``member: tapN flags=...`` lines for
bridge members, ``description:`` and ``Opened by PID N`` for a tap held by bhyve.
"""

from __future__ import annotations

import re

import attrs

from supervisor._record import Record

_HEAD_RE = re.compile(r"([A-Za-z0-9_.-]+): flags=([0-9a-fA-F]+)<([^>]*)>.*")


@attrs.frozen(repr=False)
class IfInfo(Record):
    name: str
    flags: frozenset[str]
    description: str | None = None
    members: tuple[str, ...] = ()
    inet: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    opened_by: int | None = None

    @property
    def up(self) -> bool:
        return "UP" in self.flags


@attrs.define(repr=False)
class _Builder(Record):
    name: str
    flags: list[str]
    description: str | None = None
    members: list[str] = attrs.field(factory=list)
    inet: list[str] = attrs.field(factory=list)
    groups: list[str] = attrs.field(factory=list)
    opened_by: int | None = None

    def build(self) -> IfInfo:
        return IfInfo(
            name=self.name,
            flags=frozenset(self.flags),
            description=self.description,
            members=tuple(self.members),
            inet=tuple(self.inet),
            groups=tuple(self.groups),
            opened_by=self.opened_by,
        )


def parse_ifconfig(text: str) -> dict[str, IfInfo]:
    """Every interface of ``ifconfig`` (or ``ifconfig NAME``) output, by name."""
    out: dict[str, IfInfo] = {}
    cur: _Builder | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line:
            continue
        if not line[0].isspace():
            m = _HEAD_RE.fullmatch(line)
            if m is None:
                continue
            if cur is not None:
                out[cur.name] = cur.build()
            cur = _Builder(m.group(1), [f for f in m.group(3).split(",") if f])
            continue
        if cur is None:
            continue
        s = line.strip()
        if s.startswith("description: "):
            cur.description = s[len("description: ") :]
        elif s.startswith("member: "):
            cur.members.append(s.split()[1])
        elif s.startswith("inet "):
            cur.inet.append(s.split()[1])
        elif s.startswith("groups: "):
            cur.groups = s.split()[1:]
        elif s.startswith("Opened by PID "):
            pid = s[len("Opened by PID ") :]
            if pid.isdigit():
                cur.opened_by = int(pid)
    if cur is not None:
        out[cur.name] = cur.build()
    return out
