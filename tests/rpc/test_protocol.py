from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.rpc.protocol import (
    MAX_MESSAGE,
    NEED_DATA,
    Batch,
    Connection,
    ConnectionClosed,
    ErrorCode,
    ErrorObject,
    ErrorResponse,
    Event,
    Invalid,
    LineBuffer,
    LocalProtocolError,
    Notification,
    RemoteProtocolError,
    Request,
    Response,
    State,
    decode,
    encode,
)


def events(conn: Connection) -> list[Event]:
    out: list[Event] = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return out


def server_events(data: bytes, *, eof: bool = False, max_message: int = MAX_MESSAGE) -> list[Event]:
    conn = Connection("server", max_message=max_message)
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    return events(conn)


# --------------------------------------------------------------------------- encoding


def test_encode_is_one_compact_line_of_utf8() -> None:
    line = encode(Request(id=1, method="domain.start", params={"name": "wéb1"}))
    assert (
        line
        == '{"jsonrpc":"2.0","method":"domain.start","params":{"name":"wéb1"},"id":1}\n'.encode()
    )


def test_encode_leaves_out_absent_params_and_error_data() -> None:
    assert encode(Notification("events.tick")) == b'{"jsonrpc":"2.0","method":"events.tick"}\n'
    line = encode(ErrorResponse(None, ErrorObject(-32600, "bad")))
    assert json.loads(line) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "bad"},
    }


def test_a_lone_surrogate_received_can_be_echoed() -> None:
    received = decode(b'{"jsonrpc":"2.0","method":"x\\ud800","id":1}')
    assert isinstance(received, Request)
    line = encode(Response(1, received.method))
    assert b"\n" not in line[:-1]
    assert json.loads(line)["result"] == "x\ud800"


def test_a_newline_inside_a_string_never_splits_the_line() -> None:
    line = encode(Response(1, "two\nlines\r\n"))
    assert line.count(b"\n") == 1


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (Response(1, {1, 2}), "cannot encode"),
        (Response(1, float("nan")), "cannot encode"),
        (Response(True, 1), "id"),
        (Response([1], 1), "id"),
        (Request(1, "", None), "method"),
        (Request(1, "x", "params"), "params"),  # type: ignore[arg-type]
        (ErrorResponse(1, ErrorObject(True, "m")), "error.code"),
    ],
)
def test_encode_refuses_what_json_rpc_cannot_carry(message: object, fragment: str) -> None:
    with pytest.raises(LocalProtocolError, match=fragment):
        encode(message)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- decoding requests


def test_decode_request_and_notification() -> None:
    assert decode(b'{"jsonrpc":"2.0","method":"a.b","params":{"x":1},"id":"7"}') == Request(
        "7", "a.b", {"x": 1}
    )
    assert decode(b'{"jsonrpc":"2.0","method":"a.b","params":[1]}') == Notification("a.b", [1])
    # An explicit null id is a request (that is answered), not a notification.
    assert decode(b'{"jsonrpc":"2.0","method":"a.b","id":null}') == Request(None, "a.b")


def error_of(event: object) -> tuple[int, object, str]:
    assert isinstance(event, Invalid), event
    return event.error.code, event.id, event.error.message


def test_malformed_json_is_a_parse_error_with_null_id() -> None:
    code, id, message = error_of(decode(b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar"'))
    assert (code, id) == (ErrorCode.PARSE_ERROR, None)
    assert message.startswith("parse error:")


@pytest.mark.parametrize(
    "line",
    [b"\xff\xfe{}", b"[" * 100_000, b'{"a": NaN}', b"Infinity", b'{"a": 1} trailing'],
)
def test_undecodable_lines_are_parse_errors_not_crashes(line: bytes) -> None:
    assert error_of(decode(line))[0] == ErrorCode.PARSE_ERROR


def test_empty_batch_is_one_invalid_request() -> None:
    code, id, message = error_of(decode(b"[]"))
    assert (code, id) == (ErrorCode.INVALID_REQUEST, None)
    assert "batch" in message


def test_batch_of_non_objects_gives_one_error_each() -> None:
    batch = decode(b"[1,2,3]")
    assert isinstance(batch, Batch)
    assert [error_of(e)[0] for e in batch.messages] == [ErrorCode.INVALID_REQUEST] * 3


def test_batch_mixes_valid_and_invalid_elements() -> None:
    batch = decode(
        b'[{"jsonrpc":"2.0","method":"sum","params":[1,2,4],"id":"1"},'
        b'{"jsonrpc":"2.0","method":"notify_hello","params":[7]},'
        b'{"foo":"boo"},'
        b'{"jsonrpc":"2.0","method":"get_data","id":"9"}]'
    )
    assert isinstance(batch, Batch)
    first, second, third, fourth = batch.messages
    assert first == Request("1", "sum", [1, 2, 4])
    assert second == Notification("notify_hello", [7])
    assert error_of(third)[0] == ErrorCode.INVALID_REQUEST
    assert fourth == Request("9", "get_data")


@pytest.mark.parametrize(
    ("line", "id", "fragment"),
    [
        (b'{"method":"a.b","id":1}', 1, 'jsonrpc: must be "2.0", got missing'),
        (b'{"jsonrpc":"1.0","method":"a.b","id":1}', 1, 'jsonrpc: must be "2.0", got "1.0"'),
        (
            b'{"jsonrpc":"2.0","method":1,"params":"bar"}',
            None,
            "method: must be a string, got number",
        ),
        (b'{"jsonrpc":"2.0","id":3}', 3, "method: must be a string, got missing"),
        (b'{"jsonrpc":"2.0","method":"a.b","params":"x","id":2}', 2, "params: must be an object"),
        (
            b'{"jsonrpc":"2.0","method":"a.b","id":true}',
            None,
            "id: must be a string, number or null",
        ),
        (b'{"jsonrpc":"2.0","method":"a.b","id":{}}', None, "id: must be"),
        (b'{"jsonrpc":"2.0","method":"a.b","param":{},"id":4}', 4, "unknown member 'param'"),
        (b'"just a string"', None, "request must be a JSON object, got string"),
    ],
)
def test_invalid_requests_name_the_problem_and_keep_a_readable_id(
    line: bytes, id: object, fragment: str
) -> None:
    code, got_id, message = error_of(decode(line))
    assert code == ErrorCode.INVALID_REQUEST
    assert got_id == id
    assert fragment in message


def test_a_server_treats_a_response_as_an_invalid_request() -> None:
    assert error_of(decode(b'{"jsonrpc":"2.0","result":1,"id":1}'))[0] == ErrorCode.INVALID_REQUEST


# --------------------------------------------------------------------------- decoding replies


def test_decode_replies_as_a_client() -> None:
    assert decode(b'{"jsonrpc":"2.0","result":[1],"id":1}', "client") == Response(1, [1])
    assert decode(
        b'{"jsonrpc":"2.0","error":{"code":-32020,"message":"no","data":{"x":1}},"id":"a"}',
        "client",
    ) == ErrorResponse("a", ErrorObject(-32020, "no", {"x": 1}))
    assert decode(b'{"jsonrpc":"2.0","method":"event","params":{}}', "client") == Notification(
        "event", {}
    )


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b'{"jsonrpc":"2.0","result":1,"error":{"code":1,"message":"m"},"id":1}', "exactly one"),
        (b'{"jsonrpc":"2.0","id":1}', "exactly one"),
        (b'{"jsonrpc":"2.0","result":1}', "id: missing"),
        (b'{"jsonrpc":"2.0","error":{"code":"x","message":"m"},"id":1}', "error.code"),
        (b'{"jsonrpc":"2.0","error":{"code":1},"id":1}', "error.message"),
        (b'{"jsonrpc":"2.0","error":[],"id":1}', "error: must be an object"),
        (b'{"jsonrpc":"2.0","method":"m","id":1}', "requests from the server"),
    ],
)
def test_bad_replies_are_invalid_for_a_client(line: bytes, fragment: str) -> None:
    assert fragment in error_of(decode(line, "client"))[2]


# --------------------------------------------------------------------------- framing


def test_lines_may_end_in_crlf_and_blank_lines_are_skipped() -> None:
    got = server_events(
        b'\r\n  \n{"jsonrpc":"2.0","method":"a.b","id":1}\r\n\n{"jsonrpc":"2.0","method":"c.d"}\n'
    )
    assert got == [Request(1, "a.b"), Notification("c.d")]


def test_a_partial_line_waits_for_more_data() -> None:
    conn = Connection("server")
    conn.receive_data(b'{"jsonrpc":"2.0",')
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b'"method":"a.b"}\n')
    assert conn.next_event() == Notification("a.b")
    assert conn.next_event() is NEED_DATA


def test_an_unterminated_last_line_is_read_at_end_of_input() -> None:
    got = server_events(b'{"jsonrpc":"2.0","method":"a.b","id":1}', eof=True)
    assert got == [Request(1, "a.b"), ConnectionClosed()]


def test_a_message_of_exactly_the_cap_is_accepted_even_split_before_its_crlf() -> None:
    head, tail = b'{"jsonrpc":"2.0","method":"a.b","params":["', b'"]}'
    filler = 100 - len(head) - len(tail)
    line = head + b"x" * filler + tail
    assert len(line) == 100
    conn = Connection("server", max_message=100)
    conn.receive_data(line + b"\r")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\n")
    assert conn.next_event() == Notification("a.b", ["x" * filler])
    with pytest.raises(RemoteProtocolError):
        server_events(line + b"x\n", max_message=100)


def test_an_oversized_message_is_fatal_before_its_line_ends() -> None:
    conn = Connection("server", max_message=100)
    conn.receive_data(b'{"jsonrpc":"2.0","method":"a.b","id":1}\n' + b"x" * 102)
    assert conn.next_event() == Request(1, "a.b")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.code == ErrorCode.PARSE_ERROR
    assert "longer than 100 bytes" in str(info.value)
    assert conn.state is State.ERROR
    # The error stays: the next message cannot be found.
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    # ...but the one reply it deserves can still be sent.
    reply = json.loads(conn.send(info.value.reply))
    assert reply["id"] is None
    assert reply["error"]["code"] == -32700
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_line_buffer_rejects_a_bad_cap() -> None:
    with pytest.raises(ValueError, match="max_line"):
        LineBuffer(0)


# --------------------------------------------------------------------------- the connection


def test_end_of_input_closes_after_the_last_message() -> None:
    conn = Connection("server")
    conn.receive_data(b'{"jsonrpc":"2.0","method":"a.b","id":1}\n')
    conn.receive_data(b"")
    assert conn.next_event() == Request(1, "a.b")
    assert conn.next_event() == ConnectionClosed()
    assert conn.state is State.PEER_CLOSED
    assert conn.next_event() == ConnectionClosed()
    # A half-closed peer still gets its reply.
    assert json.loads(conn.send(Response(1, "ok")))["result"] == "ok"
    with pytest.raises(LocalProtocolError, match="PEER_CLOSED"):
        conn.receive_data(b"x")


def test_a_server_answers_each_request_once() -> None:
    conn = Connection("server")
    conn.receive_data(b'{"jsonrpc":"2.0","method":"a.b","id":1}\n')
    assert conn.next_event() == Request(1, "a.b")
    assert conn.awaiting_reply == 1
    with pytest.raises(LocalProtocolError, match="no request with id 2"):
        conn.send(Response(2, None))
    conn.send(Response(1, None))
    assert conn.awaiting_reply == 0
    with pytest.raises(LocalProtocolError, match="no request with id 1"):
        conn.send(ErrorResponse(1, ErrorObject(-32603, "again")))
    # A null-id error is how unreadable requests are answered: always allowed.
    conn.send(ErrorResponse(None, ErrorObject(-32700, "parse error")))


def test_an_unencodable_reply_leaves_the_request_waiting() -> None:
    conn = Connection("server")
    conn.receive_data(b'{"jsonrpc":"2.0","method":"a.b","id":"x"}\n')
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Response("x", object()))
    assert conn.awaiting_reply == 1
    conn.send(ErrorResponse("x", ErrorObject(-32603, "internal error")))
    assert conn.awaiting_reply == 0


def test_ids_of_different_json_types_are_different_requests() -> None:
    conn = Connection("server")
    conn.receive_data(b'{"jsonrpc":"2.0","method":"a.b","id":1}\n')
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Response("1", None))
    conn.send(Response(1, None))


def test_invalid_requests_with_an_id_are_answered_with_it() -> None:
    conn = Connection("server")
    conn.receive_data(b'{"jsonrpc":"2.0","id":5}\n')
    event = conn.next_event()
    assert isinstance(event, Invalid)
    assert json.loads(conn.send(event.reply))["id"] == 5


def test_batch_replies_are_checked_as_a_whole() -> None:
    conn = Connection("server")
    conn.receive_data(
        b'[{"jsonrpc":"2.0","method":"a.b","id":1},{"jsonrpc":"2.0","method":"c.d"}]\n'
    )
    batch = conn.next_event()
    assert isinstance(batch, Batch)
    with pytest.raises(LocalProtocolError):
        conn.send(Batch((Response(1, 1), Response(1, 2))))
    assert json.loads(conn.send(Batch((Response(1, 1),)))) == [
        {"jsonrpc": "2.0", "id": 1, "result": 1}
    ]


def test_each_role_sends_only_its_own_messages() -> None:
    with pytest.raises(LocalProtocolError, match="server cannot send Request"):
        Connection("server").send(Request(1, "a.b"))
    with pytest.raises(LocalProtocolError, match="client cannot send Response"):
        Connection("client").send(Response(1, 1))
    with pytest.raises(ValueError, match="role"):
        Connection("peer")  # type: ignore[arg-type]


def test_a_client_matches_replies_to_its_requests() -> None:
    conn = Connection("client")
    first, second = conn.next_id(), conn.next_id()
    assert (first, second) == (1, 2)
    conn.send(Request(first, "a.b"))
    with pytest.raises(LocalProtocolError, match="already waiting"):
        conn.send(Request(first, "a.b"))
    conn.receive_data(
        b'{"jsonrpc":"2.0","result":1,"id":1}\n{"jsonrpc":"2.0","result":1,"id":1}\n'
        b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"p"},"id":null}\n'
    )
    assert conn.next_event() == Response(1, 1)
    stray = conn.next_event()
    assert isinstance(stray, Invalid)
    assert "no request is waiting" in stray.error.message
    assert conn.next_event() == ErrorResponse(None, ErrorObject(-32700, "p"))


def test_switching_protocols_hands_back_the_unparsed_bytes() -> None:
    conn = Connection("server")
    conn.receive_data(b'{"jsonrpc":"2.0","method":"console.attach","id":1}\nraw \x00bytes\n{"not":')
    assert conn.next_event() == Request(1, "console.attach")
    conn.send(Response(1, None))
    assert conn.switch_protocol() == b'raw \x00bytes\n{"not":'
    assert conn.state is State.SWITCHED
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")
    with pytest.raises(LocalProtocolError):
        conn.send(Notification("a.b"))
    with pytest.raises(LocalProtocolError, match="cannot switch"):
        conn.switch_protocol()


def test_the_protocol_core_does_not_import_trio() -> None:
    code = (
        "import sys; import supervisor.rpc.protocol, supervisor.rpc.client;"
        "import supervisor.rpc.dispatch; print('trio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- properties

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.none() | st.integers() | st.text(max_size=10)
methods = st.text(min_size=1, max_size=20)
params = (
    st.none()
    | st.lists(json_values, max_size=3)
    | st.dictionaries(st.text(max_size=8), json_values, max_size=3)
)
calls = st.builds(Request, id=ids, method=methods, params=params) | st.builds(
    Notification, method=methods, params=params
)


@given(st.lists(calls, max_size=8), st.data())
def test_any_chunking_of_a_valid_stream_gives_the_same_messages(
    messages: list[Request | Notification], data: st.DataObject
) -> None:
    stream = b"".join(encode(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    conn = Connection("server")
    got: list[Event] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        if cut == start:
            continue  # b"" would mean end of input
        conn.receive_data(stream[start:cut])
        start = cut
        got.extend(events(conn))
    conn.receive_data(b"")
    got.extend(events(conn))
    assert got == [*messages, ConnectionClosed()]


@given(json_values, ids)
def test_results_round_trip(result: object, id: object) -> None:
    line = encode(Response(id, result))  # type: ignore[arg-type]
    assert decode(line[:-1], "client") == Response(id, result)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.lists(st.binary(min_size=1, max_size=64), max_size=12))
def test_random_bytes_never_crash_the_framer(chunks: list[bytes]) -> None:
    conn = Connection("server", max_message=64)
    error: RemoteProtocolError | None = None
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            for event in events(conn):
                if isinstance(event, Invalid):
                    assert event.error.code in (ErrorCode.PARSE_ERROR, ErrorCode.INVALID_REQUEST)
                    encode(event.reply)
                elif isinstance(event, Batch):
                    for item in event.messages:
                        if isinstance(item, Invalid):
                            encode(item.reply)
    except RemoteProtocolError as exc:
        error = exc
    if error is not None:
        assert error.code == ErrorCode.PARSE_ERROR
        assert json.loads(encode(error.reply))["id"] is None


garbage_lines = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b.strip() != b"")


@given(st.lists(calls.map(encode) | garbage_lines.map(lambda b: b + b"\n"), max_size=10))
def test_every_line_gets_exactly_one_event(lines: list[bytes]) -> None:
    # A bad line never swallows or splits its neighbours: one line, one event, whose
    # reply (if any) can be sent.
    conn = Connection("server")
    conn.receive_data(b"".join(lines))
    got = [e for e in events(conn) if not isinstance(e, ConnectionClosed)]
    expected = [line for line in lines if line.strip()]
    assert len(got) == len(expected)
    for event in got:
        if isinstance(event, Invalid):
            conn.send(event.reply)
        elif isinstance(event, Request):
            conn.send(Response(event.id, None))
    assert conn.awaiting_reply == 0
