"""bhyvesupctl's offline verbs: converting between domain XML and bhyve command lines.

They need no daemon and touch nothing on the host, so they work anywhere, including on
a machine without bhyve. Names follow virsh:

* ``domxml-from-native bhyve-argv FILE``: command lines (a loader line, if any, and the
  bhyve line) become domain XML on stdout; what cannot be kept is reported on stderr,
  one ``warning:`` line each (``--strict`` makes those errors).
* ``domxml-to-native bhyve-argv FILE``: domain XML becomes the loader command (if the
  guest needs one) and the bhyve command, one shell-quoted line each, which
  ``domxml-from-native`` reads back.

``-`` reads standard input. A failure is one line on stderr and status 1; a bad verb
line is status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Final

from supervisor.errors import SupervisorError
from supervisor.host import FIRMWARE_DIR

if TYPE_CHECKING:
    from supervisor.domain.model import Interface

# The model, the XML codec and the argv builder and parser are imported by the verbs that
# use them: every bhyvesupctl command builds this parser, and a control verb such as
# ``status`` must not pay for loading them.

__all__ = ["FORMATS", "cmd_domxml_from_native", "cmd_domxml_to_native", "owns", "register", "run"]

#: The native formats the offline verbs speak.
FORMATS: Final = ("bhyve-argv",)
EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
PROG: Final = "bhyvesupctl"


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as stream:
        return stream.read()


def _tap_placeholder(index: int, nic: Interface) -> str:
    # The daemon names taps at start; offline, a NIC without <target dev> shows where
    # its tap goes.
    return nic.target_dev or f"tap{index}"


def cmd_domxml_from_native(args: argparse.Namespace) -> int:
    """Print the domain XML that a native command file describes."""
    from supervisor.domain.xml import format_domain_xml
    from supervisor.vmm.native import domain_from_native

    result = domain_from_native(_read(args.file), strict=args.strict)
    for warning in result.warnings:
        sys.stderr.write(f"{PROG}: warning: {warning}\n")
    sys.stdout.write(format_domain_xml(result.domain))
    return EXIT_OK


def cmd_domxml_to_native(args: argparse.Namespace) -> int:
    """Print the loader and bhyve commands that start the guest of a domain XML file."""
    from supervisor.domain.xml import parse_domain_xml
    from supervisor.vmm.argv import build_commands, select_firmware
    from supervisor.vmm.caps import DEFAULT
    from supervisor.vmm.cmdline import render_shell

    domain = parse_domain_xml(_read(args.file))
    if domain.os.firmware == "efi" and domain.os.loader is None:
        try:
            listing = sorted(os.listdir(args.firmware_dir))
        except OSError:
            listing = []
        domain = select_firmware(domain, listing, args.firmware_dir)
    commands = build_commands(domain, DEFAULT, taps=_tap_placeholder)
    if commands.loader is not None:
        sys.stdout.write(render_shell(commands.loader) + "\n")
    sys.stdout.write(render_shell(commands.bhyve) + "\n")
    return EXIT_OK


def owns(args: argparse.Namespace) -> bool:
    """Whether *args* is one of this module's verbs."""
    return getattr(args, "offline_handler", None) is not None


def run(args: argparse.Namespace) -> int:
    """Run an offline verb; errors become one stderr line and status 1."""
    try:
        return int(args.offline_handler(args))
    except SupervisorError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
    except OSError as exc:
        sys.stderr.write(f"{PROG}: {args.file}: {exc.strerror or exc}\n")
    except UnicodeDecodeError as exc:
        sys.stderr.write(f"{PROG}: {args.file}: not UTF-8 text ({exc.reason})\n")
    return EXIT_FAILURE


def register(sub: Any) -> None:
    """Add ``domxml-from-native`` and ``domxml-to-native`` to *sub* (argparse subparsers)."""
    text = "domain XML from native commands (bhyve-argv)"
    p = sub.add_parser("domxml-from-native", help=text, description=text)
    p.set_defaults(offline_handler=cmd_domxml_from_native)
    p.add_argument("format", choices=FORMATS, metavar="FORMAT", help="bhyve-argv")
    p.add_argument("file", metavar="FILE", help="the commands, '-' for standard input")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail on anything bhyve accepts that the guest model cannot keep",
    )

    text = "native commands (bhyve-argv) from domain XML"
    p = sub.add_parser("domxml-to-native", help=text, description=text)
    p.set_defaults(offline_handler=cmd_domxml_to_native)
    p.add_argument("format", choices=FORMATS, metavar="FORMAT", help="bhyve-argv")
    p.add_argument("file", metavar="FILE", help="domain XML, '-' for standard input")
    p.add_argument(
        "--firmware-dir",
        default=FIRMWARE_DIR,
        metavar="DIR",
        help=f"where firmware='efi' picks its firmware (default {FIRMWARE_DIR})",
    )
