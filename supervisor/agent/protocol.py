"""The QEMU guest agent protocol, sans I/O.

Theory of operation
-------------------
The guest agent (``qemu-ga``) reads JSON commands ``{"execute": NAME, "arguments":
{...}}`` from a byte stream and answers each with one JSON object, ``{"return": VALUE}``
or ``{"error": {"class": C, "desc": D}}``, followed by a newline. On bhyve the stream is
a ``virtio-console`` port named ``org.qemu.guest_agent.0``, which bhyve exposes as a
Unix socket on the host.

The stream has no session: a reply still in flight from an earlier client (one that
timed out and left) would be read as the answer to the next command. So every
exchange starts with ``guest-sync-delimited``: the client sends a ``0xFF`` byte (which
makes the agent's JSON parser drop any half-read command) and the command with a fresh
random id. The agent answers with a ``0xFF`` byte and ``{"return": ID}``. The client
throws away everything up to the ``0xFF`` and every reply that does not carry its id;
after that, the stream is in step and the next reply is the answer to the next command.

:class:`AgentSession` keeps that state: it makes the bytes to send and turns received
bytes into :class:`Reply` values. It reads no clock and touches no socket; the trio
transport (:mod:`supervisor.agent.client`) does both.

``guest-shutdown`` never answers on success (the guest goes down), and neither does
``guest-set-time`` on some agents' error paths: the caller says which commands expect
no reply.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from supervisor._record import Record

#: The byte the agent's parser treats as "discard what you have"; also its reply marker.
DELIMITER = 0xFF
#: The port name qemu-ga opens; libvirt and the guest OS use the same.
AGENT_PORT_NAME = "org.qemu.guest_agent.0"
#: The longest reply kept; a larger one is a protocol error, not a memory sink.
MAX_REPLY = 4 * 1024 * 1024


class AgentProtocolError(Exception):
    """The agent sent something that is not its protocol."""


@attrs.frozen(repr=False)
class Reply(Record):
    """One answer: *value* on success, else *error_class* and *error_desc*."""

    value: Any = None
    error_class: str | None = None
    error_desc: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_class is None


def encode_command(name: str, arguments: dict[str, Any] | None = None) -> bytes:
    """The bytes of one command."""
    msg: dict[str, Any] = {"execute": name}
    if arguments:
        msg["arguments"] = arguments
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def parse_reply(obj: Any) -> Reply:
    """A :class:`Reply` from one decoded JSON object.

    Raises:
        AgentProtocolError: the object is neither a return nor an error.
    """
    if isinstance(obj, dict):
        if "return" in obj:
            return Reply(value=obj["return"])
        err = obj.get("error")
        if isinstance(err, dict):
            return Reply(
                error_class=str(err.get("class", "GenericError")),
                error_desc=str(err.get("desc", "")),
            )
    raise AgentProtocolError(f"not a guest agent reply: {str(obj)[:200]!r}")


class AgentSession:
    """The client side of one synchronised exchange with the agent."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._sync_id: int | None = None
        self._synced = False

    @property
    def synced(self) -> bool:
        """Whether ``guest-sync-delimited`` has been answered with our id."""
        return self._synced

    def sync(self, sync_id: int) -> bytes:
        """Start (again) with a ``guest-sync-delimited`` of *sync_id*; the bytes to send."""
        self._sync_id = sync_id
        self._synced = False
        self._buf.clear()
        return bytes([DELIMITER]) + encode_command("guest-sync-delimited", {"id": sync_id})

    def command(self, name: str, arguments: dict[str, Any] | None = None) -> bytes:
        """The bytes of a command; only valid once :attr:`synced`."""
        if not self._synced:
            raise AgentProtocolError("send guest-sync-delimited before any command")
        return encode_command(name, arguments)

    def receive(self, data: bytes) -> list[Reply]:
        """Feed received bytes; the replies (after the sync) they complete.

        qemu-ga ends every reply with a newline, so replies are read line by line.

        Raises:
            AgentProtocolError: garbage after the sync, or a reply larger than
                :data:`MAX_REPLY`.
        """
        self._buf += data
        replies: list[Reply] = []
        while True:
            if not self._synced:
                # Before the sync answer: skip to the delimiter, then look for our id.
                idx = self._buf.find(DELIMITER)
                if idx < 0:
                    self._buf.clear()
                    return replies
                del self._buf[:idx]
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_REPLY:
                    raise AgentProtocolError(f"a reply exceeds {MAX_REPLY} bytes")
                return replies
            line = bytes(self._buf[:nl]).lstrip(bytes([DELIMITER])).strip()
            del self._buf[: nl + 1]
            if not line:
                continue
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                if not self._synced:
                    continue  # noise before our answer
                raise AgentProtocolError(
                    f"the agent sent a line that is not JSON: {line[:200]!r}"
                ) from None
            if not self._synced:
                if isinstance(obj, dict) and obj.get("return") == self._sync_id:
                    self._synced = True
                continue
            replies.append(parse_reply(obj))


@attrs.frozen(repr=False)
class GuestInfo(Record):
    """What ``guest-info`` says: the agent's version and its enabled commands."""

    version: str
    commands: tuple[str, ...]


def parse_guest_info(value: Any) -> GuestInfo:
    """A :class:`GuestInfo` from the return value of ``guest-info``."""
    if not isinstance(value, dict):
        raise AgentProtocolError(f"guest-info returned {value!r}")
    cmds = tuple(
        sorted(
            str(c["name"])
            for c in value.get("supported_commands", [])
            if isinstance(c, dict) and c.get("enabled", True) and "name" in c
        )
    )
    return GuestInfo(version=str(value.get("version", "")), commands=cmds)
