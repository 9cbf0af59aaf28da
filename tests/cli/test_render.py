from __future__ import annotations

import json
from typing import Any

import pytest

from supervisor.cli import render


def guest(**over: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": "web1",
        "uuid": "c7a5fdbd-cdaf-9455-926a-d65c16db1809",
        "state": "running",
        "reason": "booted",
        "pid": 123,
        "boot_count": 2,
        "uptime": 62.7,
        "last_exit": None,
        "recent_crashes": 0,
        "restart_in": None,
        "last_error": None,
        "console_attached": 0,
        "memory_kib": 1048576,
        "vcpus": 2,
        "autostart": True,
        "persistent": True,
    }
    info.update(over)
    return info


TRIPLE_FAULT = {
    "code": 3,
    "signal": None,
    "description": "exit 3 (triple fault)",
    "runtime": 4000.0,
    "ago": 300.0,
}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0:00:00"),
        (62.9, "0:01:02"),
        (3600 * 5 + 7, "5:00:07"),
        (86400 + 3723, "1 day, 1:02:03"),
        (2 * 86400, "2 days, 0:00:00"),
        (None, "-"),
        (-3, "-"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert render.format_duration(seconds) == text


def test_status_table_aligns_columns_and_right_aligns_numbers() -> None:
    rows = [
        guest(),
        guest(
            name="db-primary",
            state="crashed",
            pid=None,
            uptime=None,
            boot_count=11,
            last_exit=TRIPLE_FAULT,
        ),
    ]
    lines = render.render_status(rows).splitlines()
    assert lines[0].split() == ["NAME", "STATE", "PID", "UPTIME", "BOOTS", "LAST-EXIT"]
    assert lines[1].split() == ["web1", "running", "123", "0:01:02", "2", "-"]
    assert lines[2].startswith("db-primary  crashed")
    assert lines[2].endswith("exit 3 (triple fault), 0:05:00 ago")
    # Numbers line up on their right edge.
    assert lines[1].index("123") + 3 == lines[0].index("PID") + 3
    assert lines[1].index(" 2 ") + 2 == lines[2].index("11") + 2


def test_scripted_status_is_tab_separated_without_header() -> None:
    text = render.render_status([guest(), guest(name="b", pid=None)], scripted=True)
    assert text.splitlines() == [
        "web1\trunning\t123\t0:01:02\t2\t-",
        "b\trunning\t-\t0:01:02\t2\t-",
    ]


def test_exact_numbers_give_seconds() -> None:
    text = render.render_status([guest(last_exit=TRIPLE_FAULT)], scripted=True, exact=True)
    assert text == "web1\trunning\t123\t62.7\t2\texit 3 (triple fault), 300s ago"


def test_select_columns_by_name() -> None:
    columns = render.select_columns(["name", "STATE"])
    assert render.render_status([guest()], columns=columns, scripted=True) == "web1\trunning"


def test_select_columns_rejects_unknown_name_and_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown column 'cpu' \(choose from name, state"):
        render.select_columns(["name", "cpu"])


def test_empty_table_has_only_the_header_or_nothing_when_scripted() -> None:
    assert render.render_status([]).split() == [c.header for c in render.STATUS_COLUMNS]
    assert render.render_status([], scripted=True) == ""


def test_last_exit_without_description_names_the_signal() -> None:
    last = {"code": None, "signal": 9, "description": "", "runtime": None, "ago": None}
    assert render.render_last_exit({"last_exit": last}) == "signal 9"


@pytest.mark.parametrize(
    ("info", "summary"),
    [
        (guest(), "running pid 123, uptime 0:01:02"),
        (guest(state="shutoff", pid=None, uptime=None), "shutoff"),
        (
            guest(state="shutoff", pid=None, uptime=None, last_exit=TRIPLE_FAULT),
            "shutoff last exit 3 (triple fault), 0:05:00 ago",
        ),
        (
            guest(state="backoff", pid=None, uptime=None, restart_in=4.0, last_error="exit 4"),
            "backoff restart in 0:00:04, exit 4",
        ),
    ],
)
def test_status_summary_reads_like_supervisorctl(info: dict[str, Any], summary: str) -> None:
    assert render.status_summary(info) == summary


def test_guest_info_block() -> None:
    text = render.render_guest_info(guest(last_exit=TRIPLE_FAULT, memory_kib=524288))
    lines = dict(line.split(":", 1) for line in text.splitlines())
    fields = {k.strip(): v.strip() for k, v in lines.items()}
    assert fields["Name"] == "web1"
    assert fields["UUID"] == "c7a5fdbd-cdaf-9455-926a-d65c16db1809"
    assert fields["State"] == "running"
    assert fields["Reason"] == "booted"
    assert fields["PID"] == "123"
    assert fields["Boot count"] == "2"
    assert fields["Last exit"] == "exit 3 (triple fault)"
    assert fields["Last exit when"] == "0:05:00 ago"
    assert fields["Last run time"] == "1:06:40"
    assert fields["Memory"] == "512 MiB"
    assert fields["vCPUs"] == "2"
    assert fields["Autostart"] == "enable"
    # Values start in one column.
    starts = {line.index(line.split(":", 1)[1].strip()) for line in text.splitlines()}
    assert len(starts) == 1


def test_memory_that_is_not_whole_mebibytes_shows_kib() -> None:
    text = render.render_guest_info(guest(memory_kib=1000))
    assert "Memory:" in text
    assert "1000 KiB" in text


def test_daemon_status_lists_nonzero_states_and_unknown_keys() -> None:
    text = render.render_daemon_status(
        {
            "version": "0.1.0",
            "pid": 77,
            "uptime": 3600,
            "host_root": "/",
            "guests": 3,
            "states": {"running": 2, "shutoff": 1, "fatal": 0},
            "socket": "/var/run/bhyvesupd/bhyvesupd.sock",
        }
    )
    assert "States:" in text
    assert "running 2, shutoff 1" in text
    assert "fatal" not in text
    assert "Uptime:" in text
    assert "1:00:00" in text
    assert "/var/run/bhyvesupd/bhyvesupd.sock" in text


def test_reload_summary_shows_only_what_changed_and_errors_apart() -> None:
    summary, errors = render.render_reload(
        {
            "added": ["web3"],
            "removed": [],
            "changed": ["db"],
            "unchanged": ["a", "b"],
            "kept": [],
            "errors": [{"file": "bad.xml", "message": "memory: must be > 0, got 0"}, "oops"],
        }
    )
    assert summary.splitlines() == ["added: web3", "changed: db", "unchanged: 2"]
    assert errors == ["bad.xml: memory: must be > 0, got 0", "oops"]


def test_reload_with_nothing_changed_says_so() -> None:
    summary, errors = render.render_reload({"unchanged": ["a"], "errors": []})
    assert summary == "no changes (1 unchanged)"
    assert errors == []


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            {
                "type": "guest.state",
                "name": "web1",
                "state": "running",
                "reason": "booted",
                "pid": 42,
                "boot_count": 1,
            },
            "guest.state web1 running (booted) pid 42 boots 1",
        ),
        (
            {"type": "guest.state", "name": "web1", "state": "shutoff", "reason": "", "pid": None},
            "guest.state web1 shutoff",
        ),
        ({"type": "guest.defined", "name": "web2"}, "guest.defined web2"),
        ({"type": "events.lost", "count": 7}, "events.lost 7 events were dropped"),
        (
            {"type": "daemon.reload", "added": ["x"], "errors": []},
            'daemon.reload added=["x"] errors=[]',
        ),
    ],
)
def test_event_lines(event: dict[str, Any], line: str) -> None:
    assert render.render_event(event) == line


def test_json_renderings_parse_back() -> None:
    value = {"b": [1, None], "a": "é"}
    assert json.loads(render.render_json(value)) == value
    line = render.render_json_line(value)
    assert "\n" not in line
    assert json.loads(line) == value
