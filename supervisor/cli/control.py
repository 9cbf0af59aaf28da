"""bhyvesupctl's daemon verbs: each one a few JSON-RPC calls to bhyvesupd and a rendering.

Every verb is a function ``(args) -> exit status`` registered on the argparse front by
:func:`register`; the interactive shell (:mod:`supervisor.cli.shell`) runs the very same
functions. Talking to the daemon goes through the blocking client of
:mod:`supervisor.rpc.client`; what is shown comes from :mod:`supervisor.cli.render`.

Exit statuses are part of the interface (scripts branch on them):

====  =====================================================================
0     success
1     failure (the daemon refused or failed, or it is not running)
2     usage error (bad arguments)
3     no such guest
4     permission denied (socket permissions, or a read-only connection)
====  =====================================================================

A verb given several guests (or ``all``) acts on each in turn, reports each on its own
line and, when some failed, exits with the status of the first failure.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, Final

from supervisor.cli import console as consolemod
from supervisor.cli import render
from supervisor.errors import GuestNotFoundError, PermissionDeniedError, SupervisorError
from supervisor.host import SOCKET_PATH
from supervisor.rpc.client import Client
from supervisor.rpc.protocol import RemoteProtocolError

__all__ = [
    "DEFAULT_SOCKET",
    "EXIT_DENIED",
    "EXIT_FAILURE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_global_options",
    "add_names",
    "connect",
    "error",
    "exit_status_for",
    "out",
    "positive_seconds",
    "read_input",
    "register",
    "run",
    "socket_path",
    "verb",
]

DEFAULT_SOCKET: Final = SOCKET_PATH
SOCKET_ENV: Final = "BHYVESUP_SOCKET"

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_DENIED: Final = 4

PROG: Final = "bhyvesupctl"

#: How long a plain call may take before the CLI gives up on the daemon, in seconds.
CALL_TIMEOUT: Final = 30.0
#: Added to a guest-side timeout (start, shutdown --wait) for the reply to arrive.
REPLY_MARGIN: Final = 15.0
#: How long ``shutdown --wait`` waits for the reply when the guest's own stop_timeout
#: applies (the CLI does not know it).
WAIT_TIMEOUT: Final = 600.0

Handler = Callable[[argparse.Namespace], int]


def socket_path(args: argparse.Namespace) -> str:
    """The daemon's socket: ``-s``, else ``$BHYVESUP_SOCKET``, else the default."""
    given: str | None = getattr(args, "socket", None)
    return given or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def exit_status_for(exc: SupervisorError) -> int:
    """The exit status a failed call ends the CLI with."""
    if isinstance(exc, GuestNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, PermissionDeniedError):
        return EXIT_DENIED
    return EXIT_FAILURE


def error(message: str) -> None:
    """Report one failure on stderr, in the CLI's single-line form."""
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def out(text: str) -> None:
    if text:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


@contextmanager
def connect(args: argparse.Namespace, timeout: float | None = CALL_TIMEOUT) -> Iterator[Client]:
    """A client for one verb, closed when the verb is done."""
    client = Client(socket_path(args), timeout=timeout)
    try:
        yield client
    finally:
        client.close()


def run(args: argparse.Namespace) -> int:
    """Run the verb *args* names; daemon errors become one stderr line and a status.

    This is what the argparse front and the shell call: no exception a user can cause
    escapes as a traceback.
    """
    handler: Handler = args.control_handler
    try:
        return handler(args)
    except SupervisorError as exc:
        error(str(exc))
        return exit_status_for(exc)
    except KeyboardInterrupt:
        # Following a stream (events, tail -f) normally ends with ^C.
        sys.stderr.write("\n")
        return EXIT_OK if getattr(args, "follows", False) else 130
    except RemoteProtocolError as exc:
        error(f"the daemon broke the protocol: {exc}")
        return EXIT_FAILURE
    except BrokenPipeError:
        # `bhyvesupctl events | head` closed our stdout; nobody is left to tell.
        _silence_stdout()
        return EXIT_OK


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- targets


def _targets(client: Client, names: Sequence[str]) -> list[str]:
    """*names* with ``all`` replaced by every defined guest, in the daemon's order."""
    if "all" not in names:
        return list(dict.fromkeys(names))
    every = [str(g["name"]) for g in client.call("domain.list")]
    return list(dict.fromkeys([*every, *(n for n in names if n != "all")]))


def _about(name: str, exc: SupervisorError) -> str:
    message = str(exc)
    return message if name in message else f"{name}: {message}"


def _for_each(
    args: argparse.Namespace,
    act: Callable[[Client, str], str],
    *,
    timeout: float | None = CALL_TIMEOUT,
) -> int:
    """Run *act* on every target guest; print its line or the error; first failure wins."""
    status = EXIT_OK
    with connect(args, timeout) as client:
        for name in _targets(client, args.names):
            try:
                line = act(client, name)
            except SupervisorError as exc:
                error(_about(name, exc))
                status = status or exit_status_for(exc)
                continue
            out(f"{name}: {line}")
    return status


# --------------------------------------------------------------------------- verbs


def cmd_status(args: argparse.Namespace) -> int:
    try:
        columns = render.select_columns(args.columns.split(",") if args.columns else None)
    except ValueError as exc:
        error(str(exc))
        return EXIT_USAGE
    status = EXIT_OK
    with connect(args) as client:
        names = [n for n in args.names if n != "all"]
        if not names or "all" in args.names:
            infos = list(client.call("domain.list"))
        else:
            infos = []
            for name in dict.fromkeys(names):
                try:
                    infos.append(client.call("domain.get_info", name=name))
                except SupervisorError as exc:
                    error(_about(name, exc))
                    status = status or exit_status_for(exc)
    if args.json:
        out(render.render_json(infos))
    else:
        out(render.render_status(infos, columns=columns, scripted=args.scripted, exact=args.exact))
    return status


def cmd_start(args: argparse.Namespace) -> int:
    wait = not args.no_wait

    def act(client: Client, name: str) -> str:
        info = client.call("domain.start", name=name, wait=wait, timeout=args.timeout)
        return f"{'started' if wait else 'starting'}, {render.status_summary(info)}"

    return _for_each(args, act, timeout=args.timeout + REPLY_MARGIN)


def _shutdown_timeout(args: argparse.Namespace) -> float:
    if not args.wait:
        return CALL_TIMEOUT
    if args.timeout is None:
        return WAIT_TIMEOUT
    return float(args.timeout) + REPLY_MARGIN


def cmd_shutdown(args: argparse.Namespace) -> int:
    def act(client: Client, name: str) -> str:
        info = client.call("domain.shutdown", name=name, timeout=args.timeout, wait=args.wait)
        done = "stopped" if args.wait else "shutdown requested"
        return f"{done}, {render.status_summary(info)}"

    return _for_each(args, act, timeout=_shutdown_timeout(args))


def _simple(method: str, done: str, **params: Any) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        def act(client: Client, name: str) -> str:
            info = client.call(method, name=name, **params)
            return f"{done}, {render.status_summary(info)}"

        return _for_each(args, act)

    return handler


_STOPPED: Final = frozenset({"shutoff", "crashed", "fatal"})


def cmd_restart(args: argparse.Namespace) -> int:
    args.wait = True

    def act(client: Client, name: str) -> str:
        state = client.call("domain.get_state", name=name)
        if state.get("state") not in _STOPPED:
            client.call("domain.shutdown", name=name, timeout=args.timeout, wait=True)
        info = client.call("domain.start", name=name, wait=True)
        return f"restarted, {render.status_summary(info)}"

    return _for_each(args, act, timeout=_shutdown_timeout(args) + CALL_TIMEOUT)


def read_input(path: str) -> str:
    """The text of file *path*, or standard input for ``-``; errors name the file."""
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise SupervisorError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SupervisorError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def cmd_define(args: argparse.Namespace) -> int:
    xml = read_input(args.file)
    with connect(args) as client:
        info = client.call("domain.define", xml=xml)
    source = "standard input" if args.file == "-" else args.file
    out(f"Domain '{info.get('name')}' defined from {source}")
    return EXIT_OK


def cmd_undefine(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.call("domain.undefine", name=args.name)
    out(f"Domain '{args.name}' has been undefined")
    return EXIT_OK


def cmd_dumpxml(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result = client.call("domain.get_xml", name=args.name)
    xml = str(result["xml"])
    sys.stdout.write(xml if xml.endswith("\n") else xml + "\n")
    return EXIT_OK


def cmd_dominfo(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.call("domain.get_info", name=args.name)
    out(render.render_json(info) if args.json else render.render_guest_info(info))
    return EXIT_OK


def cmd_autostart(args: argparse.Namespace) -> int:
    enable = not args.disable
    with connect(args) as client:
        client.call("domain.set_autostart", name=args.name, autostart=enable)
    out(f"Domain '{args.name}' {'marked' if enable else 'unmarked'} as autostarted")
    return EXIT_OK


def _stdout_bytes() -> BinaryIO:
    return sys.stdout.buffer


def cmd_console(args: argparse.Namespace) -> int:
    client = Client(socket_path(args), timeout=CALL_TIMEOUT)
    try:
        reply = client.call("console.attach", name=args.name, mode="rw")
        if not reply.get("writer", True):
            error(f"{args.name}: another client holds the console; attached read-only")
        state = reply.get("state", "running")
        if state not in ("running", "starting", "rebooting"):
            # Attaching still works (to watch the next boot), but nothing answers now.
            error(f"{args.name} is {state}: the console stays quiet until the guest runs")
        sock, initial = client.raw_socket()
    finally:
        client.close()  # a no-op once raw_socket() took the socket over
    with sock:
        stdin = sys.stdin
        if stdin.isatty() and sys.stdout.isatty():
            return consolemod.run_interactive(
                sock,
                stdin_fd=stdin.fileno(),
                stdout_fd=sys.stdout.fileno(),
                name=args.name,
                initial=initial,
            )
        sys.stdout.flush()
        return consolemod.run_piped(
            sock,
            stdin.buffer,
            _stdout_bytes(),
            drain=args.drain,
            initial=initial,
        )


def cmd_tail(args: argparse.Namespace) -> int:
    if args.bytes is not None and args.bytes < 0:
        error(f"-n: must be >= 0, got {args.bytes}")
        return EXIT_USAGE
    with connect(args) as client:
        result = client.call("console.tail", name=args.name, bytes=args.bytes)
    stdout = _stdout_bytes()
    sys.stdout.flush()
    stdout.write(base64.b64decode(result.get("data") or ""))
    stdout.flush()
    if not args.follow:
        return EXIT_OK
    # Bytes that arrive between the tail and the attach are not shown: the stream has no
    # offsets to stitch the two together.
    client = Client(socket_path(args), timeout=CALL_TIMEOUT)
    try:
        client.call("console.attach", name=args.name, mode="ro")
        sock, initial = client.raw_socket()
    finally:
        client.close()
    with sock:
        return consolemod.follow(sock, stdout, initial=initial)


def cmd_events(args: argparse.Namespace) -> int:
    client = Client(socket_path(args), timeout=CALL_TIMEOUT)
    try:
        client.call("events.subscribe")
        for note in client.notifications(timeout=None):
            params = note.params
            if note.method != "event" or not isinstance(params, dict):
                continue
            out(render.render_json_line(params) if args.json else render.render_event(params))
    finally:
        client.close()
    return EXIT_OK


def cmd_daemon_status(args: argparse.Namespace) -> int:
    with connect(args) as client:
        status = client.call("daemon.status")
    out(render.render_json(status) if args.json else render.render_daemon_status(status))
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result = client.call("daemon.reload")
    if args.json:
        out(render.render_json(result))
        return EXIT_FAILURE if result.get("errors") else EXIT_OK
    summary, problems = render.render_reload(result)
    out(summary)
    for problem in problems:
        error(problem)
    return EXIT_FAILURE if problems else EXIT_OK


# --------------------------------------------------------------------------- parser


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """The options every daemon verb shares, added to the top-level parser."""
    parser.add_argument(
        "-s",
        "--socket",
        metavar="PATH",
        default=None,
        help=f"the daemon's socket (default: ${SOCKET_ENV}, else {DEFAULT_SOCKET})",
    )


def positive_seconds(text: str) -> float:
    """argparse type: a non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def verb(
    sub: Any,
    name: str,
    handler: Handler,
    help: str,
    *,
    aliases: Sequence[str] = (),
    follows: bool = False,
) -> argparse.ArgumentParser:
    """Add one daemon verb: its parser runs *handler* through :func:`run`.

    Other verb modules use this too, so every daemon verb gets the same error handling
    and exit statuses.
    """
    parser: argparse.ArgumentParser = sub.add_parser(
        name, aliases=list(aliases), help=help, description=help
    )
    parser.set_defaults(control_handler=handler, follows=follows)
    return parser


def add_names(parser: argparse.ArgumentParser) -> None:
    """The ``NAME...|all`` positional of verbs that act on several guests."""
    parser.add_argument("names", nargs="+", metavar="NAME", help="guests, or 'all'")


def register(sub: Any) -> None:
    """Add the daemon verbs to *sub*, an argparse subparsers object.

    Each verb's parser sets ``control_handler``; the front calls :func:`run` with the
    parsed namespace.
    """
    p = verb(sub, "status", cmd_status, "show guests' states", aliases=["list"])
    p.add_argument("names", nargs="*", metavar="NAME", help="guests (default: all)")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p.add_argument("-H", dest="scripted", action="store_true", help="no header, tab-separated")
    p.add_argument("-p", dest="exact", action="store_true", help="exact numbers (seconds)")
    p.add_argument("-o", dest="columns", metavar="COLS", help="columns, e.g. name,state")

    p = verb(sub, "start", cmd_start, "start guests")
    add_names(p)
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=30.0,
        metavar="S",
        help="how long to wait for the guest to leave 'starting' (default 30)",
    )
    p.add_argument("--no-wait", action="store_true", help="return once the start is under way")

    p = verb(sub, "shutdown", cmd_shutdown, "ask guests to power off (ACPI)", aliases=["stop"])
    add_names(p)
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=None,
        metavar="S",
        help="seconds before the guest is forced off (default: its stop_timeout)",
    )
    p.add_argument("--wait", action="store_true", help="return when the guest is off")

    p = verb(sub, "restart", cmd_restart, "shut guests down (waiting), then start them")
    add_names(p)
    p.add_argument(
        "--timeout", type=positive_seconds, default=None, metavar="S", help="shutdown timeout"
    )

    for verb_name, method, done, aliases, text in (
        ("reboot", "domain.reboot", "reboot requested", (), "ask guests to reboot"),
        ("reset", "domain.reset", "reset", (), "reset guests at once (no guest shutdown)"),
        ("destroy", "domain.destroy", "destroyed", ("poweroff",), "power guests off at once"),
        ("clear", "domain.clear", "cleared", (), "leave crashed/fatal and forget crashes"),
    ):
        add_names(verb(sub, verb_name, _simple(method, done), text, aliases=aliases))

    p = verb(sub, "define", cmd_define, "define (or redefine) a guest from domain XML")
    p.add_argument("file", metavar="FILE", help="domain XML, '-' for standard input")

    p = verb(sub, "undefine", cmd_undefine, "remove a guest's definition")
    p.add_argument("name", metavar="NAME")

    p = verb(sub, "dumpxml", cmd_dumpxml, "print a guest's domain XML")
    p.add_argument("name", metavar="NAME")

    p = verb(sub, "dominfo", cmd_dominfo, "show everything about one guest")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")

    p = verb(sub, "autostart", cmd_autostart, "start a guest when the daemon starts")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--disable", action="store_true", help="do not start it automatically")

    p = verb(sub, "console", cmd_console, "attach to a guest's serial console (^] leaves)")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--drain",
        type=positive_seconds,
        default=1.0,
        metavar="S",
        help="without a terminal: keep printing S seconds after input ends (default 1)",
    )

    p = verb(sub, "tail", cmd_tail, "print a guest's recent console output", follows=True)
    p.add_argument("name", metavar="NAME")
    p.add_argument("-n", dest="bytes", type=int, default=None, metavar="BYTES", help="last BYTES")
    p.add_argument("-f", dest="follow", action="store_true", help="keep printing new output")

    p = verb(sub, "events", cmd_events, "follow the daemon's events", follows=True)
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = verb(sub, "daemon-status", cmd_daemon_status, "show the daemon's own state")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")

    p = verb(sub, "reload", cmd_reload, "re-read the guest definitions")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
