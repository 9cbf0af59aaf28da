"""The JSON-RPC 2.0 control bus: protocol core, method table, server and clients.

- :mod:`~supervisor.rpc.protocol`: sans-IO framing and codec (no trio).
- :mod:`~supervisor.rpc.dispatch`: the method :class:`Registry` and :class:`CallContext`.
- :mod:`~supervisor.rpc.server`: :func:`serve_unix`, the trio server.
- :mod:`~supervisor.rpc.client`: :class:`Client`, blocking and stdlib only, for the CLI.
- :mod:`~supervisor.rpc.trio_client`: :func:`open_client`, concurrent calls over trio.

Importing this package does not import trio or the dispatcher: the CLI imports the
blocking client through it and should start fast. Those parts are loaded when first named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor._lazy import lazy_attributes
from supervisor.rpc.client import Client as Client
from supervisor.rpc.errors import ConnectionLostError as ConnectionLostError
from supervisor.rpc.errors import DaemonNotRunningError as DaemonNotRunningError
from supervisor.rpc.errors import InternalError as InternalError
from supervisor.rpc.errors import InvalidParamsError as InvalidParamsError
from supervisor.rpc.errors import InvalidRequestError as InvalidRequestError
from supervisor.rpc.errors import MethodNotFoundError as MethodNotFoundError
from supervisor.rpc.errors import ParseError as ParseError
from supervisor.rpc.errors import RemoteError as RemoteError
from supervisor.rpc.errors import RequestTimeoutError as RequestTimeoutError
from supervisor.rpc.errors import SocketInUseError as SocketInUseError
from supervisor.rpc.peercred import PeerCredentials as PeerCredentials

if TYPE_CHECKING:
    from supervisor.rpc.dispatch import Access as Access
    from supervisor.rpc.dispatch import CallContext as CallContext
    from supervisor.rpc.dispatch import Registry as Registry
    from supervisor.rpc.server import Authorize as Authorize
    from supervisor.rpc.server import ServerConnection as ServerConnection
    from supervisor.rpc.server import group_policy as group_policy
    from supervisor.rpc.server import serve_unix as serve_unix
    from supervisor.rpc.trio_client import TrioClient as TrioClient
    from supervisor.rpc.trio_client import open_client as open_client

_LAZY = {
    # The dispatcher pulls in structlog (and with it asyncio): a daemon-side part that
    # the CLI's start-up must not pay for.
    "Access": "supervisor.rpc.dispatch",
    "CallContext": "supervisor.rpc.dispatch",
    "Registry": "supervisor.rpc.dispatch",
    "Authorize": "supervisor.rpc.server",
    "ServerConnection": "supervisor.rpc.server",
    "group_policy": "supervisor.rpc.server",
    "serve_unix": "supervisor.rpc.server",
    "TrioClient": "supervisor.rpc.trio_client",
    "open_client": "supervisor.rpc.trio_client",
}


__getattr__ = lazy_attributes(__name__, _LAZY)
