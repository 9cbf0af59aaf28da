"""The ``bhyvesupctl`` entry point: one argparse front over a table of verb groups.

A verb group is a module that adds its verbs to the subparsers (``register``), marks the
namespaces it owns, and runs them (``run``), turning every error a user can cause into
one line on stderr and an exit status. Adding verbs means adding a row to
:data:`VERB_GROUPS`; nothing here knows a verb by name.

Exit statuses: 0 success, 1 failure, 2 usage error (the groups may add more, as
:mod:`supervisor.cli.control` does for "no such guest" and "permission denied").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import attrs

from supervisor import __version__
from supervisor._record import Record
from supervisor.cli import control, guestops, hostnet, importverbs, offline, opsverbs, storage
from supervisor.cli.shell import run_shell

__all__ = ["VERB_GROUPS", "VerbGroup", "build_parser", "execute", "main"]

PROG = "bhyvesupctl"
EXIT_USAGE = 2


@attrs.frozen(repr=False)
class VerbGroup(Record):
    """A set of verbs from one module.

    Args:
        register: adds the verbs to an argparse subparsers object.
        owns: whether a parsed namespace is one of this group's verbs.
        run: runs such a namespace; returns the exit status, never raises for user errors.
    """

    register: Callable[[Any], None]
    owns: Callable[[argparse.Namespace], bool]
    run: Callable[[argparse.Namespace], int]


#: Every verb group, in the order their verbs are listed in ``--help``.
VERB_GROUPS: tuple[VerbGroup, ...] = (
    VerbGroup(offline.register, offline.owns, offline.run),
    VerbGroup(
        control.register,
        lambda args: getattr(args, "control_handler", None) is not None,
        control.run,
    ),
    VerbGroup(guestops.register, guestops.owns, control.run),
    VerbGroup(storage.register, lambda args: False, control.run),  # runs via control_handler
    VerbGroup(hostnet.register, lambda args: False, control.run),
    VerbGroup(importverbs.register, importverbs.owns, control.run),
    VerbGroup(opsverbs.register, opsverbs.owns, control.run),
)


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr (status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{PROG} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """bhyvesupctl's whole parser: global options and every group's verbs."""
    parser = _Parser(
        prog=PROG,
        description="Control bhyve guests run by bhyvesupd; with no verb, start a shell.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    control.add_global_options(parser)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for group in VERB_GROUPS:
        group.register(sub)
    return parser


def execute(args: argparse.Namespace) -> int:
    """Run a parsed command line through the group that owns its verb."""
    for group in VERB_GROUPS:
        if group.owns(args):
            return group.run(args)
    sys.stderr.write(f"{PROG}: no verb given\n")
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse, then run one verb or, with none, the shell."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        return run_shell(parser, execute, defaults=args)
    return execute(args)


if __name__ == "__main__":  # pragma: no cover -- python -m supervisor.cli.main
    sys.exit(main())
