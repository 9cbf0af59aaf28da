"""bhyvesupctl's daemon verbs against a small fake daemon on a real Unix socket.

The fake daemon speaks the real wire protocol (through the shared sans-IO codec), records
every request, and answers from canned GuestInfo objects, so each test checks both what
the CLI asked for and what it showed.
"""

from __future__ import annotations

import argparse
import base64
import copy
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from supervisor.cli import control
from supervisor.cli.shell import Shell
from supervisor.cli.shell import run_shell as run_shell_main
from supervisor.errors import (
    GuestNotFoundError,
    InvalidStateError,
    PermissionDeniedError,
    SupervisorError,
)
from supervisor.rpc.protocol import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    ErrorObject,
    ErrorResponse,
    Notification,
    Request,
    Response,
)

# --------------------------------------------------------------------------- fake daemon


@attrs.frozen
class Upgrade:
    """Reply with *result*, then hand the raw socket (and unread bytes) to *raw*."""

    result: Any
    raw: Callable[[socket.socket, bytes], None]


@attrs.frozen
class Stream:
    """Reply with *result*, send *events* as notifications, then close."""

    result: Any
    events: list[dict[str, Any]]


Handler = Callable[[dict[str, Any]], Any]


class FakeDaemon:
    """A thread serving canned JSON-RPC answers on a Unix socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.handlers: dict[str, Handler] = {}
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(8)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        proto = Connection("server")
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                proto.receive_data(data)
                while (event := proto.next_event()) is not NEED_DATA:
                    if isinstance(event, ConnectionClosed):
                        return
                    assert isinstance(event, Request), event
                    if self._answer(conn, proto, event):
                        return

    def _answer(self, conn: socket.socket, proto: Connection, request: Request) -> bool:
        params = dict(request.params or {})
        assert isinstance(request.params, dict | None)
        self.calls.append((request.method, params))
        handler = self.handlers.get(request.method)
        try:
            if handler is None:
                raise SupervisorError(f"method not served by the fake: {request.method}")
            result = handler(params)
        except SupervisorError as exc:
            error = ErrorObject(exc.code, exc.message, exc.to_data())
            conn.sendall(proto.send(ErrorResponse(id=request.id, error=error)))
            return False
        if isinstance(result, Upgrade):
            conn.sendall(proto.send(Response(id=request.id, result=result.result)))
            result.raw(conn, proto.switch_protocol())
            return True
        if isinstance(result, Stream):
            conn.sendall(proto.send(Response(id=request.id, result=result.result)))
            for params in result.events:
                conn.sendall(proto.send(Notification(method="event", params=params)))
            return True
        conn.sendall(proto.send(Response(id=request.id, result=result)))
        return False


def info(name: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "uuid": f"00000000-0000-0000-0000-{abs(hash(name)) % 10**12:012d}",
        "state": "running",
        "reason": "booted",
        "pid": 4242,
        "boot_count": 1,
        "uptime": 61.0,
        "last_exit": None,
        "recent_crashes": 0,
        "restart_in": None,
        "last_error": None,
        "console_attached": 0,
        "memory_kib": 524288,
        "vcpus": 2,
        "autostart": False,
        "persistent": True,
    }
    base.update(over)
    return base


class Guests:
    """The canned guests and the domain.* handlers that act on them."""

    def __init__(self, daemon: FakeDaemon) -> None:
        self.guests = {
            "db": info("db", state="shutoff", pid=None, uptime=None, boot_count=0),
            "web1": info("web1"),
        }
        for method, fn in {
            "domain.list": lambda p: [self.guests[n] for n in sorted(self.guests)],
            "domain.get_info": lambda p: self.get(p),
            "domain.get_state": lambda p: {k: self.get(p)[k] for k in ("state", "reason")},
            "domain.start": lambda p: self.change(p, state="running", pid=99, uptime=0.0),
            "domain.shutdown": lambda p: self.change(
                p, state="shutoff" if p.get("wait") else "stopping"
            ),
            "domain.destroy": lambda p: self.change(p, state="shutoff", pid=None, uptime=None),
            "domain.reboot": lambda p: self.change(p, state="rebooting"),
            "domain.reset": lambda p: self.change(p, state="running"),
            "domain.clear": lambda p: self.change(p, state="shutoff"),
            "domain.set_autostart": lambda p: self.change(p, autostart=p["autostart"]),
            "domain.undefine": lambda p: self.guests.pop(self.get(p)["name"]) and None,
            "domain.get_xml": lambda p: {
                "xml": f"<domain type='bhyve'><name>{self.get(p)['name']}</name></domain>"
            },
            "domain.define": self.define,
        }.items():
            daemon.handlers[method] = fn

    def get(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        if name not in self.guests:
            raise GuestNotFoundError(f"no guest named {name!r}", field="name")
        return self.guests[str(name)]

    def change(self, params: dict[str, Any], **changes: Any) -> dict[str, Any]:
        guest = self.get(params)
        guest.update(changes)
        return copy.deepcopy(guest)

    def define(self, params: dict[str, Any]) -> dict[str, Any]:
        xml = params["xml"]
        name = xml.split("<name>")[1].split("</name>")[0]
        self.guests[name] = info(name, state="shutoff", pid=None, uptime=None)
        return self.guests[name]


@contextmanager
def running_daemon() -> Iterator[FakeDaemon]:
    """A fake daemon on a fresh socket, stopped on exit."""
    # Unix socket paths are short (104 bytes on FreeBSD); pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="bsctl") as tmp:
        fake = FakeDaemon(str(Path(tmp) / "d.sock"))
        try:
            yield fake
        finally:
            fake.close()


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    with running_daemon() as fake:
        yield fake


@pytest.fixture
def guests(daemon: FakeDaemon) -> Guests:
    return Guests(daemon)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bhyvesupctl")
    control.add_global_options(parser)
    # As in bhyvesupctl itself: no verb starts the shell.
    sub = parser.add_subparsers(dest="verb")
    control.register(sub)
    return parser


def cli(daemon: FakeDaemon, *argv: str) -> int:
    args = build_parser().parse_args(["-s", daemon.path, *argv])
    return control.run(args)


def usage_status(*argv: str) -> int:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(list(argv))
    assert isinstance(exc.value.code, int)
    return exc.value.code


# --------------------------------------------------------------------------- status


def test_status_lists_every_guest_in_a_table(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "status") == 0
    assert daemon.calls == [("domain.list", {})]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "PID", "UPTIME", "BOOTS", "LAST-EXIT"]
    assert lines[1].split() == ["db", "shutoff", "-", "-", "0", "-"]
    assert lines[2].split() == ["web1", "running", "4242", "0:01:01", "1", "-"]


def test_list_all_is_status(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "list", "all", "-H", "-o", "name,state") == 0
    assert daemon.methods() == ["domain.list"]
    assert capsys.readouterr().out == "db\tshutoff\nweb1\trunning\n"


def test_status_of_named_guests_asks_for_each_and_reports_missing_ones(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "status", "web1", "nosuch", "-H") == 3
    assert daemon.calls == [
        ("domain.get_info", {"name": "web1"}),
        ("domain.get_info", {"name": "nosuch"}),
    ]
    captured = capsys.readouterr()
    assert captured.out == "web1\trunning\t4242\t0:01:01\t1\t-\n"
    assert captured.err == "bhyvesupctl: no guest named 'nosuch'\n"


def test_status_json_is_the_daemons_answer(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [guests.guests["db"], guests.guests["web1"]]


def test_status_with_an_unknown_column_is_a_usage_error(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "status", "-o", "name,colour") == 2
    assert "unknown column 'colour'" in capsys.readouterr().err
    assert daemon.calls == []


# --------------------------------------------------------------------------- actions


def test_start_waits_by_default_and_says_what_happened(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "start", "db") == 0
    assert daemon.calls == [("domain.start", {"name": "db", "wait": True, "timeout": 30.0})]
    assert capsys.readouterr().out == "db: started, running pid 99, uptime 0:00:00\n"


def test_start_no_wait_and_timeout(daemon: FakeDaemon, guests: Guests) -> None:
    assert cli(daemon, "start", "--no-wait", "--timeout", "5", "db") == 0
    assert daemon.calls == [("domain.start", {"name": "db", "wait": False, "timeout": 5.0})]


def test_all_acts_on_every_guest_in_the_daemons_order(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "destroy", "all") == 0
    assert daemon.calls == [
        ("domain.list", {}),
        ("domain.destroy", {"name": "db"}),
        ("domain.destroy", {"name": "web1"}),
    ]
    assert capsys.readouterr().out.splitlines() == [
        "db: destroyed, shutoff",
        "web1: destroyed, shutoff",
    ]


def test_several_guests_go_on_after_a_failure_and_exit_with_the_first(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(params: dict[str, Any]) -> Any:
        guests.get(params)
        raise InvalidStateError(f"{params['name']}: not running (state shutoff)")

    daemon.handlers["domain.reboot"] = refuse
    assert cli(daemon, "reboot", "nosuch", "db") == 3
    assert daemon.methods() == ["domain.reboot", "domain.reboot"]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "bhyvesupctl: no guest named 'nosuch'",
        "bhyvesupctl: db: not running (state shutoff)",
    ]


def test_shutdown_defaults_to_the_guests_timeout_without_waiting(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "shutdown", "web1") == 0
    assert daemon.calls == [("domain.shutdown", {"name": "web1", "timeout": None, "wait": False})]
    assert (
        capsys.readouterr().out == "web1: shutdown requested, stopping pid 4242, uptime 0:01:01\n"
    )


def test_stop_is_shutdown_with_timeout_and_wait(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "stop", "--timeout", "5", "--wait", "web1") == 0
    assert daemon.calls == [("domain.shutdown", {"name": "web1", "timeout": 5.0, "wait": True})]
    assert capsys.readouterr().out.startswith("web1: stopped, shutoff")


@pytest.mark.parametrize(
    ("verb", "method", "said"),
    [
        ("reboot", "domain.reboot", "reboot requested, rebooting"),
        ("reset", "domain.reset", "reset, running"),
        ("destroy", "domain.destroy", "destroyed, shutoff"),
        ("poweroff", "domain.destroy", "destroyed, shutoff"),
        ("clear", "domain.clear", "cleared, shutoff"),
    ],
)
def test_simple_actions(
    daemon: FakeDaemon,
    guests: Guests,
    capsys: pytest.CaptureFixture[str],
    verb: str,
    method: str,
    said: str,
) -> None:
    assert cli(daemon, verb, "web1") == 0
    assert daemon.calls == [(method, {"name": "web1"})]
    assert capsys.readouterr().out.startswith(f"web1: {said}")


def test_restart_waits_for_shutdown_then_starts(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "restart", "web1") == 0
    assert daemon.calls == [
        ("domain.get_state", {"name": "web1"}),
        ("domain.shutdown", {"name": "web1", "timeout": None, "wait": True}),
        ("domain.start", {"name": "web1", "wait": True}),
    ]
    assert capsys.readouterr().out == "web1: restarted, running pid 99, uptime 0:00:00\n"


def test_restart_of_a_stopped_guest_only_starts_it(daemon: FakeDaemon, guests: Guests) -> None:
    assert cli(daemon, "restart", "db") == 0
    assert daemon.methods() == ["domain.get_state", "domain.start"]


# --------------------------------------------------------------------------- definitions


XML = "<domain type='bhyve'><name>new1</name><memory unit='MiB'>256</memory></domain>\n"


def test_define_sends_the_file(
    daemon: FakeDaemon, guests: Guests, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new1.xml"
    path.write_text(XML)
    assert cli(daemon, "define", str(path)) == 0
    assert daemon.calls == [("domain.define", {"xml": XML})]
    assert capsys.readouterr().out == f"Domain 'new1' defined from {path}\n"


def test_define_reads_stdin_for_dash(
    daemon: FakeDaemon,
    guests: Guests,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(XML))
    assert cli(daemon, "define", "-") == 0
    assert daemon.calls == [("domain.define", {"xml": XML})]
    assert capsys.readouterr().out == "Domain 'new1' defined from standard input\n"


def test_define_of_a_missing_file_fails_before_calling(
    daemon: FakeDaemon, guests: Guests, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.xml"
    assert cli(daemon, "define", str(missing)) == 1
    assert capsys.readouterr().err == f"bhyvesupctl: {missing}: No such file or directory\n"
    assert daemon.calls == []


def test_undefine(daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(daemon, "undefine", "db") == 0
    assert daemon.calls == [("domain.undefine", {"name": "db"})]
    assert capsys.readouterr().out == "Domain 'db' has been undefined\n"
    assert "db" not in guests.guests


def test_dumpxml_prints_the_xml(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "dumpxml", "web1") == 0
    assert daemon.calls == [("domain.get_xml", {"name": "web1"})]
    assert capsys.readouterr().out == "<domain type='bhyve'><name>web1</name></domain>\n"


def test_dominfo_text_and_json(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "dominfo", "web1") == 0
    text = capsys.readouterr().out
    assert "Name:" in text
    assert "PID:" in text
    assert "4242" in text
    assert "Memory:" in text
    assert "512 MiB" in text
    assert cli(daemon, "dominfo", "web1", "--json") == 0
    assert json.loads(capsys.readouterr().out) == guests.guests["web1"]
    assert daemon.calls == [("domain.get_info", {"name": "web1"})] * 2


def test_autostart_enable_and_disable(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "autostart", "web1") == 0
    assert cli(daemon, "autostart", "web1", "--disable") == 0
    assert daemon.calls == [
        ("domain.set_autostart", {"name": "web1", "autostart": True}),
        ("domain.set_autostart", {"name": "web1", "autostart": False}),
    ]
    assert capsys.readouterr().out.splitlines() == [
        "Domain 'web1' marked as autostarted",
        "Domain 'web1' unmarked as autostarted",
    ]


# --------------------------------------------------------------------------- daemon


STATUS = {
    "version": "0.1.0",
    "pid": 321,
    "uptime": 90.0,
    "host_root": "/",
    "guests": 2,
    "states": {"running": 1, "shutoff": 1},
}


def test_daemon_status(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.handlers["daemon.status"] = lambda p: STATUS
    assert cli(daemon, "daemon-status") == 0
    out = capsys.readouterr().out
    assert "Version:" in out
    assert "0.1.0" in out
    assert "running 1, shutoff 1" in out
    assert cli(daemon, "daemon-status", "--json") == 0
    assert json.loads(capsys.readouterr().out) == STATUS


def test_reload_reports_changes_and_fails_on_errors(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    result: dict[str, Any] = {
        "added": ["web3"],
        "removed": [],
        "changed": [],
        "unchanged": ["db"],
        "kept": [],
        "errors": [],
    }
    daemon.handlers["daemon.reload"] = lambda p: result
    assert cli(daemon, "reload") == 0
    assert capsys.readouterr().out == "added: web3\nunchanged: 1\n"
    result["errors"] = [{"file": "x.xml", "message": "memory: must be > 0, got 0"}]
    assert cli(daemon, "reload") == 1
    assert capsys.readouterr().err == "bhyvesupctl: x.xml: memory: must be > 0, got 0\n"
    assert daemon.methods() == ["daemon.reload", "daemon.reload"]


EVENTS = [
    {"type": "guest.state", "name": "web1", "state": "stopping", "reason": "requested"},
    {"type": "guest.state", "name": "web1", "state": "shutoff", "reason": "poweroff"},
    {"type": "events.lost", "count": 3},
]


def test_events_prints_one_line_per_event_until_the_daemon_closes(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.handlers["events.subscribe"] = lambda p: Stream({"subscription": 1}, EVENTS)
    assert cli(daemon, "events") == 0
    assert daemon.calls == [("events.subscribe", {})]
    assert capsys.readouterr().out.splitlines() == [
        "guest.state web1 stopping (requested)",
        "guest.state web1 shutoff (poweroff)",
        "events.lost 3 events were dropped",
    ]


def test_events_json_lines_parse(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.handlers["events.subscribe"] = lambda p: Stream({"subscription": 1}, EVENTS)
    assert cli(daemon, "events", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == EVENTS


# --------------------------------------------------------------------------- tail


LOG = b"FreeBSD/amd64 (web1) (ttyu0)\r\n\r\nlogin: "


def tail_handler(params: dict[str, Any]) -> dict[str, Any]:
    n = params.get("bytes")
    data = LOG if n is None else LOG[len(LOG) - n :] if n else b""
    return {"data": base64.b64encode(data).decode(), "total": len(LOG) + 1000}


def test_tail_prints_the_bytes_asked_for(
    daemon: FakeDaemon, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    daemon.handlers["console.tail"] = tail_handler
    assert cli(daemon, "tail", "-n", "7", "web1") == 0
    assert daemon.calls == [("console.tail", {"name": "web1", "bytes": 7})]
    assert capsysbinary.readouterr().out == b"login: "
    assert cli(daemon, "tail", "web1") == 0
    assert daemon.calls[-1] == ("console.tail", {"name": "web1", "bytes": None})
    assert capsysbinary.readouterr().out == LOG


def test_tail_rejects_a_negative_count(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "tail", "-n", "-1", "web1") == 2
    assert capsys.readouterr().err == "bhyvesupctl: -n: must be >= 0, got -1\n"
    assert daemon.calls == []


def test_tail_follow_attaches_read_only_and_streams_until_closed(
    daemon: FakeDaemon, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    def stream(sock: socket.socket, rest: bytes) -> None:
        sock.sendall(b"root\r\n")
        sock.sendall(b"Password:")

    daemon.handlers["console.tail"] = tail_handler
    daemon.handlers["console.attach"] = lambda p: Upgrade(
        {"attached": True, "writer": False}, stream
    )
    assert cli(daemon, "tail", "-f", "-n", "7", "web1") == 0
    assert daemon.calls == [
        ("console.tail", {"name": "web1", "bytes": 7}),
        ("console.attach", {"name": "web1", "mode": "ro"}),
    ]
    assert capsysbinary.readouterr().out == b"login: root\r\nPassword:"


# --------------------------------------------------------------------------- failures


def test_unknown_guest_exits_3(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(daemon, "dominfo", "ghost") == 3
    captured = capsys.readouterr()
    assert captured.err == "bhyvesupctl: no guest named 'ghost'\n"
    assert captured.out == ""


def test_permission_denied_exits_4(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(params: dict[str, Any]) -> Any:
        raise PermissionDeniedError("permission denied: domain.destroy needs read-write access")

    daemon.handlers["domain.destroy"] = refuse
    assert cli(daemon, "destroy", "web1") == 4
    assert capsys.readouterr().err == (
        "bhyvesupctl: web1: permission denied: domain.destroy needs read-write access\n"
    )


def test_other_daemon_errors_exit_1(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(params: dict[str, Any]) -> Any:
        raise InvalidStateError("web1: already running")

    daemon.handlers["domain.start"] = refuse
    assert cli(daemon, "start", "web1") == 1
    assert capsys.readouterr().err == "bhyvesupctl: web1: already running\n"


def test_no_daemon_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "absent.sock")
    args = build_parser().parse_args(["-s", path, "status"])
    assert control.run(args) == 1
    captured = capsys.readouterr()
    assert captured.err == f"bhyvesupctl: daemon not running (no socket at {path})\n"
    assert captured.out == ""


def test_socket_comes_from_the_environment_without_s(
    daemon: FakeDaemon, guests: Guests, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BHYVESUP_SOCKET", daemon.path)
    assert control.run(build_parser().parse_args(["status"])) == 0
    assert daemon.methods() == ["domain.list"]


def test_socket_default() -> None:
    assert control.socket_path(argparse.Namespace(socket=None)) == control.DEFAULT_SOCKET
    assert control.DEFAULT_SOCKET == "/var/run/bhyvesupd/bhyvesupd.sock"


@pytest.mark.parametrize(
    "argv",
    [
        ["start"],
        ["start", "--timeout", "soon", "web1"],
        ["shutdown", "--timeout", "-1", "web1"],
        ["dominfo"],
        ["tail", "-n", "many", "web1"],
        ["console"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    assert usage_status(*argv) == 2


# --------------------------------------------------------------------------- shell


def run_shell(daemon: FakeDaemon, script: str) -> Shell:
    parser = build_parser()
    shell = Shell(
        parser,
        control.run,
        defaults=argparse.Namespace(socket=daemon.path),
        stdin=io.StringIO(script),
        stdout=io.StringIO(),
    )
    shell.cmdloop()
    return shell


def test_shell_runs_verbs_and_survives_errors(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    shell = run_shell(
        daemon,
        "status -H -o name\nstart\ndominfo ghost\nstart 'db'\nunbalanced 'quote\nquit\nstatus\n",
    )
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "db",
        "web1",
        "db: started, running pid 99, uptime 0:00:00",
    ]
    err = captured.err
    assert "the following arguments are required: NAME" in err
    assert "bhyvesupctl: no guest named 'ghost'\n" in err
    assert "bhyvesupctl: No closing quotation\n" in err
    # Nothing ran after quit.
    assert daemon.methods() == ["domain.list", "domain.get_info", "domain.start"]
    assert shell.last_status == 2


def test_shell_ends_at_eof_and_exit(daemon: FakeDaemon, guests: Guests) -> None:
    run_shell(daemon, "status\n")
    run_shell(daemon, "exit\nstatus\n")
    assert daemon.methods() == ["domain.list"]


def test_shell_help_lists_verbs(daemon: FakeDaemon) -> None:
    shell = run_shell(daemon, "help\n")
    assert isinstance(shell.stdout, io.StringIO)
    listing = shell.stdout.getvalue()
    for verb in ("status", "start", "shutdown", "console", "tail", "events", "quit"):
        assert f"  {verb} " in listing
    assert shell.completenames("sh") == ["shutdown"]


def test_shell_without_a_verb_is_a_usage_error(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    shell = run_shell(daemon, "-s /elsewhere\n")
    assert shell.last_status == 2
    assert "no verb given" in capsys.readouterr().err


def test_run_shell_reads_commands_from_stdin(
    daemon: FakeDaemon,
    guests: Guests,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("status -H -o name\nstart ghost\n"))
    assert run_shell_main(build_parser(), control.run, argparse.Namespace(socket=daemon.path)) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["db", "web1"]
    assert captured.err == "bhyvesupctl: no guest named 'ghost'\n"


def test_the_cli_does_not_import_trio() -> None:
    code = (
        "import sys, supervisor.cli.control, supervisor.cli.shell, supervisor.cli.console;"
        "print('trio' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
