"""The guest agent protocol core, and the simulated agent that speaks it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.agent.protocol import (
    AgentProtocolError,
    AgentSession,
    encode_command,
    parse_guest_info,
)
from supervisor.vmm.sim.agent import Agent


def test_sync_discards_stale_replies_before_the_delimiter() -> None:
    s = AgentSession()
    out = s.sync(42)
    assert out[0] == 0xFF
    assert json.loads(out[1:]) == {"execute": "guest-sync-delimited", "arguments": {"id": 42}}
    # A reply left over from an earlier client, then the answer to an older sync.
    assert s.receive(b'{"return": 7}\n\xff{"return": 41}\n') == []
    assert not s.synced
    assert s.receive(b'\xff{"return": 42}\n') == []
    assert s.synced
    replies = s.receive(b'{"return": {}}\n')
    assert [r.value for r in replies] == [{}]


def test_error_replies_carry_class_and_description() -> None:
    s = AgentSession()
    s.sync(1)
    s.receive(b'\xff{"return": 1}\n')
    [r] = s.receive(b'{"error": {"class": "CommandNotFound", "desc": "no such"}}\n')
    assert not r.ok
    assert (r.error_class, r.error_desc) == ("CommandNotFound", "no such")


def test_command_before_sync_is_refused() -> None:
    with pytest.raises(AgentProtocolError, match="guest-sync-delimited"):
        AgentSession().command("guest-ping")


def test_garbage_after_sync_is_a_protocol_error() -> None:
    s = AgentSession()
    s.sync(1)
    s.receive(b'\xff{"return": 1}\n')
    with pytest.raises(AgentProtocolError, match="not JSON"):
        s.receive(b"hello there\n")


@given(st.integers(min_value=1, max_value=64))
def test_replies_split_anywhere_are_reassembled(cut: int) -> None:
    stream = b'junk\xff{"return": 5}\n{"return": {"version": "7.2", "x": "\xc3\xa9"}}\n'
    s = AgentSession()
    s.sync(5)
    replies = []
    for i in range(0, len(stream), cut):
        replies += s.receive(stream[i : i + cut])
    assert [r.value for r in replies] == [{"version": "7.2", "x": "é"}]


def test_guest_info_lists_enabled_commands() -> None:
    info = parse_guest_info(
        {
            "version": "7.2.22",
            "supported_commands": [
                {"name": "guest-ping", "enabled": True},
                {"name": "guest-fsfreeze-freeze", "enabled": False},
            ],
        }
    )
    assert info.version == "7.2.22"
    assert info.commands == ("guest-ping",)


def _talk(agent: Agent, *commands: bytes) -> list[dict[str, object]]:
    out = agent.receive(b"".join(commands), now_ns=1_000)
    return [json.loads(line) for line in out.replace(b"\xff", b"").splitlines()]


def test_sim_agent_answers_sync_with_delimiter_and_freezes() -> None:
    ga = Agent()
    raw = ga.receive(b"\xff" + encode_command("guest-sync-delimited", {"id": 9}), now_ns=0)
    assert raw == b'\xff{"return": 9}\n'
    replies = _talk(
        ga,
        encode_command("guest-fsfreeze-freeze"),
        encode_command("guest-get-time"),
        encode_command("guest-fsfreeze-status"),
        encode_command("guest-fsfreeze-thaw"),
        encode_command("guest-get-time"),
    )
    assert replies[0] == {"return": 1}
    assert replies[1]["error"] == {
        "class": "GenericError",
        "desc": "Command guest-get-time has been disabled",
    }
    assert replies[2:] == [{"return": "frozen"}, {"return": 1}, {"return": 1_000}]
    assert not ga.frozen


def test_sim_agent_drops_a_half_command_on_delimiter_and_keeps_time() -> None:
    ga = Agent()
    replies = _talk(
        ga,
        b'{"execute": "guest-pi',
        b"\xff",
        encode_command("guest-set-time", {"time": 5_000}),
        encode_command("guest-get-time"),
        encode_command("guest-nope"),
    )
    assert replies[0] == {"return": {}}
    assert replies[1] == {"return": 5_000}
    assert replies[2]["error"]["class"] == "CommandNotFound"  # type: ignore[index]


def test_sim_agent_shutdown_answers_nothing_and_records_the_mode() -> None:
    ga = Agent()
    assert ga.receive(encode_command("guest-shutdown", {"mode": "reboot"}), now_ns=0) == b""
    assert ga.shutdown == "reboot"
