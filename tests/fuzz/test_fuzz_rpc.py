"""Fuzzing the JSON-RPC framer and the daemon's real method table.

- Framer: any bytes, cut into any chunks, give a server connection only messages,
  :class:`Invalid` (whose error reply encodes), end of input, or — for an over-long
  line — :class:`RemoteProtocolError`; nothing else escapes.
- Dispatcher: every method of the daemon's registry, called with random parameters,
  answers with a result or a proper error: never "internal error" (a handler crash),
  and an invalid-parameter error names the parameter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.config import Config
from supervisor.daemon import Daemon
from supervisor.errors import ERRORS_BY_CODE
from supervisor.rpc.dispatch import CallContext, Registry
from supervisor.rpc.peercred import PeerCredentials
from supervisor.rpc.protocol import (
    NEED_DATA,
    Batch,
    Connection,
    ConnectionClosed,
    ErrorCode,
    ErrorResponse,
    Invalid,
    Notification,
    RemoteProtocolError,
    Request,
    Response,
    encode,
)
from supervisor.vmm import caps as capsmod

# -- the framer ----------------------------------------------------------------------------

fragments = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"\n",
            b"\r\n",
            b"{",
            b"}",
            b"[",
            b"]",
            b'"jsonrpc":"2.0"',
            b'"id":',
            b'"method":',
            b'"params":',
            b"null",
            b"1e999",
            b"-0",
            b'"\\ud800"',
            b"\xff\xfe",
            b",",
            b":",
            b'{"jsonrpc":"2.0","id":1,"method":"x"}\n',
            b"[]\n",
            b"[1,2]\n",
            b" \t\n",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(fragments, max_size=30), st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_any_bytes_in_any_chunks_decode_to_events(parts: list[bytes], cuts: list[int]) -> None:
    conn = Connection("server", max_message=256)
    stream = b"".join(parts)
    chunks, i, k = [], 0, 0
    while i < len(stream):
        n = cuts[k % len(cuts)]
        chunks.append(stream[i : i + n])
        i, k = i + n, k + 1
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            while True:
                event = conn.next_event()
                if event is NEED_DATA or isinstance(event, ConnectionClosed):
                    break
                items = event.messages if isinstance(event, Batch) else (event,)
                for item in items:
                    assert isinstance(item, Request | Notification | Invalid)
                    if isinstance(item, Invalid):
                        reply = json.loads(encode(item.reply))
                        assert reply["error"]["code"] in {int(c) for c in ErrorCode}
                        assert reply["error"]["message"]
            if isinstance(event, ConnectionClosed):
                break
    except RemoteProtocolError as exc:
        assert exc.reply.error.code == ErrorCode.PARSE_ERROR
        assert any(len(line) > 256 for line in stream.replace(b"\r", b"").split(b"\n"))


# -- the daemon's method table ----------------------------------------------------------

ROOT = PeerCredentials(uid=0, gid=0, groups=(0,), pid=1)
#: Methods that run host tools (a process per call): fuzzed elsewhere by their parsers.
SLOW = {
    "connect.get_version",
    "connect.get_hostname",
    "connect.get_cpu_model_names",
    "connect.get_max_vcpus",
    "connect.host_validate",
    "nodedev.list",
}


@attrs.define
class _Peer:
    sent: list[tuple[str, Any]] = attrs.field(factory=list)
    closed: bool = False

    def notify_nowait(self, method: str, params: Any = None) -> bool:
        self.sent.append((method, params))
        return True


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Registry]]:
    from supervisor import api
    from supervisor.vmm.sim import install, teardown

    root = str(tmp_path_factory.mktemp("fuzzhost"))
    host = install(root)
    daemon = Daemon(Config(), host, capsmod.DEFAULT)
    yield daemon, api.build_registry(daemon)
    teardown(root)


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["web1", "rw", "ro", "", "x" * 300, "-1"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
param_names = st.sampled_from(
    [
        "name",
        "uuid",
        "xml",
        "mode",
        "bytes",
        "autostart",
        "timeout",
        "wait",
        "flags",
        "events",
        "paused",
        "force",
        "since",
        "x",
    ]
)


def _method_names(registry: Registry) -> list[str]:
    return sorted(n for n in registry.names() if n not in SLOW)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_every_method_answers_any_parameters_with_a_proper_error(
    table: tuple[Daemon, Registry], data: st.DataObject
) -> None:
    daemon, registry = table
    method = data.draw(st.sampled_from(_method_names(registry)), label="method")
    params: Any = data.draw(
        st.dictionaries(param_names, json_value, max_size=4)
        | st.lists(json_value, max_size=3)
        | st.none(),
        label="params",
    )
    call = Request(1, method, params)
    for access in ("rw", "ro"):
        ctx = CallContext(method=method, creds=ROOT, access=access, connection=_Peer())
        reply = trio.run(registry.dispatch, call, ctx)
        assert isinstance(reply, Response | ErrorResponse)
        if isinstance(reply, ErrorResponse):
            err = reply.error
            assert err.code != ErrorCode.INTERNAL_ERROR, err.message
            assert err.message
            # A code the clients know: a JSON-RPC one or one of the project's errors.
            assert err.code in ERRORS_BY_CODE or err.code in {int(c) for c in ErrorCode}
            if err.code == ErrorCode.INVALID_PARAMS and isinstance(params, dict) and params:
                assert isinstance(err.data, dict), err.message
                assert err.data.get("field"), err.message
    assert not daemon.guests  # nothing random ever defined a guest
