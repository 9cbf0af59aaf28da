"""The core JSON-RPC methods: connection, guest lifecycle, console, events, daemon.

Method names are dotted and mirror libvirt's (``virDomainReboot`` → ``domain.reboot``).
Every handler is a thin adapter: it finds the guest, turns the call into a lifecycle
request for the guest's actor, and shapes the answer. Read-only methods are served to the
read-only group; everything that changes something needs read-write access.
"""

from __future__ import annotations

import base64
import socket as _socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from supervisor import __version__
from supervisor.actors import lifecycle as lc
from supervisor.actors.console import ConsoleTakenOver
from supervisor.errors import InvalidStateError, InvalidValueError
from supervisor.rpc.dispatch import CallContext, Registry
from supervisor.vmm.hostexec import run_tool

if TYPE_CHECKING:
    from supervisor.daemon import Daemon, Guest

#: How long ``domain.start`` waits, by default, for the guest to leave "starting".
START_WAIT = 30.0


def guest_info(guest: Guest) -> dict[str, Any]:
    """The GuestInfo object: runtime facts from the actor plus definition facts."""
    info = guest.actor.info()
    d = guest.domain
    info.update(
        uuid=d.uuid,
        memory_kib=d.memory_kib,
        vcpus=d.vcpus,
        autostart=d.policy.autostart,
        persistent=True,
    )
    return info


def register(reg: Registry, daemon: Daemon) -> None:
    """Add the core methods, bound to *daemon*, to *reg*."""
    method = reg.method

    async def _request(guest: Guest, event: lc.Event) -> None:
        await guest.actor.request(event)

    # -- connect.* -------------------------------------------------------------------------

    @method("connect.get_type", access="ro")
    async def get_type(ctx: CallContext) -> str:
        """The hypervisor type: always ``BHYVE``."""
        return "BHYVE"

    @method("connect.is_alive", access="ro")
    async def is_alive(ctx: CallContext) -> bool:
        """Whether the connection is alive: a local socket that answered, so yes."""
        return True

    @method("connect.is_encrypted", access="ro")
    async def is_encrypted(ctx: CallContext) -> bool:
        """Whether the connection is encrypted: a Unix socket is not."""
        return False

    @method("connect.is_secure", access="ro")
    async def is_secure(ctx: CallContext) -> bool:
        """Whether the connection is secure against eavesdropping: local, so yes."""
        return True

    @method("connect.get_version", access="ro")
    async def get_version(ctx: CallContext) -> dict[str, Any]:
        """The daemon's version and the host's FreeBSD release (``kern.osrelease``)."""
        r = await run_tool(daemon.host, ["sysctl", "-n", "kern.osrelease"], timeout=10)
        return {"daemon": __version__, "hypervisor": r.stdout.strip() if r.ok else None}

    @method("connect.get_hostname", access="ro")
    async def get_hostname(ctx: CallContext) -> str:
        """The host's name (``kern.hostname``)."""
        r = await run_tool(daemon.host, ["sysctl", "-n", "kern.hostname"], timeout=10)
        return r.stdout.strip() if r.ok and r.stdout.strip() else _socket.gethostname()

    # -- domain.* ----------------------------------------------------------------------------

    @method("domain.define", access="rw")
    async def define(ctx: CallContext, xml: str) -> dict[str, Any]:
        """Define a guest from libvirt domain XML (or replace its definition)."""
        return guest_info(await daemon.define(xml))

    @method("domain.undefine", access="rw")
    async def undefine(ctx: CallContext, name: str | None = None, uuid: str | None = None) -> None:
        """Remove a stopped guest's definition."""
        await daemon.undefine(daemon.lookup(name, uuid))

    @method("domain.list", access="ro")
    async def list_(ctx: CallContext) -> list[dict[str, Any]]:
        """Every defined guest's GuestInfo, sorted by name."""
        return [guest_info(daemon.guests[n]) for n in sorted(daemon.guests)]

    @method("domain.lookup", access="ro")
    async def lookup(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """Find a guest by name or uuid: name, uuid, id (bhyve's pid, -1 when off), state."""
        g = daemon.lookup(name, uuid)
        pid = g.actor.machine.pid
        return {
            "name": g.domain.name,
            "uuid": g.domain.uuid,
            "id": pid if pid is not None else -1,
            "state": g.actor.state.value,
        }

    @method("domain.get_xml", access="ro")
    async def get_xml(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, str]:
        """The guest's definition as libvirt domain XML."""
        return {"xml": daemon.store.format(daemon.lookup(name, uuid).domain)}

    @method("domain.get_info", access="ro")
    async def get_info(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """The guest's GuestInfo."""
        return guest_info(daemon.lookup(name, uuid))

    @method("domain.get_state", access="ro")
    async def get_state(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, str]:
        """The guest's state and the reason it is in it."""
        g = daemon.lookup(name, uuid)
        return {"state": g.actor.state.value, "reason": g.actor.machine.reason}

    @method("domain.start", access="rw")
    async def start(
        ctx: CallContext,
        name: str | None = None,
        uuid: str | None = None,
        wait: bool = True,
        timeout: float = START_WAIT,
    ) -> dict[str, Any]:
        """Start the guest; with *wait*, return once it is running (or failed)."""
        g = daemon.lookup(name, uuid)
        await _request(g, lc.Start())
        if wait:
            await g.actor.wait_until(lambda s: s is not lc.State.STARTING, timeout)
        return guest_info(g)

    @method("domain.shutdown", access="rw")
    async def shutdown(
        ctx: CallContext,
        name: str | None = None,
        uuid: str | None = None,
        timeout: float | None = None,
        wait: bool = False,
    ) -> dict[str, Any]:
        """Press the ACPI power button once; force a poweroff after *timeout* seconds
        (default: the guest's ``stop_timeout``)."""
        g = daemon.lookup(name, uuid)
        if timeout is not None and timeout < 0:
            raise InvalidValueError("timeout: must not be negative", field="timeout")
        await _request(g, lc.Shutdown(timeout=timeout))
        if wait:
            limit = (timeout if timeout is not None else g.domain.policy.stop_timeout) + 30
            await g.actor.wait_settled(limit)
        return guest_info(g)

    @method("domain.destroy", access="rw")
    async def destroy(
        ctx: CallContext, name: str | None = None, uuid: str | None = None, wait: bool = True
    ) -> dict[str, Any]:
        """Stop the guest at once (``bhyvectl --force-poweroff``, then SIGKILL)."""
        g = daemon.lookup(name, uuid)
        await _request(g, lc.Destroy())
        if wait:
            await g.actor.wait_settled(30.0)
        return guest_info(g)

    @method("domain.reboot", access="rw")
    async def reboot(
        ctx: CallContext, name: str | None = None, uuid: str | None = None, agent: bool = False
    ) -> dict[str, Any]:
        """Reboot gracefully: ACPI power button, and restart whatever bhyve's exit. With
        *agent*, the guest agent's ``guest-shutdown reboot`` instead (bhyve exits 0)."""
        g = daemon.lookup(name, uuid)
        if agent:
            from supervisor.api.storage import agent_for

            await agent_for(daemon, g).shutdown("reboot")
            return guest_info(g)
        await _request(g, lc.Reboot())
        return guest_info(g)

    @method("domain.reset", access="rw")
    async def reset(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """Hard reset (``bhyvectl --force-reset``); the guest comes back up."""
        g = daemon.lookup(name, uuid)
        await _request(g, lc.Reset())
        return guest_info(g)

    @method("domain.clear", access="rw")
    async def clear(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """Leave the crashed or fatal state and forget the crash history."""
        g = daemon.lookup(name, uuid)
        await _request(g, lc.Clear())
        return guest_info(g)

    @method("domain.set_autostart", access="rw")
    async def set_autostart(
        ctx: CallContext, autostart: bool, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """Whether the guest starts with the daemon (stored in its definition)."""
        g = daemon.lookup(name, uuid)
        await daemon.set_autostart(g, autostart)
        return guest_info(g)

    # -- console.* ---------------------------------------------------------------------------

    def console_of(name: str | None, uuid: str | None) -> Any:
        g = daemon.lookup(name, uuid)
        if g.actor.console is None:
            raise InvalidStateError(f"guest {g.domain.name} has no nmdm serial console")
        return g.actor.console

    @method("console.tail", access="ro")
    async def tail(
        ctx: CallContext, name: str | None = None, uuid: str | None = None, bytes: int | None = None
    ) -> dict[str, Any]:
        """The last *bytes* bytes of console output kept in memory (base64 in ``data``)."""
        if bytes is not None and bytes < 0:
            raise InvalidValueError("bytes: must not be negative", field="bytes")
        console = console_of(name, uuid)
        return {"data": base64.b64encode(console.tail(bytes)).decode(), "total": console.total}

    @method("console.attach", access="ro", upgrade=True)
    async def attach(
        ctx: CallContext, name: str | None = None, uuid: str | None = None, mode: str = "rw"
    ) -> dict[str, Any]:
        """Attach to the console; after the reply the connection is a raw byte stream.

        ``rw`` takes writing over from any other client (and needs read-write access);
        ``ro`` only reads.
        """
        if mode not in ("rw", "ro"):
            raise InvalidValueError(f"mode: must be 'rw' or 'ro', got {mode!r}", field="mode")
        writer = mode == "rw"
        if writer and ctx.access != "rw":
            from supervisor.errors import PermissionDeniedError

            raise PermissionDeniedError("console.attach with mode 'rw' needs read-write access")
        console = console_of(name, uuid)
        att = console.attach(writer=writer)

        async def pump(stream: trio.abc.Stream) -> None:
            async def to_client() -> None:
                # Everything queued since the last send goes at once (up to a piece).
                async for piece in att.output:
                    await stream.send_all(piece)

            async def from_client() -> None:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    if writer:
                        try:
                            await console.write(data, att)
                        except (ConsoleTakenOver, trio.ClosedResourceError):
                            pass

            async def guarded(fn: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
                # Either direction ending (the client left, the console closed) ends both.
                try:
                    await fn()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                finally:
                    scope.cancel()

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(guarded, from_client, nursery.cancel_scope)
                    nursery.start_soon(guarded, to_client, nursery.cancel_scope)
            finally:
                console.detach(att)

        ctx.after_reply = pump
        state = daemon.lookup(name, uuid).actor.state.value
        return {"attached": True, "writer": writer, "state": state}

    # -- events.* ----------------------------------------------------------------------------

    @method("events.subscribe", access="ro")
    async def subscribe(ctx: CallContext) -> dict[str, int]:
        """Receive every event as an ``event`` notification on this connection."""
        conn = ctx.connection

        def deliver(event: dict[str, Any]) -> bool:
            if conn.closed:
                # The subscriber is gone: stop publishing to it.
                daemon.bus.unsubscribe(sub)
                return True
            return bool(conn.notify_nowait("event", event))

        sub = daemon.bus.subscribe(deliver)
        return {"subscription": sub.id}

    # -- daemon.* ----------------------------------------------------------------------------

    @method("daemon.status", access="ro")
    async def status(ctx: CallContext) -> dict[str, Any]:
        """The daemon's version, pid, uptime and guest counts by state."""
        return daemon.status()

    @method("daemon.reload", access="rw")
    async def reload(ctx: CallContext) -> dict[str, list[str]]:
        """Re-read the definitions and apply what changed; running guests are untouched."""
        return await daemon.reload()
