"""bhyvesupctl's service verbs, used by ``rc.d/bhyvesupd``.

``daemon-on-stop keep|shutdown [--budget S]`` says what the daemon's next stop does to
running guests: the rc.d script says ``shutdown`` at host shutdown (every guest shut
down in parallel within S seconds before the daemon exits) and ``keep`` before a
restart.
"""

from __future__ import annotations

import argparse
from typing import Any

from supervisor.cli import control

__all__ = ["owns", "register"]


def cmd_on_stop(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"on_stop": args.on_stop}
    if args.budget is not None:
        params["budget"] = args.budget
    with control.connect(args) as client:
        result = client.call("daemon.set_on_stop", **params)
    if result.get("on_stop") == "shutdown":
        control.out(
            "at its next stop the daemon shuts every guest down "
            f"(within {result.get('shutdown_budget')} s)"
        )
    else:
        control.out("at its next stop the daemon leaves the guests running")
    return control.EXIT_OK


def owns(args: argparse.Namespace) -> bool:
    """Whether *args* is one of this module's verbs (they use control's convention)."""
    return getattr(args, "control_handler", None) is not None


def register(sub: Any) -> None:
    """Add ``daemon-on-stop`` to *sub* (argparse subparsers)."""
    p = control.verb(
        sub, "daemon-on-stop", cmd_on_stop, "what the daemon's next stop does to the guests"
    )
    p.add_argument("on_stop", choices=["keep", "shutdown"], metavar="keep|shutdown")
    p.add_argument(
        "--budget",
        type=control.positive_seconds,
        default=None,
        metavar="S",
        help="with shutdown: seconds for all guests to stop (default: daemon.shutdown_budget)",
    )
