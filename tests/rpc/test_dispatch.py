from __future__ import annotations

from typing import Any, Literal

import attrs
import pytest
import structlog

from supervisor.errors import (
    ERRORS_BY_CODE,
    GuestNotFoundError,
    HostToolError,
    PermissionDeniedError,
    SupervisorError,
)
from supervisor.rpc.dispatch import Access, CallContext, Registry
from supervisor.rpc.errors import (
    InternalError,
    InvalidParamsError,
    MethodNotFoundError,
    RemoteError,
    error_from_object,
)
from supervisor.rpc.peercred import PeerCredentials
from supervisor.rpc.protocol import (
    ErrorCode,
    ErrorObject,
    ErrorResponse,
    Notification,
    Params,
    Request,
    Response,
)


@attrs.define
class FakePeer:
    sent: list[tuple[str, Params]] = attrs.field(factory=list)
    closed: bool = False

    def notify_nowait(self, method: str, params: Params = None) -> bool:
        self.sent.append((method, params))
        return True


ROOT = PeerCredentials(uid=0, gid=0, groups=(0,), pid=1)


def context(method: str, access: Access = "rw") -> CallContext:
    return CallContext(method=method, creds=ROOT, access=access, connection=FakePeer())


registry = Registry()


@registry.method("domain.start", access="rw")
async def start(
    ctx: CallContext,
    *,
    name: str,
    paused: bool = False,
    memory: int | None = None,
    weight: float = 1.0,
    tags: list[str] | None = None,
    env: dict[str, int] | None = None,
    mode: Literal["fast", "safe"] = "safe",
    extra: Any = None,
) -> dict[str, Any]:
    """Start a guest."""
    return {
        "name": name,
        "paused": paused,
        "memory": memory,
        "weight": weight,
        "tags": tags,
        "env": env,
        "mode": mode,
        "extra": extra,
    }


@registry.method("domain.list", access="ro", doc="List guests.")
async def list_guests(ctx: CallContext) -> list[str]:
    return ["web1"]


@registry.method("domain.lookup", access="ro")
async def lookup(ctx: CallContext, *, name: str) -> None:
    raise GuestNotFoundError(f"no guest named {name!r}", field="name")


@registry.method("domain.boom", access="ro")
async def boom(ctx: CallContext) -> None:
    raise RuntimeError("secret path /root/.key leaked")


@registry.method("domain.tool", access="ro")
async def tool(ctx: CallContext) -> None:
    raise HostToolError(
        "bhyvectl --destroy failed", argv=["bhyvectl", "--vm=x", "--destroy"], status=1, stderr="e"
    )


@registry.method("domain.sneaky", access="ro")
async def sneaky(ctx: CallContext) -> None:
    async def take(stream: Any) -> None:
        pass

    ctx.after_reply = take


@registry.method("console.attach", access="rw", upgrade=True)
async def attach(ctx: CallContext, *, name: str) -> str:
    async def take(stream: Any) -> None:
        pass

    ctx.after_reply = take
    return name


async def call(method: str, params: Params = None, access: Access = "rw") -> Any:
    ctx = context(method, access)
    reply = await registry.dispatch(Request(1, method, params), ctx)
    assert isinstance(reply, Response | ErrorResponse)
    return reply


async def error(method: str, params: Params = None, access: Access = "rw") -> ErrorObject:
    reply = await call(method, params, access)
    assert isinstance(reply, ErrorResponse), reply
    return reply.error


# --------------------------------------------------------------------------- parameters


async def test_named_params_reach_the_handler_with_defaults() -> None:
    reply = await call("domain.start", {"name": "web1", "weight": 2, "tags": ["a"]})
    assert reply == Response(
        1,
        {
            "name": "web1",
            "paused": False,
            "memory": None,
            "weight": 2.0,
            "tags": ["a"],
            "env": None,
            "mode": "safe",
            "extra": None,
        },
    )
    assert isinstance(reply.result["weight"], float)


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        (
            [1, 2],
            "params",
            "params: domain.start takes named parameters (a JSON object), got an array",
        ),
        ({}, "name", "missing required parameter 'name' (str)"),
        (
            {"name": "a", "nmae": "b"},
            "nmae",
            "unknown parameter 'nmae' (domain.start takes: name, paused, memory, weight, tags, "
            "env, mode, extra)",
        ),
        ({"name": 3}, "name", "name: expected str, got number"),
        ({"name": "a", "paused": 1}, "paused", "paused: expected bool, got number"),
        ({"name": "a", "memory": True}, "memory", "memory: expected int | None, got boolean"),
        ({"name": "a", "memory": 1.5}, "memory", "memory: expected int | None, got number"),
        ({"name": "a", "weight": "1"}, "weight", "weight: expected float, got string"),
        ({"name": "a", "tags": ["x", 2]}, "tags[1]", "tags[1]: expected str, got number"),
        ({"name": "a", "tags": "x"}, "tags", "tags: expected list[str] | None, got string"),
        ({"name": "a", "env": {"A": "1"}}, "env.A", "env.A: expected int, got string"),
        (
            {"name": "a", "mode": "quick"},
            "mode",
            'mode: must be one of "fast" | "safe", got "quick"',
        ),
    ],
)
async def test_bad_params_are_invalid_params_naming_the_parameter(
    params: Params, field: str, message: str
) -> None:
    err = await error("domain.start", params)
    assert err.code == ErrorCode.INVALID_PARAMS
    assert err.message == message
    assert err.data == {"type": "InvalidParamsError", "field": field}


async def test_params_may_be_left_out_for_a_method_without_them() -> None:
    assert await call("domain.list") == Response(1, ["web1"])
    assert await call("domain.list", {}) == Response(1, ["web1"])
    err = await error("domain.list", {"x": 1})
    assert err.message == "unknown parameter 'x' (domain.list takes: no parameters)"


# --------------------------------------------------------------------------- errors


async def test_unknown_methods_and_the_reserved_prefix_are_not_found() -> None:
    for name in ("domain.nope", "rpc.discover"):
        err = await error(name)
        assert err.code == ErrorCode.METHOD_NOT_FOUND
        assert name in err.message


async def test_read_only_callers_may_not_call_read_write_methods() -> None:
    err = await error("domain.start", {"name": "web1"}, access="ro")
    assert err.code == PermissionDeniedError.code
    assert err.message == "domain.start: needs read-write access; this connection is read-only"
    # Checked before the params, so nothing is learned about them.
    assert (
        await error("domain.start", {"bogus": 1}, access="ro")
    ).code == PermissionDeniedError.code
    assert await call("domain.list", access="ro") == Response(1, ["web1"])


async def test_supervisor_errors_keep_their_code_message_and_data() -> None:
    err = await error("domain.lookup", {"name": "db9"})
    assert err == ErrorObject(
        GuestNotFoundError.code,
        "no guest named 'db9'",
        {"type": "GuestNotFoundError", "field": "name"},
    )


async def test_other_exceptions_are_internal_errors_that_leak_nothing() -> None:
    with structlog.testing.capture_logs() as logs:
        err = await error("domain.boom")
    assert err.code == ErrorCode.INTERNAL_ERROR
    assert "secret" not in err.message
    assert "secret" not in str(err.data)
    incident = err.data["incident"]
    assert incident in err.message
    [entry] = [e for e in logs if e["event"] == "rpc_method_failed"]
    assert entry["incident"] == incident
    assert entry["log_level"] == "error"
    assert entry["exc_info"] is True


async def test_notifications_run_but_are_never_answered() -> None:
    ctx = context("domain.lookup")
    assert await registry.dispatch(Notification("domain.lookup", {"name": "x"}), ctx) is None
    assert await registry.dispatch(Notification("domain.nope"), ctx) is None
    assert await registry.dispatch(Notification("domain.boom"), ctx) is None


async def test_only_upgrade_methods_may_take_the_connection() -> None:
    ctx = context("domain.sneaky")
    reply = await registry.dispatch(Request(1, "domain.sneaky"), ctx)
    assert isinstance(reply, ErrorResponse)
    assert reply.error.code == ErrorCode.INTERNAL_ERROR
    assert ctx.after_reply is None

    ctx = context("console.attach")
    reply = await registry.dispatch(Request(1, "console.attach", {"name": "web1"}), ctx)
    assert reply == Response(1, "web1")
    assert ctx.after_reply is not None

    ctx = context("console.attach")
    assert await registry.dispatch(Notification("console.attach", {"name": "x"}), ctx) is None
    assert ctx.after_reply is None


# --------------------------------------------------------------------------- registration


def test_describe_lists_methods_with_typed_params() -> None:
    described = {m["name"]: m for m in registry.describe()}
    assert list(described) == sorted(described)
    start_ = described["domain.start"]
    assert start_["access"] == "rw"
    assert start_["doc"] == "Start a guest."
    assert start_["returns"] == "dict[str, any]"
    assert start_["params"][:3] == [
        {"name": "name", "type": "str", "required": True},
        {"name": "paused", "type": "bool", "required": False, "default": False},
        {"name": "memory", "type": "int | None", "required": False, "default": None},
    ]
    assert described["domain.list"]["doc"] == "List guests."
    assert described["console.attach"]["upgrade"] is True


def test_registration_refuses_what_cannot_be_checked() -> None:
    reg = Registry()

    async def ok(ctx: CallContext) -> None:
        pass

    def sync(ctx: CallContext) -> None:
        pass

    async def untyped(ctx: CallContext, *, name) -> None:  # type: ignore[no-untyped-def]
        pass

    async def odd(ctx: CallContext, *, when: set[int]) -> None:
        pass

    async def star(ctx: CallContext, *args: int) -> None:
        pass

    async def no_ctx(*, name: str) -> None:
        pass

    with pytest.raises(ValueError, match="dotted lowercase"):
        reg.add("Domain.Start", ok)
    with pytest.raises(ValueError, match="dotted lowercase"):
        reg.add("start", ok)
    with pytest.raises(ValueError, match="reserved"):
        reg.add("rpc.discover", ok)
    with pytest.raises(ValueError, match="access"):
        reg.add("a.b", ok, access="admin")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async"):
        reg.add("a.b", sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'name' needs a type annotation"):
        reg.add("a.b", untyped)
    with pytest.raises(TypeError, match="unsupported parameter type"):
        reg.add("a.b", odd)
    with pytest.raises(TypeError, match="must be a named parameter"):
        reg.add("a.b", star)
    with pytest.raises(TypeError, match="CallContext"):
        reg.add("a.b", no_ctx)
    reg.add("a.b", ok)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a.b", ok)
    assert "a.b" in reg
    assert reg.names() == ["a.b"]
    assert len(reg) == 1


# --------------------------------------------------------------------------- rebuilding errors


@pytest.mark.parametrize("cls", sorted(ERRORS_BY_CODE.values(), key=lambda c: c.code))
def test_every_error_class_survives_the_trip(cls: type[SupervisorError]) -> None:
    if issubclass(cls, HostToolError):
        exc: SupervisorError = cls("zfs failed", argv=["zfs", "list"], status=2, stderr="no pool")
    else:
        exc = cls("something about memory", field="memory", data={"max": 4})
    rebuilt = error_from_object(ErrorObject(exc.code, exc.message, exc.to_data()))
    assert type(rebuilt) is cls
    assert rebuilt.message == exc.message
    assert rebuilt.to_data() == exc.to_data()
    if isinstance(rebuilt, HostToolError):
        assert (rebuilt.argv, rebuilt.status, rebuilt.stderr) == (["zfs", "list"], 2, "no pool")


def test_protocol_codes_and_unknown_codes_rebuild() -> None:
    assert type(error_from_object(ErrorObject(-32601, "m"))) is MethodNotFoundError
    assert type(error_from_object(ErrorObject(-32602, "m"))) is InvalidParamsError
    assert type(error_from_object(ErrorObject(-32603, "m"))) is InternalError
    unknown = error_from_object(ErrorObject(-32099, "from the future", [1]))
    assert isinstance(unknown, RemoteError)
    assert unknown.remote_code == -32099
    assert str(unknown) == "from the future"


def test_an_unresolvable_annotation_is_named_or_left_out() -> None:
    reg = Registry()

    async def returns_unknown(ctx: CallContext, *, name: str) -> NotImportedHere:  # type: ignore[name-defined]  # noqa: F821
        return None

    async def takes_unknown(ctx: CallContext, *, spec: NotImportedHere) -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    method = reg.add("a.ret", returns_unknown)
    assert method.returns == "any"
    assert [p.name for p in method.params] == ["name"]
    with pytest.raises(TypeError, match="'spec': cannot resolve its annotation 'NotImportedHere'"):
        reg.add("a.arg", takes_unknown)
