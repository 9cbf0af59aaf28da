"""The error vocabulary of bhyve-supervisor.

Every error the supervisor raises on purpose derives from :class:`SupervisorError`.
Subclasses are named after the *condition* a user meets ("the guest does not exist",
"the value is invalid"), not after the code that noticed it, and each carries a stable
JSON-RPC error code so that clients can branch on the code rather than on message text.

Messages name the offending field or value: ``memory: must be at least 1 MiB, got 0``
is useful at 3 a.m., ``invalid configuration`` is not.

The code table is part of the public API (see docs/rpc.md); codes are never reused.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SupervisorError(Exception):
    """Root of every deliberate supervisor error.

    Args:
        message: what went wrong, naming the field or value concerned.
        field: the dotted name of the offending field, when there is one
            (``devices.disk[1].source``); it travels in the JSON-RPC error ``data``.
        data: any further machine-readable detail for the JSON-RPC error ``data``.
    """

    code: ClassVar[int] = -32000

    def __init__(self, message: str, *, field: str | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.data = data

    def __str__(self) -> str:
        return self.message

    def to_data(self) -> dict[str, Any]:
        """The JSON-RPC ``error.data`` object for this error."""
        out: dict[str, Any] = {"type": type(self).__name__}
        if self.field is not None:
            out["field"] = self.field
        if self.data is not None:
            out["detail"] = self.data
        return out


class InvalidValueError(SupervisorError, ValueError):
    """A value given by a user (XML, argv, RPC parameter, config) is not acceptable."""

    code = -32010


class InvalidXMLError(InvalidValueError):
    """A document is not well-formed, is unsafe (DTD, entities) or is too large."""

    code = -32011


class InvalidArgvError(InvalidValueError):
    """A bhyve, bhyveload or grub-bhyve command line cannot be understood."""

    code = -32012


class UnsupportedError(SupervisorError):
    """The request is valid but this host or this bhyve cannot do it."""

    code = -32013


class ConfigError(InvalidValueError):
    """The daemon's configuration file is invalid."""

    code = -32014


class GuestNotFoundError(SupervisorError, LookupError):
    """No guest is defined with that name or UUID."""

    code = -32020


class GuestExistsError(SupervisorError):
    """A guest with that name or UUID is already defined."""

    code = -32021


class InvalidStateError(SupervisorError):
    """The guest is not in a state in which the request makes sense (e.g. not running)."""

    code = -32022


class GuestBusyError(SupervisorError):
    """The guest's mailbox is full; try again."""

    code = -32023


class OutOfRangeError(InvalidValueError):
    """An address, offset or size lies outside what the guest or disk has."""

    code = -32024


class PermissionDeniedError(SupervisorError, PermissionError):
    """The caller's credentials do not allow the request."""

    code = -32030


class HostToolError(SupervisorError):
    """A host tool (bhyvectl, zfs, ifconfig, ...) failed.

    Args:
        message: what was attempted and how it failed.
        argv: the command line that was run.
        status: its exit status (negative for a signal, as in :mod:`subprocess`).
        stderr: what it printed on standard error, stripped.
    """

    code = -32040

    def __init__(
        self,
        message: str,
        *,
        argv: list[str] | None = None,
        status: int | None = None,
        stderr: str = "",
        field: str | None = None,
    ) -> None:
        super().__init__(
            message,
            field=field,
            data={"argv": argv, "status": status, "stderr": stderr} if argv else None,
        )
        self.argv = argv
        self.status = status
        self.stderr = stderr


class HostNotReadyError(SupervisorError):
    """The host lacks something the request needs (vmm not loaded, device not on ppt...)."""

    code = -32041


class JobNotFoundError(SupervisorError, LookupError):
    """No block job or background job has that id."""

    code = -32050


class GuestAgentError(SupervisorError):
    """The guest agent did not answer, or answered with an error."""

    code = -32060


#: Every error class by name, for clients that rebuild typed errors from JSON-RPC replies.
ERRORS_BY_CODE: dict[int, type[SupervisorError]] = {
    cls.code: cls
    for cls in (
        SupervisorError,
        InvalidValueError,
        InvalidXMLError,
        InvalidArgvError,
        UnsupportedError,
        ConfigError,
        GuestNotFoundError,
        GuestExistsError,
        InvalidStateError,
        GuestBusyError,
        OutOfRangeError,
        PermissionDeniedError,
        HostToolError,
        HostNotReadyError,
        JobNotFoundError,
        GuestAgentError,
    )
}
