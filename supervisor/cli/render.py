"""How bhyvesupctl shows what the daemon says: tables, key/value blocks, event lines.

Every function here is pure: it takes the JSON the daemon sent (dicts, lists, numbers) and
returns text. Nothing is printed and no socket is touched, so the formats are tested
without a daemon and one-shot verbs and the interactive shell print the same thing.

Three output modes, chosen per verb:

* human (default): aligned columns with a header, durations as ``H:MM:SS``;
* scripted (``-H``, as ``zfs -H``): no header, one tab between fields, nothing padded, so
  ``cut -f`` and ``while read`` work; with ``-p`` numbers are exact (seconds, not
  ``0:01:02``);
* ``--json``: the RPC result unchanged, so a script sees exactly what the daemon said.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from supervisor._record import Record

__all__ = [
    "STATUS_COLUMNS",
    "Column",
    "format_duration",
    "format_table",
    "render_daemon_status",
    "render_event",
    "render_guest_info",
    "render_json",
    "render_json_line",
    "render_last_exit",
    "render_reload",
    "render_status",
    "select_columns",
    "status_summary",
]

#: What a missing value looks like in a table cell.
NONE: Final = "-"


def format_duration(seconds: float | None) -> str:
    """A duration as ``H:MM:SS``, with whole days in front: ``2 days, 3:04:05``.

    Fractions of a second are dropped (an uptime is not a stopwatch); None and negative
    values (clock skew between daemon and reader) give ``-``.
    """
    if seconds is None or seconds < 0:
        return NONE
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    if days:
        return f"{days} day{'s' if days != 1 else ''}, {clock}"
    return clock


def render_json(value: Any) -> str:
    """*value* as indented JSON with a stable key order, for ``--json``."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def render_json_line(value: Any) -> str:
    """*value* as compact JSON on one line, for streams (``events --json``)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------- tables


@attrs.frozen(repr=False)
class Column(Record):
    """One column of a table.

    Args:
        header: the heading (also the name ``-o`` selects it by, lowercased).
        human: the cell text for people.
        exact: the cell text for ``-p`` (exact numbers); defaults to *human*.
        right: right-align the column (numbers).
    """

    header: str
    human: Callable[[Mapping[str, Any]], str]
    exact: Callable[[Mapping[str, Any]], str] | None = None
    right: bool = False

    @property
    def key(self) -> str:
        return self.header.lower()

    def cell(self, row: Mapping[str, Any], *, exact: bool) -> str:
        fn = self.exact if exact and self.exact is not None else self.human
        return fn(row)


def format_table(
    columns: Sequence[Column],
    rows: Iterable[Mapping[str, Any]],
    *,
    scripted: bool = False,
    exact: bool = False,
) -> str:
    """Rows as a table; the empty string when there are no rows and *scripted*.

    Args:
        columns: what to show, in order.
        rows: one mapping per row (a GuestInfo, say).
        scripted: no header, fields separated by one tab, no padding (``-H``).
        exact: exact numbers instead of human ones (``-p``).
    """
    cells = [[c.cell(r, exact=exact) for c in columns] for r in rows]
    if scripted:
        return "\n".join("\t".join(line) for line in cells)
    table = [[c.header for c in columns], *cells]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    out = []
    for line in table:
        parts = [
            text.rjust(width) if col.right else text.ljust(width)
            for col, text, width in zip(columns, line, widths, strict=True)
        ]
        out.append("  ".join(parts).rstrip())
    return "\n".join(out)


def _text(value: Any) -> str:
    return NONE if value is None else str(value)


def render_last_exit(info: Mapping[str, Any], *, exact: bool = False) -> str:
    """The LAST-EXIT cell: ``exit 3 (triple fault), 0:05:00 ago``, or ``-``."""
    last = info.get("last_exit")
    if not isinstance(last, Mapping):
        return NONE
    text = str(last.get("description") or _exit_fallback(last))
    ago = last.get("ago")
    if ago is not None:
        text += f", {ago:g}s ago" if exact else f", {format_duration(ago)} ago"
    return text


def _exit_fallback(last: Mapping[str, Any]) -> str:
    if last.get("signal") is not None:
        return f"signal {last['signal']}"
    return f"exit {_text(last.get('code'))}"


def _uptime(info: Mapping[str, Any]) -> str:
    return format_duration(info.get("uptime"))


def _uptime_exact(info: Mapping[str, Any]) -> str:
    uptime = info.get("uptime")
    return NONE if uptime is None else f"{uptime:g}"


#: The ``status``/``list`` table, in the order shown.
STATUS_COLUMNS: Final[tuple[Column, ...]] = (
    Column("NAME", lambda i: _text(i.get("name"))),
    Column("STATE", lambda i: _text(i.get("state"))),
    Column("PID", lambda i: _text(i.get("pid")), right=True),
    Column("UPTIME", _uptime, _uptime_exact, right=True),
    Column("BOOTS", lambda i: _text(i.get("boot_count")), right=True),
    Column(
        "LAST-EXIT",
        lambda i: render_last_exit(i),
        lambda i: render_last_exit(i, exact=True),
    ),
)


def select_columns(names: Sequence[str] | None) -> tuple[Column, ...]:
    """The status columns *names* ask for (``-o name,state``); all of them for None.

    Raises:
        ValueError: a name is not a column; the message lists the valid ones.
    """
    if not names:
        return STATUS_COLUMNS
    by_key = {c.key: c for c in STATUS_COLUMNS}
    chosen = []
    for name in names:
        column = by_key.get(name.strip().lower())
        if column is None:
            valid = ", ".join(by_key)
            raise ValueError(f"-o: unknown column {name!r} (choose from {valid})")
        chosen.append(column)
    return tuple(chosen)


def render_status(
    infos: Iterable[Mapping[str, Any]],
    *,
    columns: Sequence[Column] = STATUS_COLUMNS,
    scripted: bool = False,
    exact: bool = False,
) -> str:
    """The ``status`` table for GuestInfo objects."""
    return format_table(columns, infos, scripted=scripted, exact=exact)


def status_summary(info: Mapping[str, Any]) -> str:
    """A guest's state in supervisorctl's words: ``running pid 123, uptime 0:01:02``.

    Used after an action (``web1: started, running pid 123, uptime 0:00:01``).
    """
    state = _text(info.get("state"))
    bits = []
    if info.get("pid") is not None:
        bits.append(f"pid {info['pid']}")
    if info.get("uptime") is not None:
        bits.append(f"uptime {format_duration(info['uptime'])}")
    if info.get("restart_in") is not None:
        bits.append(f"restart in {format_duration(info['restart_in'])}")
    if state in ("crashed", "fatal", "backoff") and info.get("last_error"):
        bits.append(str(info["last_error"]))
    elif not bits and isinstance(info.get("last_exit"), Mapping):
        bits.append(f"last {render_last_exit(info)}")
    return f"{state} {', '.join(bits)}" if bits else state


# --------------------------------------------------------------------------- key/value


def _kv_block(pairs: Sequence[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in pairs), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}".rstrip() for k, v in pairs)


def _yes_no(value: Any) -> str:
    if value is None:
        return NONE
    return "enable" if value else "disable"


def _memory(kib: Any) -> str:
    if not isinstance(kib, int):
        return NONE
    return f"{kib} KiB" if kib % 1024 else f"{kib // 1024} MiB"


def render_guest_info(info: Mapping[str, Any]) -> str:
    """``dominfo``: one ``Key: value`` line per fact, like ``virsh dominfo``."""
    last = info.get("last_exit")
    last_when = NONE
    last_runtime = NONE
    if isinstance(last, Mapping):
        if last.get("ago") is not None:
            last_when = f"{format_duration(last['ago'])} ago"
        last_runtime = format_duration(last.get("runtime"))
    pairs = [
        ("Name", _text(info.get("name"))),
        ("UUID", _text(info.get("uuid"))),
        ("State", _text(info.get("state"))),
        ("Reason", _text(info.get("reason"))),
        ("PID", _text(info.get("pid"))),
        ("Uptime", format_duration(info.get("uptime"))),
        ("Boot count", _text(info.get("boot_count"))),
        ("Last exit", render_last_exit({"last_exit": last}).split(", ")[0]),
        ("Last exit when", last_when),
        ("Last run time", last_runtime),
        ("Recent crashes", _text(info.get("recent_crashes"))),
        ("Restart in", format_duration(info.get("restart_in"))),
        ("Last error", _text(info.get("last_error"))),
        ("Memory", _memory(info.get("memory_kib"))),
        ("vCPUs", _text(info.get("vcpus"))),
        ("Autostart", _yes_no(info.get("autostart"))),
        ("Persistent", "yes" if info.get("persistent") else "no"),
        ("Consoles attached", _text(info.get("console_attached"))),
    ]
    return _kv_block(pairs)


def render_daemon_status(status: Mapping[str, Any]) -> str:
    """``daemon-status``: the known facts first, anything newer after them."""
    known = ("version", "pid", "uptime", "host_root", "guests", "states")
    pairs: list[tuple[str, str]] = [
        ("Version", _text(status.get("version"))),
        ("PID", _text(status.get("pid"))),
        ("Uptime", format_duration(status.get("uptime"))),
        ("Host root", _text(status.get("host_root"))),
        ("Guests", _text(status.get("guests"))),
    ]
    states = status.get("states")
    if isinstance(states, Mapping):
        shown = ", ".join(f"{k} {v}" for k, v in sorted(states.items()) if v)
        pairs.append(("States", shown or NONE))
    for key in sorted(set(status) - set(known)):
        value = status[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        pairs.append((key.replace("_", " ").capitalize(), text))
    return _kv_block(pairs)


def _reload_error(error: Any) -> str:
    if isinstance(error, Mapping):
        where = error.get("name") or error.get("file") or error.get("path")
        message = error.get("message") or error.get("error") or json.dumps(error, sort_keys=True)
        return f"{where}: {message}" if where else str(message)
    return str(error)


def render_reload(result: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``reload``: a summary for stdout and one line per error for stderr.

    Only the non-empty groups are listed: ``added: web3`` rather than six lines of
    nothing. With nothing changed at all, the summary says so.
    """
    lines = []
    for key in ("added", "removed", "changed", "kept"):
        names = result.get(key) or []
        if names:
            lines.append(f"{key}: {', '.join(str(n) for n in names)}")
    unchanged = result.get("unchanged") or []
    if not lines:
        lines.append(f"no changes ({len(unchanged)} unchanged)")
    elif unchanged:
        lines.append(f"unchanged: {len(unchanged)}")
    errors = [_reload_error(e) for e in result.get("errors") or []]
    return "\n".join(lines), errors


# --------------------------------------------------------------------------- events


def render_event(event: Mapping[str, Any]) -> str:
    """One line for an event notification: ``guest.state web1 running (booted) pid 42``."""
    kind = _text(event.get("type"))
    if kind == "guest.state":
        line = f"{kind} {_text(event.get('name'))} {_text(event.get('state'))}"
        if event.get("reason"):
            line += f" ({event['reason']})"
        if event.get("pid") is not None:
            line += f" pid {event['pid']}"
        if event.get("boot_count") is not None:
            line += f" boots {event['boot_count']}"
        return line
    if kind == "events.lost":
        return f"{kind} {_text(event.get('count'))} events were dropped"
    rest = {k: v for k, v in event.items() if k not in ("type", "name")}
    line = kind
    if event.get("name") is not None:
        line += f" {event['name']}"
    if rest:
        line += " " + " ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True)}"
            for k, v in sorted(rest.items())
        )
    return line
