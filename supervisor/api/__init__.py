"""The daemon's JSON-RPC method table, one module per area.

Each area module has ``register(reg, daemon)``, which adds its methods to the registry
bound to the daemon. :func:`build_registry` runs them all; adding an area means adding a
row to :data:`AREAS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from supervisor.api import core, guestops, hostnet, ops, storage
from supervisor.api.core import guest_info
from supervisor.rpc.dispatch import Registry

if TYPE_CHECKING:
    from supervisor.daemon import Daemon

__all__ = ["AREAS", "build_registry", "guest_info"]

#: Every area's ``register``, in the order their methods are listed.
AREAS: tuple[Callable[[Registry, Daemon], None], ...] = (
    core.register,
    guestops.register,
    storage.register,
    hostnet.register,
    ops.register,
)


def build_registry(daemon: Daemon) -> Registry:
    """The whole method table, bound to *daemon*."""
    reg = Registry()
    for register in AREAS:
        register(reg, daemon)
    return reg
