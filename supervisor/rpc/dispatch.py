"""The method table of the bus: registration, parameter checks, errors to error objects.

A method is an ``async def`` taking a :class:`CallContext` and then named parameters::

    registry = Registry()

    @registry.method("domain.start", access="rw")
    async def start(ctx: CallContext, *, name: str, paused: bool = False) -> dict[str, Any]:
        ...

Parameters always travel by name (a JSON object). Their annotations are the contract:
the dispatcher checks each value against its annotation before the handler runs, so a
handler never sees a string where it declared an int, and the caller learns which
parameter was wrong (-32602, ``data.field`` naming it). The supported annotations are the
JSON shapes: ``str``, ``int``, ``float`` (an integer is accepted and converted), ``bool``,
``None``, ``list[X]``, ``dict[str, X]``, ``Literal[...]``, unions of these (``X | None``)
and ``Any``. Anything else is refused when the method is registered, not when it is
first called.

Errors: a :class:`~supervisor.errors.SupervisorError` raised by a handler becomes an error
object with the error's own code, message and ``to_data()``; any other exception is a bug,
logged with its traceback and an incident id, and the caller gets -32603 "internal error"
with that id only, never the exception text.

This module does no I/O and imports no trio at run time; the server supplies the context.
"""

from __future__ import annotations

import inspect
import json
import re
import secrets
import types
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, TypeVar

import attrs
import structlog

from supervisor._record import Record
from supervisor.errors import PermissionDeniedError, SupervisorError
from supervisor.rpc.errors import InternalError, InvalidParamsError, MethodNotFoundError
from supervisor.rpc.peercred import PeerCredentials
from supervisor.rpc.protocol import (
    JSON,
    ErrorCode,
    ErrorObject,
    ErrorResponse,
    Id,
    Notification,
    Params,
    Request,
    Response,
    json_kind,
)

if TYPE_CHECKING:
    import trio

__all__ = [
    "Access",
    "AfterReply",
    "CallContext",
    "Method",
    "Param",
    "Peer",
    "Registry",
]

LOGGER = structlog.get_logger("supervisor.rpc")

#: What a connection may do: call every method, or only the read-only ones.
Access: TypeAlias = Literal["rw", "ro"]

#: Run by the server after the reply is written, with the connection's raw byte stream.
AfterReply: TypeAlias = Callable[["trio.abc.Stream"], Awaitable[None]]

#: Method names: dotted lowercase words, at least two (``domain.start``).
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


class Peer(Protocol):
    """What a handler may do with the connection it was called on."""

    def notify_nowait(self, method: str, params: Params = None) -> bool:
        """Queue a notification to the peer; False if it was dropped."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the peer is gone (notifications to it are dropped)."""
        ...


@attrs.define(repr=False)
class CallContext(Record):
    """What a handler knows about the call besides its parameters.

    Args:
        method: the method name called.
        creds: the caller's credentials, from the kernel.
        access: what the connection was granted.
        connection: the connection, for notifications (event subscriptions).
        request_id: the request's id (None for a notification).
        is_notification: whether the caller expects no reply.
        after_reply: set by a method registered with ``upgrade=True`` to take the
            connection's byte stream once the reply is written; the connection speaks no
            JSON afterwards.
    """

    method: str
    creds: PeerCredentials
    access: Access
    connection: Peer
    request_id: Id = None
    is_notification: bool = False
    after_reply: AfterReply | None = None


_Checker: TypeAlias = Callable[[Any, str], Any]


def _fail(where: str, expected: str, value: object) -> InvalidParamsError:
    return InvalidParamsError(f"{where}: expected {expected}, got {json_kind(value)}", field=where)


def _compile(tp: Any) -> tuple[_Checker, str]:
    """A checker for values of annotation *tp*, and the annotation's printed name."""
    if tp is Any or tp is object:
        return (lambda v, where: v), "any"
    if tp is None or tp is type(None):
        return _exact(lambda v: v is None, "None"), "None"
    if tp is bool:
        return _exact(lambda v: isinstance(v, bool), "bool"), "bool"
    if tp is int:
        return _exact(lambda v: isinstance(v, int) and not isinstance(v, bool), "int"), "int"
    if tp is str:
        return _exact(lambda v: isinstance(v, str), "str"), "str"
    if tp is float:

        def check_float(v: Any, where: str) -> Any:
            if isinstance(v, int | float) and not isinstance(v, bool):
                return float(v)
            raise _fail(where, "float", v)

        return check_float, "float"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is list or origin is list:
        item, item_name = _compile(args[0] if args else Any)

        def check_list(v: Any, where: str) -> Any:
            if not isinstance(v, list):
                raise _fail(where, name, v)
            return [item(x, f"{where}[{i}]") for i, x in enumerate(v)]

        name = f"list[{item_name}]"
        return check_list, name
    if tp is dict or origin is dict:
        if args and args[0] is not str:
            raise TypeError(f"dict keys must be str in JSON, got {args[0]!r}")
        value, value_name = _compile(args[1] if args else Any)

        def check_dict(v: Any, where: str) -> Any:
            if not isinstance(v, dict):
                raise _fail(where, name, v)
            return {k: value(x, f"{where}.{k}") for k, x in v.items()}

        name = f"dict[str, {value_name}]"
        return check_dict, name
    if origin is Literal:
        choices = tuple(args)
        shown = " | ".join(json.dumps(c) for c in choices)

        def check_literal(v: Any, where: str) -> Any:
            # type() as well as ==, so that True does not pass for 1.
            for choice in choices:
                if type(v) is type(choice) and v == choice:
                    return v
            raise InvalidParamsError(
                f"{where}: must be one of {shown}, got {json.dumps(v, default=repr)}", field=where
            )

        return check_literal, shown
    if origin is typing.Union or origin is types.UnionType:
        members = [_compile(a) for a in args]
        name = " | ".join(n for _, n in members)

        def check_union(v: Any, where: str) -> Any:
            deeper: InvalidParamsError | None = None
            for check, _ in members:
                try:
                    return check(v, where)
                except InvalidParamsError as exc:
                    # A member whose shape fitted and failed inside (tags[1]) says more
                    # than "expected list[str] | None".
                    if exc.field != where:
                        deeper = exc
            raise deeper or _fail(where, name, v)

        return check_union, name
    raise TypeError(f"unsupported parameter type {tp!r}")


def _exact(test: Callable[[Any], bool], name: str) -> _Checker:
    def check(v: Any, where: str) -> Any:
        if test(v):
            return v
        raise _fail(where, name, v)

    return check


def _type_name(tp: Any) -> str:
    try:
        return _compile(tp)[1]
    except TypeError:
        return getattr(tp, "__name__", repr(tp))


@attrs.frozen(repr=False)
class Param(Record):
    """One named parameter of a method.

    Args:
        name: the parameter name (the JSON member name).
        type_name: its annotation, printed (``str | None``).
        required: whether a call must give it.
        check: validates (and, for float, converts) a value; raises InvalidParamsError.
        default: the value used when it is not given.
    """

    name: str
    type_name: str
    required: bool
    check: _Checker = attrs.field(repr=False, eq=False)
    default: JSON = None


@attrs.frozen(repr=False)
class Method(Record):
    """A registered method."""

    name: str
    handler: Callable[..., Awaitable[JSON]] = attrs.field(repr=False)
    access: Access
    doc: str
    params: tuple[Param, ...]
    returns: str
    upgrade: bool = False

    def bind(self, params: Params) -> dict[str, Any]:
        """The keyword arguments for *params*, checked against the signature.

        Raises:
            InvalidParamsError: positional params, or an unknown, missing or ill-typed one.
        """
        if isinstance(params, list):
            raise InvalidParamsError(
                f"params: {self.name} takes named parameters (a JSON object), got an array",
                field="params",
            )
        given = params or {}
        known = {p.name: p for p in self.params}
        for key in given:
            if key not in known:
                takes = ", ".join(known) or "no parameters"
                raise InvalidParamsError(
                    f"unknown parameter {key!r} ({self.name} takes: {takes})", field=key
                )
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in given:
                out[p.name] = p.check(given[p.name], p.name)
            elif p.required:
                raise InvalidParamsError(
                    f"missing required parameter {p.name!r} ({p.type_name})", field=p.name
                )
        return out

    def describe(self) -> dict[str, JSON]:
        """This method as plain data, for the generated reference."""
        return {
            "name": self.name,
            "access": self.access,
            "upgrade": self.upgrade,
            "doc": self.doc,
            "params": [
                {"name": p.name, "type": p.type_name, "required": p.required}
                | ({} if p.required else {"default": p.default})
                for p in self.params
            ],
            "returns": self.returns,
        }


_H = TypeVar("_H", bound=Callable[..., Awaitable[Any]])


def _hints(
    name: str, handler: Callable[..., Awaitable[Any]], evaluated: dict[tuple[str, int], Any]
) -> dict[str, Any]:
    """The handler's annotations, evaluated one by one so that a failure names its own.

    A return annotation that cannot be evaluated (a name imported only for type
    checking) is left out; the reference then shows the result as ``any``.

    *evaluated* remembers each annotation's value by its text and module: a method
    table's few dozen handlers spell the same ``str``, ``int`` and ``str | None`` a few
    hundred times, and typing's evaluation compiles the text anew every time.
    """
    hints: dict[str, Any] = {}
    namespace = getattr(handler, "__globals__", {})
    for key, annotation in inspect.get_annotations(handler).items():
        if not isinstance(annotation, str):
            hints[key] = annotation
            continue
        cache_key = (annotation, id(namespace))
        try:
            hints[key] = evaluated[cache_key]
            continue
        except KeyError:
            pass
        try:
            # Annotations are source code of the handler's own module, as typing evaluates them.
            hints[key] = evaluated[cache_key] = eval(annotation, namespace)
        except NameError as exc:
            if key != "return":
                raise TypeError(
                    f"{name}: parameter {key!r}: cannot resolve its annotation "
                    f"{annotation!r} ({exc})"
                ) from None
    return hints


def _signature(
    name: str,
    handler: Callable[..., Awaitable[Any]],
    evaluated: dict[tuple[str, int], Any],
) -> tuple[list[Param], str]:
    if not inspect.iscoroutinefunction(handler):
        raise TypeError(f"{name}: the handler must be an async function")
    sig = inspect.signature(handler)
    hints = _hints(name, handler, evaluated)
    parameters = list(sig.parameters.values())
    if not parameters or parameters[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(f"{name}: the handler's first parameter must take the CallContext")
    params: list[Param] = []
    for p in parameters[1:]:
        if p.kind not in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise TypeError(f"{name}: parameter {p.name!r} must be a named parameter")
        if p.name not in hints:
            raise TypeError(f"{name}: parameter {p.name!r} needs a type annotation")
        try:
            check, type_name = _compile(hints[p.name])
        except TypeError as exc:
            raise TypeError(f"{name}: parameter {p.name!r}: {exc}") from None
        required = p.default is inspect.Parameter.empty
        params.append(
            Param(
                name=p.name,
                type_name=type_name,
                required=required,
                default=None if required else p.default,
                check=check,
            )
        )
    returns = _type_name(hints["return"]) if "return" in hints else "any"
    return params, returns


class Registry:
    """The methods a server offers."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}
        # Annotations evaluated so far (see _hints); the handlers hold their modules,
        # so a module's id names it for as long as this registry lives.
        self._evaluated: dict[tuple[str, int], Any] = {}

    def add(
        self,
        name: str,
        handler: Callable[..., Awaitable[Any]],
        *,
        access: Access = "rw",
        doc: str | None = None,
        upgrade: bool = False,
    ) -> Method:
        """Register *handler* as method *name*.

        Args:
            name: dotted lowercase name (``domain.start``); ``rpc.`` is reserved.
            handler: ``async def handler(ctx, *, param: type = default, ...)``.
            access: ``"rw"`` (changes something) or ``"ro"`` (only reads).
            doc: the reference text; defaults to the handler's docstring.
            upgrade: the method may set ``ctx.after_reply`` to take over the connection.
                The server reads nothing more from the connection until such a call
                has finished, so that bytes sent after it are not taken for JSON.

        Raises:
            ValueError: a bad or duplicate name, or a bad access level.
            TypeError: the handler's signature is not one the dispatcher can check.
        """
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"method name: must be dotted lowercase words, got {name!r}")
        if name.startswith("rpc."):
            raise ValueError(f"method name: the rpc. prefix is reserved, got {name!r}")
        if name in self._methods:
            raise ValueError(f"method name: {name!r} is already registered")
        if access not in ("rw", "ro"):
            raise ValueError(f"access: must be 'rw' or 'ro', got {access!r}")
        params, returns = _signature(name, handler, self._evaluated)
        method = Method(
            name=name,
            handler=handler,
            access=access,
            doc=inspect.cleandoc(doc) if doc is not None else (inspect.getdoc(handler) or ""),
            params=tuple(params),
            returns=returns,
            upgrade=upgrade,
        )
        self._methods[name] = method
        return method

    def method(
        self, name: str, *, access: Access = "rw", doc: str | None = None, upgrade: bool = False
    ) -> Callable[[_H], _H]:
        """Decorator form of :meth:`add`; returns the handler unchanged."""

        def register(handler: _H) -> _H:
            self.add(name, handler, access=access, doc=doc, upgrade=upgrade)
            return handler

        return register

    def get(self, name: str) -> Method | None:
        """The method called *name*, if any."""
        return self._methods.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __len__(self) -> int:
        return len(self._methods)

    def names(self) -> list[str]:
        """Every method name, sorted."""
        return sorted(self._methods)

    def describe(self) -> list[dict[str, JSON]]:
        """Every method as plain data, sorted by name (see :meth:`Method.describe`)."""
        return [self._methods[n].describe() for n in self.names()]

    def _resolve(self, name: str, access: Access) -> Method:
        # Access is checked before the parameters: a read-only caller learns nothing
        # about a read-write method's signature.
        method = self._methods.get(name)
        if method is None:
            raise MethodNotFoundError(f"method not found: {name!r}")
        if method.access == "rw" and access != "rw":
            raise PermissionDeniedError(
                f"{name}: needs read-write access; this connection is read-only"
            )
        return method

    async def dispatch(
        self, call: Request | Notification, ctx: CallContext
    ) -> Response | ErrorResponse | None:
        """Run *call* and build its reply (None for a notification).

        Never raises for a handler's failure; cancellation passes through.
        """
        request_id = call.id if isinstance(call, Request) else None
        try:
            method = self._resolve(call.method, ctx.access)
            kwargs = method.bind(call.params)
            result = await method.handler(ctx, **kwargs)
        except SupervisorError as exc:
            ctx.after_reply = None
            if isinstance(call, Notification):
                LOGGER.info(
                    "rpc_notification_failed", method=call.method, code=exc.code, error=str(exc)
                )
                return None
            return ErrorResponse(request_id, ErrorObject(exc.code, exc.message, exc.to_data()))
        except Exception:
            ctx.after_reply = None
            incident = secrets.token_hex(4)
            LOGGER.exception("rpc_method_failed", method=call.method, incident=incident)
            return None if isinstance(call, Notification) else _internal(request_id, incident)
        if ctx.after_reply is not None:
            if not method.upgrade:
                ctx.after_reply = None
                incident = secrets.token_hex(4)
                LOGGER.error(
                    "rpc_upgrade_not_declared",
                    method=call.method,
                    incident=incident,
                    hint="register the method with upgrade=True",
                )
                return None if isinstance(call, Notification) else _internal(request_id, incident)
            if isinstance(call, Notification):
                # Nobody waits for a reply, so there is no moment to hand the stream over.
                ctx.after_reply = None
        if isinstance(call, Notification):
            return None
        return Response(request_id, result)


def _internal(request_id: Id, incident: str) -> ErrorResponse:
    data = {"type": InternalError.__name__, "incident": incident}
    return ErrorResponse(
        request_id,
        ErrorObject(ErrorCode.INTERNAL_ERROR, f"internal error (incident {incident})", data),
    )
