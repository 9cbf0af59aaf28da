"""Errors of the bus itself, and rebuilding typed errors from error replies.

The supervisor's own conditions live in :mod:`supervisor.errors`. This module adds the
conditions JSON-RPC defines (an unknown method, bad parameters...) as
:class:`~supervisor.errors.SupervisorError` subclasses carrying the standard codes, so a
client can catch one family of exceptions whatever side of the socket noticed the problem,
and the conditions only a client meets (no daemon, no reply).
"""

from __future__ import annotations

from typing import Any

from supervisor.errors import (
    ERRORS_BY_CODE,
    HostToolError,
    InvalidValueError,
    SupervisorError,
)
from supervisor.rpc.protocol import ErrorCode, ErrorObject

__all__ = [
    "ConnectionLostError",
    "DaemonNotRunningError",
    "InternalError",
    "InvalidParamsError",
    "InvalidRequestError",
    "MethodNotFoundError",
    "ParseError",
    "RemoteError",
    "RequestTimeoutError",
    "SocketInUseError",
    "error_from_object",
]


class ParseError(SupervisorError):
    """A message was not valid JSON, or was too long."""

    code = ErrorCode.PARSE_ERROR.value


class InvalidRequestError(SupervisorError):
    """A message was JSON but not a valid JSON-RPC request."""

    code = ErrorCode.INVALID_REQUEST.value


class MethodNotFoundError(SupervisorError, LookupError):
    """No method has that name."""

    code = ErrorCode.METHOD_NOT_FOUND.value


class InvalidParamsError(InvalidValueError):
    """The parameters do not fit the method: unknown, missing or of the wrong type."""

    code = ErrorCode.INVALID_PARAMS.value


class InternalError(SupervisorError):
    """The daemon failed in a way it did not foresee; its log holds the details."""

    code = ErrorCode.INTERNAL_ERROR.value


class RemoteError(SupervisorError):
    """An error reply whose code this client does not know (a newer daemon, perhaps).

    Attributes:
        remote_code: the code the daemon sent.
    """

    def __init__(self, message: str, *, remote_code: int, data: Any = None) -> None:
        super().__init__(message, data=data)
        self.remote_code = remote_code


# The following never travel on the bus: they are met before or around a call.


class DaemonNotRunningError(SupervisorError, ConnectionError):
    """Nothing listens on the daemon's socket."""


class ConnectionLostError(SupervisorError, ConnectionError):
    """The daemon closed the connection before the reply came."""


class RequestTimeoutError(SupervisorError, TimeoutError):
    """No reply came within the client's timeout."""


class SocketInUseError(SupervisorError, OSError):
    """Another server already listens on the socket path."""


_RPC_ERRORS: dict[int, type[SupervisorError]] = {
    cls.code: cls
    for cls in (ParseError, InvalidRequestError, MethodNotFoundError, InvalidParamsError)
} | {InternalError.code: InternalError}

#: Every error class a reply's code can name.
ALL_BY_CODE: dict[int, type[SupervisorError]] = {**ERRORS_BY_CODE, **_RPC_ERRORS}


def error_from_object(error: ErrorObject) -> SupervisorError:
    """The typed exception an error reply stands for.

    The class is chosen by ``error.code``; ``data.field`` and ``data.detail`` (as written
    by :meth:`SupervisorError.to_data`) are restored. An unknown code gives
    :class:`RemoteError`.
    """
    data = error.data if isinstance(error.data, dict) else {}
    field = data.get("field") if isinstance(data.get("field"), str) else None
    detail = data.get("detail")
    cls = ALL_BY_CODE.get(error.code)
    if cls is not None and issubclass(cls, HostToolError):
        info = detail if isinstance(detail, dict) else {}
        argv = info.get("argv")
        status = info.get("status")
        stderr = info.get("stderr")
        return cls(
            error.message,
            argv=[str(a) for a in argv] if isinstance(argv, list) else None,
            status=status if isinstance(status, int) else None,
            stderr=stderr if isinstance(stderr, str) else "",
            field=field,
        )
    if cls is not None:
        try:
            return cls(error.message, field=field, data=detail)
        except TypeError:
            # A subclass with its own constructor that this module does not know yet.
            pass
    return RemoteError(error.message, remote_code=error.code, data=error.data)
