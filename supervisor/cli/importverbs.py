"""bhyvesupctl's import verbs: guests from other bhyve managers become definitions.

* ``import vm-bhyve DIR [NAME...] [--define]``: vm-bhyve guests (``DIR/NAME/NAME.conf``,
  DIR being vm-bhyve's ``$vm_dir``, or one guest's directory);
* ``import bhyve-argv FILE [--name N] [--define]``: a bhyve command line (and the
  loader run before it), as ``domxml-from-native`` reads it.

Without ``--define`` the domain XML is printed (one document per guest) and nothing
else happens, so the result can be read and edited first; with ``--define`` each guest
is defined through the daemon (``domain.define``). Every setting that is not carried
over is reported on stderr, one ``NAME: not carried over: ...`` line each; it never
makes the import fail. A guest that cannot be imported at all is reported and the
others go on; the status is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import attrs

from supervisor.cli import control
from supervisor.domain.model import Domain
from supervisor.errors import InvalidValueError, SupervisorError
from supervisor.host import FIRMWARE_DIR

__all__ = ["owns", "register"]


def _emit(args: argparse.Namespace, domain: Domain, source: str) -> None:
    # The XML codec (lxml) and the converters load only for these verbs: every other
    # bhyvesupctl command starts without them.
    from supervisor.domain.xml import format_domain_xml

    xml = format_domain_xml(domain)
    if not args.define:
        sys.stdout.write(xml if xml.endswith("\n") else xml + "\n")
        sys.stdout.flush()
        return
    with control.connect(args) as client:
        info = client.call("domain.define", xml=xml)
    control.out(f"Domain '{info.get('name', domain.name)}' defined from {source}")


def _report(name: str, lines: Any) -> None:
    for line in lines:
        control.error(f"{name}: not carried over: {line}")


def _vmbhyve_guests(directory: str, names: list[str]) -> tuple[str, list[str]]:
    """(vm_dir, guest names): DIR is a datastore, or a single guest's directory."""
    directory = os.path.abspath(directory)
    own = os.path.basename(directory)
    if os.path.isfile(os.path.join(directory, f"{own}.conf")):
        if names and names != [own]:
            raise SupervisorError(f"{directory} holds only the guest {own!r}")
        return os.path.dirname(directory), [own]
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        raise SupervisorError(f"{directory}: {exc.strerror or exc}") from None
    found = [
        e
        for e in entries
        if not e.startswith(".") and os.path.isfile(os.path.join(directory, e, f"{e}.conf"))
    ]
    if not names:
        if not found:
            raise SupervisorError(f"{directory}: no vm-bhyve guests (NAME/NAME.conf) in it")
        return directory, found
    return directory, list(dict.fromkeys(names))


def _switches(vm_dir: str) -> dict[str, str | None] | None:
    from supervisor.importers.vmbhyve import parse_conf, switch_bridges

    path = os.path.join(vm_dir, ".config", "system.conf")
    if not os.path.isfile(path):
        return None
    values, _ = parse_conf(control.read_input(path))
    return switch_bridges(values)


def cmd_import_vmbhyve(args: argparse.Namespace) -> int:
    from supervisor.importers.vmbhyve import domain_from_vmbhyve, parse_conf

    vm_dir, names = _vmbhyve_guests(args.dir, list(args.names))
    switches = _switches(vm_dir)
    status = control.EXIT_OK
    for name in names:
        conf_path = os.path.join(vm_dir, name, f"{name}.conf")
        if not os.path.isfile(conf_path):
            control.error(f"{name}: no vm-bhyve guest here ({conf_path} is missing)")
            status = status or control.EXIT_NOT_FOUND
            continue
        try:
            values, problems = parse_conf(control.read_input(conf_path))
            result = domain_from_vmbhyve(
                name,
                values,
                vm_dir=vm_dir,
                switches=switches,
                zfs_dataset=args.zfs_dataset,
                firmware_dir=args.firmware_dir,
            )
            _report(name, [f"{conf_path}: {p}" for p in problems])
            _report(name, result.not_carried)
            _emit(args, result.domain, f"vm-bhyve {conf_path}")
        except SupervisorError as exc:
            message = str(exc)
            control.error(message if message.startswith(name) else f"{name}: {message}")
            status = status or control.exit_status_for(exc)
    return status


def cmd_import_argv(args: argparse.Namespace) -> int:
    from supervisor.vmm.native import domain_from_native

    result = domain_from_native(control.read_input(args.file))
    domain = result.domain
    if args.name is not None:
        try:
            domain = attrs.evolve(domain, name=args.name)
        except InvalidValueError as exc:
            raise InvalidValueError(f"--name: {exc.message}", field="name") from None
    _report(domain.name, result.warnings)
    source = "standard input" if args.file == "-" else args.file
    _emit(args, domain, f"bhyve-argv {source}")
    return control.EXIT_OK


def owns(args: argparse.Namespace) -> bool:
    """Whether *args* is one of this module's verbs (they use control's convention)."""
    return getattr(args, "control_handler", None) is not None


def _define_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--define",
        action="store_true",
        help="define each guest through the daemon instead of printing its XML",
    )


def register(sub: Any) -> None:
    """Add ``import vm-bhyve`` and ``import bhyve-argv`` to *sub* (argparse subparsers)."""
    p = control.verb(sub, "import", _no_format, "guests from vm-bhyve or a bhyve command line")
    formats = p.add_subparsers(dest="import_format", metavar="FORMAT")

    text = "vm-bhyve guests (DIR/NAME/NAME.conf) as domain definitions"
    q = formats.add_parser("vm-bhyve", help=text, description=text)
    q.set_defaults(control_handler=cmd_import_vmbhyve)
    q.add_argument("dir", metavar="DIR", help="vm-bhyve's vm_dir, or one guest's directory")
    q.add_argument("names", nargs="*", metavar="NAME", help="guests to import (default: all)")
    _define_option(q)
    q.add_argument(
        "--zfs-dataset",
        metavar="DATASET",
        help='the datastore\'s dataset (vm_dir="zfs:DATASET"), for zvol disks',
    )
    q.add_argument(
        "--firmware-dir",
        default=FIRMWARE_DIR,
        metavar="DIR",
        help=f"where the UEFI firmware is (default {FIRMWARE_DIR})",
    )

    text = "a guest from a bhyve command line (and its loader's)"
    q = formats.add_parser("bhyve-argv", help=text, description=text)
    q.set_defaults(control_handler=cmd_import_argv)
    q.add_argument("file", metavar="FILE", help="the commands, '-' for standard input")
    q.add_argument("--name", metavar="NAME", help="the guest's name (default: bhyve's VM name)")
    _define_option(q)


def _no_format(args: argparse.Namespace) -> int:
    control.error("import: give a format: vm-bhyve or bhyve-argv")
    return control.EXIT_USAGE
