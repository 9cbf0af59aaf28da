"""The guest agent over a Unix socket, with trio: one connection per command.

bhyve's virtio-console accepts one client per port, so the supervisor connects for a
command and disconnects after it; a per-socket lock keeps two callers from racing for
the port. Each command is preceded by ``guest-sync-delimited`` (see
:mod:`supervisor.agent.protocol`), so a reply left over from a timed-out caller is never
taken for ours.
"""

from __future__ import annotations

import secrets
from typing import Any

import trio

from supervisor.agent.protocol import (
    AgentProtocolError,
    AgentSession,
    GuestInfo,
    Reply,
    parse_guest_info,
)
from supervisor.errors import GuestAgentError, InvalidValueError

#: Seconds to wait for the sync answer: an agent that is not running never answers.
SYNC_TIMEOUT = 5.0
#: Seconds to wait for an ordinary command's answer.
COMMAND_TIMEOUT = 10.0
#: Seconds for a freeze: the agent syncs every filesystem first.
FREEZE_TIMEOUT = 60.0

_locks: dict[str, trio.Lock] = {}


def _lock(path: str) -> trio.Lock:
    lock = _locks.get(path)
    if lock is None:
        lock = _locks[path] = trio.Lock()
    return lock


class AgentClient:
    """The guest agent reachable at the Unix socket *path* (a path on this machine).

    Args:
        path: the socket.
        label: how errors name the agent (the guest's name).
    """

    def __init__(self, path: str, label: str = "guest") -> None:
        self.path = path
        self.label = label

    async def execute(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float = COMMAND_TIMEOUT,
        reply: bool = True,
    ) -> Any:
        """Run one agent command and return its value.

        Args:
            reply: ``False`` for commands that do not answer on success
                (``guest-shutdown``): the command is sent after the sync and the call
                returns ``None`` without waiting.

        Raises:
            GuestAgentError: no agent at the socket, no answer in time, a broken reply,
                or the agent's own error (class and description in the message).
        """
        async with _lock(self.path):
            try:
                stream = await trio.open_unix_socket(self.path)
            except OSError as e:
                raise GuestAgentError(
                    f"{self.label}: guest agent socket {self.path}: {e.strerror or e}"
                ) from None
            async with stream:
                session = AgentSession()
                try:
                    await stream.send_all(session.sync(secrets.randbelow(2**31)))
                    with trio.move_on_after(SYNC_TIMEOUT) as scope:
                        while not session.synced:
                            await self._receive_into(stream, session)
                    if scope.cancelled_caught:
                        raise GuestAgentError(
                            f"{self.label}: the guest agent did not answer within "
                            f"{SYNC_TIMEOUT:g} s (not running in the guest?)"
                        )
                    await stream.send_all(session.command(name, arguments))
                    if not reply:
                        return None
                    replies: list[Reply] = []
                    with trio.move_on_after(timeout) as scope:
                        while not replies:
                            replies = await self._receive_into(stream, session)
                    if scope.cancelled_caught:
                        raise GuestAgentError(
                            f"{self.label}: {name}: no answer from the guest agent "
                            f"within {timeout:g} s"
                        )
                except AgentProtocolError as e:
                    raise GuestAgentError(f"{self.label}: {name}: {e}") from None
                except (trio.BrokenResourceError, OSError) as e:
                    raise GuestAgentError(
                        f"{self.label}: {name}: connection to the guest agent lost: {e}"
                    ) from None
        first = replies[0]
        if not first.ok:
            raise GuestAgentError(
                f"{self.label}: {name}: {first.error_desc} ({first.error_class})",
                data={"class": first.error_class, "desc": first.error_desc},
            )
        return first.value

    async def _receive_into(self, stream: trio.SocketStream, session: AgentSession) -> list[Reply]:
        data = await stream.receive_some(65536)
        if not data:
            raise GuestAgentError(f"{self.label}: the guest agent closed the connection")
        return session.receive(data)

    # -- the commands the supervisor uses -----------------------------------------------

    async def ping(self) -> None:
        await self.execute("guest-ping")

    async def info(self) -> GuestInfo:
        return parse_guest_info(await self.execute("guest-info"))

    async def get_time(self) -> int:
        """The guest's clock, nanoseconds since the epoch."""
        value = await self.execute("guest-get-time")
        if not isinstance(value, int):
            raise GuestAgentError(f"{self.label}: guest-get-time returned {value!r}")
        return value

    async def set_time(self, ns: int | None = None) -> None:
        """Set the guest's clock to *ns* (nanoseconds since the epoch), or, with
        ``None``, from its own hardware clock."""
        await self.execute("guest-set-time", {"time": ns} if ns is not None else None)

    async def fsfreeze_status(self) -> str:
        """``"thawed"`` or ``"frozen"``."""
        return str(await self.execute("guest-fsfreeze-status"))

    async def fsfreeze_freeze(self, mountpoints: list[str] | None = None) -> int:
        """Freeze the guest's filesystems (or *mountpoints*); how many were frozen."""
        if mountpoints:
            value = await self.execute(
                "guest-fsfreeze-freeze-list", {"mountpoints": mountpoints}, timeout=FREEZE_TIMEOUT
            )
        else:
            value = await self.execute("guest-fsfreeze-freeze", timeout=FREEZE_TIMEOUT)
        return int(value)

    async def fsfreeze_thaw(self) -> int:
        """Thaw the guest's filesystems; how many were thawed."""
        return int(await self.execute("guest-fsfreeze-thaw", timeout=FREEZE_TIMEOUT))

    async def shutdown(self, mode: str = "powerdown") -> None:
        """Ask the guest to ``powerdown``, ``reboot`` or ``halt``; no answer comes."""
        if mode not in ("powerdown", "reboot", "halt"):
            raise InvalidValueError(
                f"mode: must be powerdown, reboot or halt, got {mode!r}", field="mode"
            )
        await self.execute("guest-shutdown", {"mode": mode}, reply=False)
