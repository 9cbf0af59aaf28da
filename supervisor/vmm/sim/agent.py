"""The simulated guest's QEMU guest agent, sans I/O.

It answers on the virtio-console port ``org.qemu.guest_agent.0`` as qemu-ga does: a
``0xFF`` byte makes it drop a half-read command, ``guest-sync-delimited`` is answered
with ``0xFF`` and the id, every other command with one ``{"return": ...}`` or
``{"error": {"class": ..., "desc": ...}}`` line. Freezing only changes state here (the
guest's ``write-disk`` then refuses to write, as a frozen filesystem blocks writers);
while frozen, qemu-ga refuses every command but the few that are safe, and so does
this one. ``guest-shutdown`` answers nothing and asks bhyve to stop the guest.
"""

from __future__ import annotations

import json
from typing import Any

#: What qemu-ga still runs while the filesystems are frozen.
_FROZEN_ALLOWED = frozenset(
    {
        "guest-ping",
        "guest-info",
        "guest-sync",
        "guest-sync-delimited",
        "guest-fsfreeze-status",
        "guest-fsfreeze-thaw",
    }
)

COMMANDS: tuple[str, ...] = (
    "guest-sync-delimited",
    "guest-sync",
    "guest-ping",
    "guest-info",
    "guest-get-time",
    "guest-set-time",
    "guest-fsfreeze-status",
    "guest-fsfreeze-freeze",
    "guest-fsfreeze-freeze-list",
    "guest-fsfreeze-thaw",
    "guest-shutdown",
)

VERSION = "7.2.0-bhyvesim"
#: The virtio-console port name the agent listens on.
AGENT_PORT = "org.qemu.guest_agent.0"


def _error(cls: str, desc: str) -> bytes:
    return json.dumps({"error": {"class": cls, "desc": desc}}).encode() + b"\n"


def _ret(value: Any) -> bytes:
    return json.dumps({"return": value}).encode() + b"\n"


class Agent:
    """The agent's state across connections (it lives as long as the guest's boot).

    Args:
        filesystems: the mount points a freeze freezes.
    """

    def __init__(self, filesystems: tuple[str, ...] = ("/",)) -> None:
        self.filesystems = filesystems
        self.frozen = False
        #: Nanoseconds the guest clock is ahead of the host's.
        self.clock_offset_ns = 0
        #: A ``guest-shutdown`` mode asked for and not yet carried out.
        self.shutdown: str | None = None
        self._buf = bytearray()

    def reset_stream(self) -> None:
        """A new client connected: what an earlier one left half-sent is dropped."""
        self._buf.clear()

    def receive(self, data: bytes, now_ns: int) -> bytes:
        """Bytes from the host; the bytes to answer with. *now_ns* is the host clock."""
        self._buf += data
        out = bytearray()
        while True:
            idx = self._buf.find(0xFF)
            nl = self._buf.find(b"\n")
            if idx >= 0 and (nl < 0 or idx < nl):
                del self._buf[: idx + 1]
                continue
            if nl < 0:
                return bytes(out)
            line = bytes(self._buf[:nl]).strip()
            del self._buf[: nl + 1]
            if line:
                out += self._command(line, now_ns)

    def _command(self, line: bytes, now_ns: int) -> bytes:
        try:
            msg = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return _error("GenericError", "JSON parse error, expecting value")
        if not isinstance(msg, dict) or not isinstance(msg.get("execute"), str):
            return _error("GenericError", "Expected 'execute' in QMP input")
        name: str = msg["execute"]
        args = msg.get("arguments") or {}
        if not isinstance(args, dict):
            return _error("GenericError", "QMP input member 'arguments' must be an object")
        if name not in COMMANDS:
            return _error("CommandNotFound", f"The command {name} has not been found")
        if self.frozen and name not in _FROZEN_ALLOWED:
            return _error("GenericError", f"Command {name} has been disabled")
        if name == "guest-sync-delimited":
            return b"\xff" + _ret(args.get("id"))
        if name == "guest-sync":
            return _ret(args.get("id"))
        if name == "guest-ping":
            return _ret({})
        if name == "guest-info":
            return _ret(
                {
                    "version": VERSION,
                    "supported_commands": [
                        {"name": c, "enabled": True, "success-response": c != "guest-shutdown"}
                        for c in COMMANDS
                    ],
                }
            )
        if name == "guest-get-time":
            return _ret(now_ns + self.clock_offset_ns)
        if name == "guest-set-time":
            t = args.get("time")
            if t is None:
                self.clock_offset_ns = 0  # from the (host-synchronised) RTC
            elif not isinstance(t, int):
                return _error(
                    "GenericError", "Invalid parameter type for 'time', expected: integer"
                )
            else:
                self.clock_offset_ns = t - now_ns
            return _ret({})
        if name == "guest-fsfreeze-status":
            return _ret("frozen" if self.frozen else "thawed")
        if name in ("guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list"):
            points = self.filesystems
            if name == "guest-fsfreeze-freeze-list" and args.get("mountpoints") is not None:
                wanted = args["mountpoints"]
                unknown = [m for m in wanted if m not in self.filesystems]
                if unknown:
                    return _error("GenericError", f"failed to find {unknown[0]} in mounts")
                points = tuple(wanted)
            self.frozen = True
            return _ret(len(points))
        if name == "guest-fsfreeze-thaw":
            count = len(self.filesystems) if self.frozen else 0
            self.frozen = False
            return _ret(count)
        # guest-shutdown
        mode = args.get("mode", "powerdown")
        if mode not in ("powerdown", "reboot", "halt"):
            return _error("GenericError", "Parameter 'mode' expects powerdown, halt or reboot")
        self.shutdown = mode
        return b""
