"""JSON-RPC 2.0 over newline-delimited JSON: the sans-IO core.

Theory of operation
===================

This module knows the wire format and nothing else: no sockets, no trio, no clocks. The
server (:mod:`supervisor.rpc.server`), the trio client and the blocking CLI client all feed
bytes in and take bytes out of a :class:`Connection`, the way h11 is used for HTTP/1.1.

Framing. One JSON text per line, UTF-8, terminated by ``\\n``; a ``\\r`` before the ``\\n``
is dropped and lines holding only whitespace are skipped, so an operator can type requests
into ``nc -U`` or ``socat``. JSON escapes control characters inside strings, so a message
never contains a raw line feed and the framer can split on bytes without parsing. A line
longer than ``max_message`` bytes is a *fatal* error: we cannot find where the next message
starts without reading the rest of a line of unbounded length, so the connection replies
once with a Parse error (-32700, id null) and is closed. The check runs as soon as the
buffer holds more than ``max_message`` bytes with no line end, so a peer cannot make us
buffer a gigabyte before noticing.

Messages. A line decodes to one of the event classes below. What is *not* valid is not an
exception: it decodes to :class:`Invalid`, which carries the error reply the peer deserves
(with the request's id when one could be read, null otherwise). Malformed JSON on one line
is therefore survivable (-32700, the connection goes on), and an invalid element of a
batch yields an error element while the rest of the batch runs, exactly as the
specification's examples show. Only framing failures raise.

Roles. A server decodes requests and notifications; a client decodes responses and the
server's notifications. A line that would be valid for the other role is :class:`Invalid`
for this one: a client never receives requests (the bus has no server-to-client calls),
and a server treats a response as an invalid request.

Errors, split as in h11. :class:`RemoteProtocolError` means the peer broke the protocol
(today only the framing cap); :class:`LocalProtocolError` means *we* tried to send
something illegal: a reply to an id nobody asked about, a result that json cannot encode,
a method name that is not a string. The server turns a local error while replying into
-32603 "internal error" — the daemon's bug, not the client's.

State. Everything that changes what a connection may do lives in the table
``_TRANSITIONS`` below, keyed by (state, trigger)::

    OPEN --eof--> PEER_CLOSED     the peer will send no more; we may still reply
    OPEN, PEER_CLOSED --remote_error--> ERROR   framing broke; reply once, then close
    OPEN, PEER_CLOSED --switch--> SWITCHED      the connection now carries raw bytes

After ``switch_protocol()`` (console attach) the connection speaks no JSON; the bytes that
were received but not yet parsed come back from it, to be handed to whoever takes over the
stream, as h11's ``trailing_data`` does for an HTTP upgrade.

Besides the state, a connection counts the request ids that await a reply. A client may not
reuse an id that is still outstanding, and a reply to an id the client never sent is
:class:`Invalid`; a server may not answer an id it never received, nor answer one twice.
An error reply with a null id is always allowed: it is how JSON-RPC reports a request whose
id could not be read.

Encoding uses ``json.dumps(separators=(",", ":"), ensure_ascii=False)``: compact, readable
in a terminal. A lone surrogate (which ``json.loads`` can produce from a ``\\ud800`` escape)
cannot be encoded as UTF-8; it is written back as the very escape it came from, so
whatever we received can always be echoed.
"""

from __future__ import annotations

import enum
import json
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any, Final, Literal, TypeAlias

import attrs

from supervisor._record import Record

__all__ = [
    "MAX_MESSAGE",
    "NEED_DATA",
    "Batch",
    "Connection",
    "ConnectionClosed",
    "ErrorCode",
    "ErrorObject",
    "ErrorResponse",
    "Event",
    "Id",
    "Invalid",
    "LineBuffer",
    "LocalProtocolError",
    "Message",
    "Notification",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "Role",
    "State",
    "decode",
    "encode",
    "json_kind",
]

#: A value :func:`json.dumps` accepts. Kept as ``Any``: JSON is recursive and checked at
#: the edges (params by the dispatcher, results when encoded).
JSON: TypeAlias = Any

#: A request id: a string, a number or null (JSON-RPC 2.0 §4).
Id: TypeAlias = str | int | float | None

#: Request parameters as they travel: an object, an array, or absent.
Params: TypeAlias = dict[str, Any] | list[Any] | None

Role: TypeAlias = Literal["server", "client"]

#: The default cap on one message, in bytes, excluding the line end.
MAX_MESSAGE: Final = 1 << 20

#: The only JSON-RPC version this module speaks.
VERSION: Final = "2.0"


class ErrorCode(enum.IntEnum):
    """The error codes JSON-RPC 2.0 itself defines (the server's own are in errors.py)."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


#: Returned by :meth:`Connection.next_event` when a whole line has not arrived yet.
NEED_DATA: Final = _Sentinel.NEED_DATA


# --------------------------------------------------------------------------- errors


class ProtocolError(Exception):
    """The JSON-RPC protocol was broken; see the two subclasses for by whom.

    Args:
        message: what was wrong.
        code: the JSON-RPC error code that describes it to the peer.
    """

    def __init__(self, message: str, code: int = ErrorCode.INTERNAL_ERROR) -> None:
        if type(self) is ProtocolError:
            raise TypeError("use LocalProtocolError or RemoteProtocolError")
        super().__init__(message)
        self.message = message
        self.code = int(code)

    def __str__(self) -> str:
        return self.message

    @property
    def reply(self) -> ErrorResponse:
        """The error reply (id null) to send before closing the connection."""
        return ErrorResponse(id=None, error=ErrorObject(self.code, self.message))


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow (its bug)."""


# --------------------------------------------------------------------------- events


@attrs.frozen(repr=False)
class ErrorObject(Record):
    """The ``error`` member of an error reply.

    Args:
        code: a JSON-RPC code (:class:`ErrorCode` or a server code from errors.py).
        message: one sentence naming what was wrong.
        data: machine-readable detail, or None to leave the member out.
    """

    code: int
    message: str
    data: JSON = None

    def to_json(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


@attrs.frozen(repr=False)
class Request(Record):
    """A call that expects a reply."""

    id: Id
    method: str
    params: Params = None


@attrs.frozen(repr=False)
class Notification(Record):
    """A call that gets no reply (either direction: server events are notifications)."""

    method: str
    params: Params = None


@attrs.frozen(repr=False)
class Response(Record):
    """A successful reply."""

    id: Id
    result: JSON


@attrs.frozen(repr=False)
class ErrorResponse(Record):
    """A failed reply."""

    id: Id
    error: ErrorObject


@attrs.frozen(repr=False)
class Invalid(Record):
    """Something the peer sent that is not a valid message for this role.

    Args:
        id: the id the reply should carry (null when it could not be read).
        error: why the message is invalid.
    """

    id: Id
    error: ErrorObject

    @property
    def reply(self) -> ErrorResponse:
        """The error reply the peer should get."""
        return ErrorResponse(id=self.id, error=self.error)


Message: TypeAlias = Request | Notification | Response | ErrorResponse


@attrs.frozen(repr=False)
class Batch(Record):
    """A JSON array of messages; on receipt its elements may include :class:`Invalid`."""

    messages: tuple[Message | Invalid, ...]


@attrs.frozen(repr=False)
class ConnectionClosed(Record):
    """The peer will send nothing more."""


Event: TypeAlias = Message | Batch | Invalid | ConnectionClosed


# --------------------------------------------------------------------------- decoding


def json_kind(value: object) -> str:
    """The JSON name of *value*'s type, for error messages (``string``, ``array``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int)


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity by default; JSON does not.
    raise ValueError(f"{name} is not valid JSON")


def _loads(line: bytes) -> JSON:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None


_REQUEST_KEYS: Final = frozenset({"jsonrpc", "method", "params", "id"})
_RESPONSE_KEYS: Final = frozenset({"jsonrpc", "result", "error", "id"})


def _invalid(id: Id, message: str) -> Invalid:
    return Invalid(id=id, error=ErrorObject(ErrorCode.INVALID_REQUEST, message))


def _check_version(obj: dict[str, Any], id: Id) -> Invalid | None:
    version = obj.get("jsonrpc")
    if version != VERSION:
        shown = "missing" if "jsonrpc" not in obj else json.dumps(version, ensure_ascii=False)
        return _invalid(id, f'jsonrpc: must be "2.0", got {shown}')
    return None


def _decode_call(obj: dict[str, Any]) -> Message | Invalid:
    has_id = "id" in obj
    id = obj.get("id")
    if has_id and not _is_id(id):
        return _invalid(None, f"id: must be a string, number or null, got {json_kind(id)}")
    if (bad := _check_version(obj, id)) is not None:
        return bad
    extra = sorted(set(obj) - _REQUEST_KEYS)
    if extra:
        return _invalid(id, f"unknown member {extra[0]!r} in request")
    method = obj.get("method")
    if not isinstance(method, str):
        shown = "missing" if "method" not in obj else json_kind(method)
        return _invalid(id, f"method: must be a string, got {shown}")
    params = obj.get("params")
    if "params" in obj and not isinstance(params, dict | list):
        return _invalid(id, f"params: must be an object or an array, got {json_kind(params)}")
    if has_id:
        return Request(id=id, method=method, params=params)
    return Notification(method=method, params=params)


def _decode_reply(obj: dict[str, Any]) -> Message | Invalid:
    if "method" in obj:
        if "id" in obj:
            return _invalid(None, "requests from the server are not supported")
        return _decode_call(obj)
    id = obj.get("id")
    if not _is_id(id):
        return _invalid(None, f"id: must be a string, number or null, got {json_kind(id)}")
    if "id" not in obj:
        return _invalid(None, "id: missing in reply")
    if (bad := _check_version(obj, id)) is not None:
        return bad
    extra = sorted(set(obj) - _RESPONSE_KEYS)
    if extra:
        return _invalid(id, f"unknown member {extra[0]!r} in reply")
    if ("result" in obj) == ("error" in obj):
        return _invalid(id, "a reply must have exactly one of result and error")
    if "result" in obj:
        return Response(id=id, result=obj["result"])
    error = obj["error"]
    if not isinstance(error, dict):
        return _invalid(id, f"error: must be an object, got {json_kind(error)}")
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, int) or isinstance(code, bool):
        return _invalid(id, f"error.code: must be an integer, got {json_kind(code)}")
    if not isinstance(message, str):
        return _invalid(id, f"error.message: must be a string, got {json_kind(message)}")
    return ErrorResponse(id=id, error=ErrorObject(code, message, error.get("data")))


def _decode_one(obj: JSON, role: Role) -> Message | Invalid:
    if not isinstance(obj, dict):
        what = "request" if role == "server" else "reply"
        return _invalid(None, f"{what} must be a JSON object, got {json_kind(obj)}")
    return _decode_call(obj) if role == "server" else _decode_reply(obj)


def decode(line: bytes, role: Role = "server") -> Message | Batch | Invalid:
    """Decode one line (without its line end) as *role* receives it.

    Never raises for bad content: anything unacceptable decodes to :class:`Invalid`.

    Args:
        line: the message bytes.
        role: ``"server"`` decodes requests and notifications, ``"client"`` replies and
            notifications.
    """
    try:
        obj = _loads(line)
    except ValueError as exc:
        return Invalid(id=None, error=ErrorObject(ErrorCode.PARSE_ERROR, f"parse error: {exc}"))
    if isinstance(obj, list):
        if not obj:
            return _invalid(None, "batch: must not be empty")
        return Batch(tuple(_decode_one(item, role) for item in obj))
    return _decode_one(obj, role)


# --------------------------------------------------------------------------- encoding


def _check_out_id(id: object) -> None:
    if not _is_id(id):
        raise LocalProtocolError(f"id: must be a string, a finite number or None, got {id!r}")


def _to_json(message: Message) -> dict[str, JSON]:
    if isinstance(message, Request | Notification):
        if not isinstance(message.method, str) or not message.method:
            raise LocalProtocolError(f"method: must be a non-empty string, got {message.method!r}")
        if message.params is not None and not isinstance(message.params, dict | list):
            raise LocalProtocolError(
                f"params: must be a dict, a list or None, got {type(message.params).__name__}"
            )
        out: dict[str, JSON] = {"jsonrpc": VERSION, "method": message.method}
        if message.params is not None:
            out["params"] = message.params
        if isinstance(message, Request):
            _check_out_id(message.id)
            out["id"] = message.id
        return out
    if isinstance(message, Response):
        _check_out_id(message.id)
        return {"jsonrpc": VERSION, "id": message.id, "result": message.result}
    if isinstance(message, ErrorResponse):
        _check_out_id(message.id)
        err = message.error
        if not isinstance(err.code, int) or isinstance(err.code, bool):
            raise LocalProtocolError(f"error.code: must be an int, got {err.code!r}")
        if not isinstance(err.message, str):
            raise LocalProtocolError(f"error.message: must be a str, got {err.message!r}")
        return {"jsonrpc": VERSION, "id": message.id, "error": err.to_json()}
    raise LocalProtocolError(f"cannot send {type(message).__name__}")


def encode(message: Message | Batch) -> bytes:
    """The wire form of *message*: one line of compact UTF-8 JSON ending in ``\\n``.

    Raises:
        LocalProtocolError: the message is malformed or holds something json cannot encode.
    """
    obj: JSON
    if isinstance(message, Batch):
        if not message.messages:
            raise LocalProtocolError("batch: must not be empty")
        if any(isinstance(m, Invalid) for m in message.messages):
            raise LocalProtocolError("batch: send Invalid.reply, not the Invalid event")
        obj = [_to_json(m) for m in message.messages if not isinstance(m, Invalid)]
    else:
        obj = _to_json(message)
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None
    return text.encode("utf-8", "backslashreplace") + b"\n"


# --------------------------------------------------------------------------- framing


class LineBuffer:
    """Bytes in, lines out, with a cap on the length of one line.

    Args:
        max_line: the longest line accepted, in bytes, without its line end.
    """

    def __init__(self, max_line: int = MAX_MESSAGE) -> None:
        if max_line < 1:
            raise ValueError(f"max_line: must be >= 1, got {max_line}")
        self._max = max_line
        self._buf = bytearray()
        # Consumed lines are skipped with an offset and the buffer compacted now and
        # then, so that a chunk holding thousands of small lines costs linear time.
        self._start = 0
        # Where the search for the next line end resumes: bytes before it hold no \n.
        self._scan = 0
        self._eof = False

    def __len__(self) -> int:
        return len(self._buf) - self._start

    @property
    def at_eof(self) -> bool:
        """Whether the end of input has been fed."""
        return self._eof

    def feed(self, data: bytes | bytearray) -> None:
        """Append received bytes; ``b""`` marks the end of input."""
        if not data:
            self._eof = True
            return
        if self._start and self._start >= len(self._buf) // 2:
            del self._buf[: self._start]
            self._scan -= self._start
            self._start = 0
        self._buf += data

    def next_line(self) -> bytes | None:
        """The next complete line without ``\\r\\n``/``\\n``, or None if none is complete.

        Blank lines are skipped. At end of input an unterminated last line is returned as
        a line.

        Raises:
            RemoteProtocolError: a line is longer than ``max_line`` (-32700).
        """
        while True:
            end = self._buf.find(b"\n", self._scan)
            if end < 0:
                pending = len(self._buf) - self._start
                # One byte of slack: the \r of a CRLF may arrive before its \n.
                if pending > self._max + 1:
                    raise self._too_long()
                self._scan = len(self._buf)
                if not (self._eof and pending):
                    return None
                line = bytes(self._buf[self._start :])
                self._start = self._scan = len(self._buf)
            else:
                line = bytes(self._buf[self._start : end])
                self._start = self._scan = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self._max:
                raise self._too_long()
            if line.strip():
                return line

    def _too_long(self) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"parse error: message longer than {self._max} bytes", ErrorCode.PARSE_ERROR
        )

    def take_remaining(self) -> bytes:
        """Every byte not yet returned as a line; the buffer is left empty."""
        rest = bytes(self._buf[self._start :])
        self._buf.clear()
        self._start = self._scan = 0
        return rest


# --------------------------------------------------------------------------- connection


class State(enum.Enum):
    """Where a :class:`Connection` stands (see the table in the module docstring)."""

    OPEN = "OPEN"
    PEER_CLOSED = "PEER_CLOSED"
    ERROR = "ERROR"
    SWITCHED = "SWITCHED"


_Trigger: TypeAlias = Literal["eof", "remote_error", "switch"]

_TRANSITIONS: Final[dict[tuple[State, _Trigger], State]] = {
    (State.OPEN, "eof"): State.PEER_CLOSED,
    (State.OPEN, "remote_error"): State.ERROR,
    (State.PEER_CLOSED, "remote_error"): State.ERROR,
    (State.OPEN, "switch"): State.SWITCHED,
    (State.PEER_CLOSED, "switch"): State.SWITCHED,
}

#: The states in which bytes may be received and messages sent.
_CAN_RECEIVE: Final = frozenset({State.OPEN})
_CAN_SEND: Final = frozenset({State.OPEN, State.PEER_CLOSED, State.ERROR})

#: What each role may put on the wire.
_SENDABLE: Final[dict[Role, tuple[type, ...]]] = {
    "server": (Response, ErrorResponse, Notification),
    "client": (Request, Notification),
}


def _id_key(id: Id) -> tuple[str, object]:
    # 1, 1.0 and True hash alike; ids of different JSON types must stay apart.
    return ("s", id) if isinstance(id, str) else ("n", id)


class Connection:
    """One side of a JSON-RPC connection, with no I/O.

    Feed received bytes to :meth:`receive_data`, then call :meth:`next_event` until it
    returns :data:`NEED_DATA`; turn messages into bytes with :meth:`send`.

    Args:
        role: ``"server"`` or ``"client"``.
        max_message: the longest incoming message accepted, in bytes.
    """

    def __init__(self, role: Role, *, max_message: int = MAX_MESSAGE) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role: must be 'server' or 'client', got {role!r}")
        self.role: Final[Role] = role
        self._lines = LineBuffer(max_message)
        self._state = State.OPEN
        self._error: RemoteProtocolError | None = None
        self._closed_reported = False
        self._pending: Counter[tuple[str, object]] = Counter()
        self._next_id = 1

    @property
    def state(self) -> State:
        return self._state

    def _transition(self, trigger: _Trigger) -> None:
        try:
            self._state = _TRANSITIONS[(self._state, trigger)]
        except KeyError:
            raise LocalProtocolError(
                f"cannot {trigger.replace('_', ' ')} in state {self._state.value}"
            ) from None

    # -- receiving

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes received from the peer; ``b""`` means the peer closed its side.

        Raises:
            LocalProtocolError: the connection no longer reads JSON (it saw end of input,
                failed, or switched protocols).
        """
        if self._state not in _CAN_RECEIVE:
            raise LocalProtocolError(f"cannot receive data in state {self._state.value}")
        self._lines.feed(data)

    def next_event(self) -> Event | Literal[_Sentinel.NEED_DATA]:
        """The next thing the peer said, or :data:`NEED_DATA`.

        After end of input and the last message, returns :class:`ConnectionClosed` once,
        then keeps returning it.

        Raises:
            RemoteProtocolError: the framing broke (message too long); the connection is
                unusable and should send ``exc.reply`` and close.
            LocalProtocolError: called after :meth:`switch_protocol`.
        """
        if self._state is State.SWITCHED:
            raise LocalProtocolError("the connection has switched protocols")
        if self._error is not None:
            raise self._error
        try:
            line = self._lines.next_line()
        except RemoteProtocolError as exc:
            self._error = exc
            self._transition("remote_error")
            raise
        if line is None:
            if not self._lines.at_eof:
                return NEED_DATA
            if self._state is State.OPEN:
                self._transition("eof")
            return ConnectionClosed()
        return self._track_incoming(decode(line, self.role))

    def _track_incoming(self, event: Message | Batch | Invalid) -> Message | Batch | Invalid:
        if isinstance(event, Batch):
            return Batch(tuple(self._track_one(m) for m in event.messages))
        return self._track_one(event)

    def _track_one(self, event: Message | Invalid) -> Message | Invalid:
        if self.role == "server":
            # An invalid request whose id could be read is answered with that id.
            if isinstance(event, Request) or (isinstance(event, Invalid) and event.id is not None):
                self._pending[_id_key(event.id)] += 1
            return event
        if isinstance(event, Response | ErrorResponse):
            key = _id_key(event.id)
            if self._pending[key] > 0:
                self._pending[key] -= 1
                if not self._pending[key]:
                    del self._pending[key]
            elif not (isinstance(event, ErrorResponse) and event.id is None):
                return Invalid(
                    id=event.id,
                    error=ErrorObject(
                        ErrorCode.INVALID_REQUEST,
                        f"reply to id {json.dumps(event.id)}, which no request is waiting for",
                    ),
                )
        return event

    # -- sending

    def next_id(self) -> int:
        """A fresh request id (a client convenience: 1, 2, 3...)."""
        id, self._next_id = self._next_id, self._next_id + 1
        return id

    def send(self, message: Message | Batch) -> bytes:
        """The bytes that put *message* on the wire; updates the outstanding ids.

        Raises:
            LocalProtocolError: this role may not send that message now, or it cannot be
                encoded; nothing is recorded in that case.
        """
        if self._state not in _CAN_SEND:
            raise LocalProtocolError(f"cannot send in state {self._state.value}")
        items: Iterable[Message | Invalid] = (
            message.messages if isinstance(message, Batch) else (message,)
        )
        items = list(items)
        allowed = _SENDABLE[self.role]
        for item in items:
            if not isinstance(item, allowed):
                raise LocalProtocolError(f"a {self.role} cannot send {type(item).__name__}")
        data = encode(message)
        if self.role == "server":
            self._account_replies(items)
        else:
            self._account_requests(items)
        return data

    def _account_replies(self, items: list[Message | Invalid]) -> None:
        taken: Counter[tuple[str, object]] = Counter()
        for item in items:
            if isinstance(item, Response | ErrorResponse):
                if isinstance(item, ErrorResponse) and item.id is None:
                    continue
                key = _id_key(item.id)
                taken[key] += 1
                if taken[key] > self._pending[key]:
                    raise LocalProtocolError(
                        f"no request with id {item.id!r} is waiting for a reply"
                    )
        self._pending -= taken

    def _account_requests(self, items: list[Message | Invalid]) -> None:
        new: Counter[tuple[str, object]] = Counter()
        for item in items:
            if isinstance(item, Request):
                key = _id_key(item.id)
                new[key] += 1
                if self._pending[key] or new[key] > 1:
                    raise LocalProtocolError(f"id {item.id!r} is already waiting for a reply")
        self._pending += new

    @property
    def awaiting_reply(self) -> int:
        """How many requests await a reply (sent by a client, received by a server)."""
        return sum(self._pending.values())

    # -- leaving JSON

    def switch_protocol(self) -> bytes:
        """Stop speaking JSON; returns the received bytes not yet parsed.

        Raises:
            LocalProtocolError: the connection failed or switched already.
        """
        self._transition("switch")
        return self._lines.take_remaining()
