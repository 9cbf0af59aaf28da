"""Logging: structlog over the stdlib, JSON lines to a file and readable lines on stderr.

Each event is rendered once per form. When stderr is not a terminal (a service's
output captured to a file or a pipe) it gets the very JSON line written to the file,
not a second rendering: rendering every event twice cost a quarter of the daemon's CPU
while it started 500 guests. A terminal gets the readable key=value form.

Event names are stable snake_case keys (``guest_started``, ``bhyve_exited``) with their
facts as fields, never prose. Each guest actor binds ``guest=NAME`` in its context, so
everything logged inside it (and in the tasks it starts) carries the guest's name.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import TextIO

import structlog

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class _LogFile(logging.handlers.WatchedFileHandler):
    """The log file, quiet when it cannot be written.

    The stdlib prints a traceback on stderr for every record a handler fails to write:
    on a full filesystem that is one traceback per event, for as long as it stays full.
    This handler says once on stderr that records are being lost and why, and once
    that they are written again.
    """

    _failing = False
    _failed_now = False

    def emit(self, record: logging.LogRecord) -> None:
        self._failed_now = False
        try:
            try:
                self.reopenIfNeeded()
            except OSError:
                # The file was rotated away holding records it had no room for: they
                # go with it. (The stdlib lets this error out of the logging call.)
                self._drop_stream()
                self.stream = self._open()
                self._statstream()
            logging.FileHandler.emit(self, record)
        except OSError:
            self.handleError(record)
        if self._failing and not self._failed_now:
            self._failing = False
            sys.stderr.write(f"bhyvesupd: log file {self.baseFilename}: writable again\n")

    def _drop_stream(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            pass  # the unwritten tail is lost; closing must not fail for it

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        self._failed_now = True
        if not self._failing:
            self._failing = True
            sys.stderr.write(
                f"bhyvesupd: log file {self.baseFilename}: {exc.strerror or exc}; "
                "records are lost until it can be written again\n"
            )


class _JsonFile(_LogFile):
    """JSON lines to a file, each line also written to *echo* (stderr) when given."""

    def __init__(self, path: str, echo: TextIO | None) -> None:
        super().__init__(path)
        self._echo = echo
        self._line = ""

    def format(self, record: logging.LogRecord) -> str:
        self._line = super().format(record)
        return self._line

    def emit(self, record: logging.LogRecord) -> None:
        # handle() holds the handler's lock around emit, so _line is this record's.
        super().emit(record)
        if self._echo is not None and self._line:
            try:
                self._echo.write(self._line + "\n")
                self._echo.flush()
            except (OSError, ValueError):
                pass  # stderr closed: the file still has the line
            self._line = ""


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
        console: also write on stderr: the file's JSON lines when there is a file and
            stderr is not a terminal, else key=value lines.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level.upper())
    if log_file is not None:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        echo = sys.stderr if console and not _is_tty(sys.stderr) else None
        file_handler = _JsonFile(log_file, echo)
        if echo is not None:
            console = False  # served by the file handler's echo
        file_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=_SHARED,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.dict_tracebacks,
                    structlog.processors.JSONRenderer(),
                ],
            )
        )
        root.addHandler(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=_SHARED,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.dev.ConsoleRenderer(colors=False),
                ],
            )
        )
        root.addHandler(stream)
    structlog.configure(
        # Drop events below the level first: every guest event logs at debug, and
        # stamping and rendering one only for the stdlib to discard it cost 8% of the
        # daemon's CPU while it started 150 guests.
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "bhyvesupd") -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
