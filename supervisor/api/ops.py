"""Service methods: what the rc.d script asks of a running daemon.

``daemon.set_on_stop`` decides, at the moment the daemon is about to be stopped, what
that stop does to the guests. ``rc.d/bhyvesupd`` calls it with ``shutdown`` at host
shutdown (every guest shut down in parallel within a budget, before the daemon exits)
and with ``keep`` before a restart (no guest is touched, the next daemon re-adopts
them). The stop itself stays a SIGTERM, which daemon(8) forwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

from supervisor.errors import InvalidValueError
from supervisor.rpc.dispatch import CallContext, Registry

if TYPE_CHECKING:
    from supervisor.daemon import Daemon


def register(reg: Registry, daemon: Daemon) -> None:
    """Add the service methods, bound to *daemon*, to *reg*."""

    @reg.method("daemon.set_on_stop", access="rw")
    async def set_on_stop(
        ctx: CallContext, on_stop: Literal["keep", "shutdown"], budget: float | None = None
    ) -> dict[str, Any]:
        """What the next stop of the daemon (SIGTERM) does to running guests: ``keep``
        them running, or ``shutdown`` all of them in parallel within *budget* seconds
        (default: the configuration's ``daemon.shutdown_budget``). Lasts until the
        daemon exits; the configuration file is not changed."""
        section = daemon.config.daemon
        if budget is not None:
            if not budget > 0:
                raise InvalidValueError(f"budget: must be > 0, got {budget}", field="budget")
            section = attrs.evolve(section, shutdown_budget=budget)
        daemon.config = attrs.evolve(daemon.config, daemon=attrs.evolve(section, on_stop=on_stop))
        daemon.stop_guests_on_exit = on_stop == "shutdown"
        return {"on_stop": on_stop, "shutdown_budget": daemon.config.daemon.shutdown_budget}
