"""Logging: structlog, JSON lines to a file and readable lines on stderr.

The daemon's own events go through structlog's native pipeline: a level filter that
costs nothing for dropped events, a few processors, and one :class:`_Output` that
writes the line itself. The stdlib's logging machinery (a LogRecord, caller lookup,
handler locks, a formatter) made each kept event cost as much as starting part of a
guest; it is kept only as a bridge for other libraries' records.

Each event is rendered once per form. When stderr is not a terminal (a service's
output captured to a file by daemon(8), or a pipe) and there is a log file, stderr gets
the file's JSON lines of warnings and errors only: the file has them all, and a second
copy of every event would double what the service writes to /var/log. On a terminal,
or without a log file, stderr gets every event as a readable key=value line.

Event names are stable snake_case keys (``guest_started``, ``bhyve_exited``) with their
facts as fields, never prose. Each guest actor binds ``guest=NAME`` in its context, so
everything logged inside it (and in the tasks it starts) carries the guest's name.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from supervisor._fsutil import write_all

#: One encoder for every line: ``json.dumps`` with an argument builds a new one per call.
_ENCODE = json.JSONEncoder(default=repr).encode

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_ECHOED = frozenset(name for name, number in _LEVELS.items() if number >= _LEVELS["warning"])


class _Output:
    """Where rendered events go: a JSON-lines file and/or stderr.

    The file is reopened when it has been moved away or replaced (newsyslog rotates
    it), as the stdlib's WatchedFileHandler does. A file that cannot be written (a
    full /var/log) is reported once on stderr, not once per event, and once more
    when it can be written again; the records in between are lost.
    """

    def __init__(self, path: str | None, *, echo: TextIO | None, console: TextIO | None):
        self.path = path
        #: Gets the file's lines of warnings and worse (see the module's docstring).
        self.echo = echo
        self.console = console
        self._renderer = structlog.dev.ConsoleRenderer(colors=False)
        self._fd = -1
        self._ident: tuple[int, int] | None = None
        self._failing = False

    def emit(self, event: MutableMapping[str, Any]) -> None:
        line = ""
        if self.path is not None or self.echo is not None:
            line = _ENCODE(event)
        if self.path is not None:
            self._write_file(line)
        if self.echo is not None and event.get("level") in _ECHOED:
            _write_text(self.echo, line + "\n")
        if self.console is not None:
            text = self._renderer(None, "", event)
            _write_text(self.console, f"{text}\n")

    def _write_file(self, line: str) -> None:
        assert self.path is not None
        try:
            self._reopen_if_moved()
            write_all(self._fd, (line + "\n").encode("utf-8", "backslashreplace"))
        except OSError as exc:
            if not self._failing:
                self._failing = True
                sys.stderr.write(
                    f"bhyvesupd: log file {self.path}: {exc.strerror or exc}; "
                    "records are lost until it can be written again\n"
                )
            return
        if self._failing:
            self._failing = False
            sys.stderr.write(f"bhyvesupd: log file {self.path}: writable again\n")

    def _reopen_if_moved(self) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
            ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            ident = None
        if self._fd >= 0 and ident == self._ident:
            return
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(self._fd)
        self._ident = (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass  # the unwritten tail is lost; closing must not fail for it


def _write_text(stream: TextIO, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass  # stderr closed: the file still has the line


class _Logger:
    """The object structlog hands each finished event to (one per logger name)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, /, **event: Any) -> None:
        output = _output
        if output is not None:
            output.emit(event)

    # The filtering bound logger calls the method named after the level.
    debug = info = warning = warn = error = critical = exception = fatal = msg


def _logger_factory(*args: Any) -> _Logger:
    return _Logger(str(args[0]) if args else "bhyvesupd")


class _StdlibBridge(logging.Handler):
    """Records of other libraries that log through the stdlib, into the same output."""

    def emit(self, record: logging.LogRecord) -> None:
        output = _output
        if output is None:
            return
        event: dict[str, Any] = {
            "event": record.getMessage(),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event["timestamp"] = _utc_now()
        if record.exc_info:
            event["exception"] = logging.Formatter().formatException(record.exc_info)
        output.emit(event)


_output: _Output | None = None


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure(*, level: str = "info", log_file: str | None = None, console: bool = True) -> None:
    """Set up logging for the daemon.

    Args:
        level: the least severe level written (``debug``, ``info``, ...).
        log_file: a local path for JSON lines (reopened after newsyslog rotates it),
            or None for no file.
        console: also write on stderr: when there is a file and stderr is not a
            terminal, the file's JSON lines of warnings and worse; else every event
            as a key=value line.
    """
    global _output
    if log_file is not None:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
    echo = sys.stderr if console and log_file is not None and not _is_tty(sys.stderr) else None
    readable = sys.stderr if console and echo is None else None
    old, _output = _output, _Output(log_file, echo=echo, console=readable)
    if old is not None:
        old.close()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _annotate,
            structlog.processors.dict_tracebacks,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level.lower(), 20)),
        logger_factory=_logger_factory,
        # Not cached: configure() may run again (tests, a reload) and must take effect
        # for loggers already handed out.
        cache_logger_on_first_use=False,
    )


#: structlog's method names that are not level names (see ``add_log_level``).
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error", "fatal": "critical"}


def _annotate(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add ``level``, ``logger`` (the logger's name) and ``timestamp`` (UTC, ISO 8601
    with a ``Z``) to every event.

    One processor for the three, not structlog's three: every guest start pays for
    each call in the pipeline, with the caches cold from the guests booting around it.
    """
    event_dict["level"] = _LEVEL_OF_METHOD.get(method_name, method_name)
    event_dict["logger"] = getattr(logger, "name", "bhyvesupd")
    event_dict["timestamp"] = _utc_now()
    return event_dict


def _utc_now() -> str:
    """Now, as UTC ISO 8601 with microseconds and a ``Z``: ``2026-12-06T19:06:19.042817Z``.

    The date and time of day are formatted once per second, the microseconds per call.
    """
    global _second, _second_text
    now = time.time()
    second = int(now)
    if second != _second:
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second_text}.{int((now - second) * 1_000_000):06d}Z"


_second = -1
_second_text = ""


def get_logger(name: str = "bhyvesupd") -> structlog.typing.FilteringBoundLogger:
    """The structlog logger called *name* (``info``, ``warning``, ``bind`` ...)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
