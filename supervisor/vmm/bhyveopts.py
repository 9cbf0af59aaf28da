"""bhyve(8), bhyveload(8) and grub-bhyve command lines, read the way FreeBSD reads them.

Theory of operation
-------------------

bhyve does not keep its options in variables. Every flag, ``-s`` slot and ``-l`` device is
translated, as it is met, into one *configuration tree* (bhyve_config(5)); ``-o key=value``
and ``-k FILE`` write that tree directly, and ``-o config.dump=1`` prints it. Everything
after option parsing (topology, memory size, device initialisation) reads the tree. So
this module does the same: :func:`parse_bhyve_argv` replays bhyve's option loop over a
:class:`_ConfigTree` whose rules are bhyve's (values and nodes live in one namespace, a
replaced value moves to the end of its node, ``.`` separates nodes), then applies the
checks bhyve makes before it touches the kernel, in bhyve's order and with bhyve's exit
status. The result, :class:`BhyveCommand`, is the tree in dump order plus typed
accessors derived from it; nothing else is stored, so two command lines that describe the
same VM compare equal through their trees.

The simulated host runs this parser inside its ``bhyve``, so faithfulness matters more
than convenience here: a command line real bhyve rejects must be rejected with the same
exit status (1 for usage, 64 for bad option values, 4 for slot, topology and config file
errors), and one it accepts must be accepted, however odd (``-s 3x,virtio-rnd`` is slot 3
because bhyve reads slots with ``sscanf``). Where bhyve would print and exit without
running a guest (``-h``, ``-s help``, ``-l help``, ``config.dump``), :class:`BhyveEarlyExit`
carries the output and status instead.

Everything here is pure except ``-k``, which reads a file through a callable the caller
may replace (the simulator maps FreeBSD paths to its own root).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final

import attrs

from supervisor._record import Record
from supervisor.errors import InvalidArgvError

__all__ = [
    "EXIT_ERROR",
    "EXIT_USAGE",
    "EX_USAGE",
    "PCI_EMULATIONS",
    "BhyveCommand",
    "BhyveCommandError",
    "BhyveEarlyExit",
    "BhyveloadCommand",
    "FwCfgItem",
    "GrubBhyveCommand",
    "PciDevice",
    "TpmDevice",
    "parse_bhyve_argv",
    "parse_bhyveload_argv",
    "parse_grub_bhyve_argv",
    "parse_memsize",
]

#: bhyve's exit statuses for a command line it refuses (freebsd-host-facts §2).
EXIT_USAGE: Final = 1
EX_USAGE: Final = 64
EXIT_ERROR: Final = 4

#: bhyve's getopt string on amd64 (14.x), plus ``n:`` (NUMA domains) from 15.x.
BHYVE_OPTSTRING: Final = "aehuwxACDHIPSWYk:f:o:p:G:c:s:m:l:K:U:n:"
BHYVELOAD_OPTSTRING: Final = "CSc:d:e:h:l:m:"

MIB: Final = 1 << 20
_ULONG_MAX: Final = (1 << 64) - 1
_UINT16_MAX: Final = 0xFFFF
#: CPU_SETSIZE in FreeBSD 14/15 userland: host CPU numbers run 0..1023.
CPU_SETSIZE: Final = 1024
PCI_BUSES: Final = 256
PCI_SLOTS: Final = 32
PCI_FUNCS: Final = 8
AHCI_MAX_PORTS: Final = 32
VTCON_MAX_PORTS: Final = 16
XHCI_MAX_SLOTS: Final = 64
FWCFG_MAX_NAME: Final = 56
BHYVELOAD_MAX_DISKS: Final = 32
LPC_UARTS: Final = ("com1", "com2", "com3", "com4")
USB_EMULATIONS: Final = frozenset({"tablet"})

#: What bhyve sets before it reads the command line (amd64 bhyve_init_config()); these
#: keys open every dump, in this order.
_BHYVE_DEFAULTS: Final = (
    ("acpi_tables", "true"),
    ("memory.size", "256M"),
    ("x86.strictmsr", "true"),
    ("lpc.fwcfg", "bhyve"),
)

#: Global booleans bhyve reads while starting; a value it cannot read as a boolean stops
#: it with status 4 (get_config_bool()).
_GLOBAL_BOOLEANS: Final = (
    "acpi_tables",
    "destroy_on_poweroff",
    "memory.wired",
    "memory.guest_in_core",
    "rtc.use_localtime",
    "virtio_msix",
    "x86.mptable",
    "x86.strictio",
    "x86.strictmsr",
    "x86.vmexit_on_hlt",
    "x86.vmexit_on_pause",
    "x86.x2apic",
    "gdb.wait",
)

_TRUE_WORDS: Final = frozenset({"true", "on", "yes"})
_FALSE_WORDS: Final = frozenset({"false", "off", "no"})


# --------------------------------------------------------------------------------------
# Errors and early exits


class BhyveCommandError(InvalidArgvError):
    """A bhyve (or bhyveload, grub-bhyve) command line that the tool itself would refuse.

    Args:
        message: bhyve's own wording where it is known, else one naming the argument.
        exit_status: what the tool exits with: 1 for usage errors and a missing VM name,
            64 (EX_USAGE) for bad option values, 4 for ``-s``, topology, ``-k`` and
            config tree errors.
        stderr: everything the tool prints on standard error before exiting; defaults to
            ``"bhyve: <message>\\n"``.
        field: the option concerned (``"-s"``, ``"-c"``...), when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        exit_status: int,
        stderr: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message, field=field, data={"exit_status": exit_status})
        self.exit_status = exit_status
        self.stderr = stderr if stderr is not None else f"bhyve: {message}\n"


class BhyveEarlyExit(Exception):
    """The tool would print something and exit without running a guest.

    Raised for ``-h`` (usage, status 0), ``-s help`` / ``-l help`` (lists, status 0) and
    ``-o config.dump=1`` (the tree, status 1). It is deliberately not a
    :class:`~supervisor.errors.SupervisorError`: the command line is valid, it just does
    not describe a guest to run.

    Attributes:
        exit_status: the tool's exit status.
        stdout: what it prints on standard output.
        stderr: what it prints on standard error.
    """

    def __init__(self, exit_status: int, *, stdout: str = "", stderr: str = "") -> None:
        super().__init__(f"exits {exit_status} without running a guest")
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr


class _LegacyConfigError(Exception):
    """A device's legacy ``-s`` options were refused (bhyve exits 4 after the message)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class _TreeError(Exception):
    """bhyve's config tree refused a key (``errx(4, ...)`` in config.c)."""


# --------------------------------------------------------------------------------------
# C number parsing, as bhyve's sscanf/strtol/strtoul calls see numbers

_SCAN_INT = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_C_SPACE = " \t\n\v\f\r"
_HEX_DIGITS = "0123456789abcdefABCDEF"


def _scan_ints(text: str, count: int, sep: str) -> list[int]:
    """``sscanf(text, "%d<sep>%d...")``: the integers matched before the first mismatch.

    Trailing text after the last conversion is ignored, as sscanf ignores it.
    """
    values: list[int] = []
    pos = 0
    for i in range(count):
        if i:
            if not text.startswith(sep, pos):
                break
            pos += len(sep)
        match = _SCAN_INT.match(text, pos)
        if match is None:
            break
        values.append(int(match.group(1)))
        pos = match.end()
    return values


def _c_number(text: str) -> tuple[bool, int, str] | None:
    """The number at the start of *text* as ``strto*l(text, &end, 0)`` reads it.

    Returns:
        ``(negative, magnitude, rest)``, or None when there are no digits (C then
        leaves ``end`` at the very start of *text*).
    """
    pos = 0
    while pos < len(text) and text[pos] in _C_SPACE:
        pos += 1
    negative = False
    if pos < len(text) and text[pos] in "+-":
        negative = text[pos] == "-"
        pos += 1
    base, digits = 10, "0123456789"
    if (
        text.startswith(("0x", "0X"), pos)
        and pos + 2 < len(text)
        and (text[pos + 2] in _HEX_DIGITS)
    ):
        base, digits, pos = 16, _HEX_DIGITS, pos + 2
    elif text.startswith("0", pos):
        base, digits = 8, "01234567"
    start = pos
    while pos < len(text) and text[pos] in digits:
        pos += 1
    if pos == start:
        return None
    return negative, int(text[start:pos], base), text[pos:]


def _c_strtoul(text: str) -> tuple[int, str, bool]:
    """``strtoul(text, &end, 0)`` on LP64: ``(value, rest, overflowed)``.

    A leading ``-`` negates modulo 2**64, as C does; overflow saturates.
    """
    number = _c_number(text)
    if number is None:
        return 0, text, False
    negative, magnitude, rest = number
    if magnitude > _ULONG_MAX:
        return _ULONG_MAX, rest, True
    return ((-magnitude) & _ULONG_MAX if negative else magnitude), rest, False


def _c_strtol_whole(text: str) -> int | None:
    """``strtol(text, &end, 0)`` that must use all of *text* without overflowing."""
    number = _c_number(text)
    if number is None or number[2]:
        return None
    negative, magnitude, _ = number
    value = -magnitude if negative else magnitude
    return value if -(1 << 63) <= value < (1 << 63) else None


def _expand_number(text: str) -> int | None:
    """libutil's ``expand_number()``: a number with one optional B/K/M/G/T/P/E suffix."""
    value, rest, overflowed = _c_strtoul(text)
    if overflowed:
        return None
    if rest == "":
        return value
    shift = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}.get(rest[0].lower())
    if shift is None or len(rest) != 1:
        return None
    if (value << shift) >> shift != value or (value << shift) > _ULONG_MAX:
        return None
    return value << shift


def parse_memsize(text: str) -> int:
    """A memory size as ``bhyve -m`` and ``bhyveload -m`` read it (``vm_parse_memsize``).

    A bare number below 1048576 counts MiB (``-m 1024`` is 1 GiB), a bare number from
    1048576 up counts bytes; otherwise a K/M/G/T/P/E (or B) suffix multiplies, as
    ``expand_number(3)`` does. Numbers may be hexadecimal (``0x``) or octal (``0``).

    Returns:
        The size in bytes.

    Raises:
        BhyveCommandError: the text is not a size (status 64, bhyve's wording).
    """
    value, rest, _ = _c_strtoul(text)
    if text and not rest:
        return value * MIB if value < MIB else value
    expanded = _expand_number(text)
    if expanded is None:
        raise BhyveCommandError(f"invalid memsize '{text}'", exit_status=EX_USAGE, field="-m")
    return expanded


# --------------------------------------------------------------------------------------
# The config tree


class _Node:
    """One node of bhyve's config tree: named values and child nodes, in insertion order."""

    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: dict[str, str | _Node] = {}


class _ConfigTree:
    """bhyve's nvlist-based config tree (usr.sbin/bhyve/config.c), with its rules."""

    def __init__(self, prog: str = "bhyve") -> None:
        self.root = _Node()
        self.prog = prog
        #: Lines bhyve prints on stderr without failing.
        self.warnings: list[str] = []

    def node(self, path: str, *, create: bool, parent: _Node | None = None) -> _Node | None:
        node = parent if parent is not None else self.root
        parts = path.split(".")
        for i, name in enumerate(parts):
            if name == "":
                raise _TreeError(f"Failed to create configuration node {path}")
            child = node.children.get(name)
            if isinstance(child, _Node):
                node = child
            elif child is not None:
                raise _TreeError(
                    f"Configuration node {path} is a child of existing variable "
                    f"{'.'.join(parts[: i + 1])}"
                )
            elif create:
                new = _Node()
                node.children[name] = new
                node = new
            else:
                return None
        return node

    def set(self, path: str, value: str) -> None:
        """``set_config_value()``: create the parent nodes, then set the last name."""
        node_path, dot, name = path.rpartition(".")
        node = self.node(node_path, create=True) if dot else self.root
        assert node is not None
        if isinstance(node.children.get(name), _Node):
            raise _TreeError(f"Attempting to add value {value} to existing node {path}")
        self.set_in(node, name, value)

    def set_in(self, node: _Node, name: str, value: str) -> None:
        """``set_config_value_node()``: a replaced value moves to the end, as in nvlist."""
        if "." in name:
            raise _TreeError(f"Invalid config node name {name}")
        if isinstance(node.children.get(name), _Node):
            raise _TreeError(f"Attemping to add value {value} to existing node {name}")
        node.children.pop(name, None)
        node.children[name] = value

    def get(self, path: str) -> str | None:
        node_path, dot, name = path.rpartition(".")
        try:
            node = self.node(node_path, create=False) if dot else self.root
        except _TreeError:
            return None
        value = node.children.get(name) if node is not None else None
        return value if isinstance(value, str) else None

    def flatten(self) -> dict[str, str]:
        """The tree as ``config.dump`` prints it: depth first, in insertion order."""
        out: dict[str, str] = {}

        def walk(node: _Node, prefix: str) -> None:
            for name, child in node.children.items():
                if isinstance(child, _Node):
                    walk(child, f"{prefix}{name}.")
                else:
                    out[f"{prefix}{name}"] = child

        walk(self.root, "")
        return out


# --------------------------------------------------------------------------------------
# Per-emulation legacy ``-s`` option parsers (the pe_legacy_config hooks)

_LegacyParser = Callable[[_ConfigTree, _Node, "str | None"], None]


def _generic_options(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
    """``pci_parse_legacy_config()``: ``key=value`` sets a key, a bare ``key`` sets true."""
    if opts is None:
        return
    for token in opts.split(","):
        name, eq, value = token.partition("=")
        tree.set_in(node, name, value if eq else "true")


def _first_then_options(key: str) -> _LegacyParser:
    """First token is *key* (a path or backend), the rest are generic options."""

    def parse(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
        if opts is None:
            return
        first, comma, rest = opts.partition(",")
        tree.set_in(node, key, first)
        if comma:
            _generic_options(tree, node, rest)

    return parse


_block_options = _first_then_options("path")  # blockif_legacy_config()
_net_options = _first_then_options("backend")  # netbe_legacy_config()
_scsi_options = _first_then_options("dev")


def _amd_hostbridge(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
    regs = tree.node("pcireg", create=True, parent=node)
    assert regs is not None
    tree.set_in(regs, "vendor", "0x1022")
    tree.set_in(regs, "device", "0x7432")


def _ahci(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
    """``hd:PATH[,opts],cd:PATH[,opts]...``: one port per ``hd:``/``cd:`` segment."""
    if opts is None:
        return
    ports = tree.node("port", create=True, parent=node)
    assert ports is not None
    rest: str | None = opts
    port = 0
    while port < AHCI_MAX_PORTS and rest is not None:
        segment = rest
        kind: str | None = None
        if segment.startswith(("hd:", "cd:")):
            kind, segment = segment[:2], segment[3:]
        cuts = [i for i in (segment.find(",hd:"), segment.find(",cd:")) if i >= 0]
        if cuts:
            rest = segment[min(cuts) + 1 :]
            segment = segment[: min(cuts)]
        else:
            rest = None
        if segment:
            if kind is None:
                raise _LegacyConfigError(f'Missing or invalid type for port {port}: "{segment}"')
            port_node = tree.node(str(port), create=True, parent=ports)
            assert port_node is not None
            tree.set_in(port_node, "type", kind)
            _block_options(tree, port_node, segment)
        port += 1


def _ahci_port0(kind: str) -> _LegacyParser:
    def parse(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
        if opts is None:
            return
        port = tree.node("port.0", create=True, parent=node)
        assert port is not None
        tree.set_in(port, "type", kind)
        _block_options(tree, port, opts)

    return parse


def _nvme(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
    if opts is not None and opts.startswith("ram="):
        ram, comma, rest = opts[4:].partition(",")
        tree.set_in(node, "ram", ram)
        if comma:
            _generic_options(tree, node, rest)
    else:
        _block_options(tree, node, opts)


def _virtio_console(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
    """``NAME=PATH,...``: ports numbered from 0 as ``port.N.name``/``port.N.path``."""
    if opts is None:
        return
    ports = tree.node("port", create=True, parent=node)
    assert ports is not None
    for index, token in enumerate(opts.split(",")):
        name, eq, path = token.partition("=")
        if not eq:
            raise _LegacyConfigError(f"vtcon: port {name} requires a path")
        if index >= VTCON_MAX_PORTS:
            raise _LegacyConfigError("vtcon: too many ports")
        port = tree.node(str(index), create=True, parent=ports)
        assert port is not None
        tree.set_in(port, "name", name)
        tree.set_in(port, "path", path)


def _virtio_9p(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
    if opts is None:
        return
    have_share = False
    for token in opts.split(","):
        name, eq, path = token.partition("=")
        if eq:
            if have_share:
                raise _LegacyConfigError("virtio-9p: more than one share name given")
            have_share = True
            tree.set_in(node, "sharename", name)
            tree.set_in(node, "path", path)
        else:
            tree.set_in(node, token, "true")


def _virtio_input(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
    if opts is None:
        raise _LegacyConfigError("virtio-input: a device path is required")
    _first_then_options("path")(tree, node, opts)


def _passthru(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
    """``pptN``, ``B/S/F``, ``pciB:S:F`` or ``pci0:B:S:F``, then generic options."""
    if opts is None:
        return
    first, comma, rest = opts.partition(",")
    numbers: list[int] = []
    if opts.startswith("ppt"):
        tree.set_in(node, "pptdev", first)
    else:
        for prefix, sep in (("pci0:", ":"), ("pci", ":"), ("", "/")):
            if opts.startswith(prefix):
                numbers = _scan_ints(opts[len(prefix) :], 3, sep)
                if len(numbers) == 3:
                    break
        if len(numbers) != 3:
            raise _LegacyConfigError(f'passthru: invalid options "{opts}"')
        for key, number in zip(("bus", "slot", "func"), numbers, strict=True):
            tree.set_in(node, key, str(number))
    if comma:
        _generic_options(tree, node, rest)


def _xhci(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
    """``tablet[,...]``: USB slots from 1; a bad entry only warns and ends the list."""
    if opts is None:
        return
    slots = tree.node("slot", create=True, parent=node)
    assert slots is not None
    for number, token in enumerate(opts.split(","), start=1):
        name, eq, conf = token.partition("=")
        if number > XHCI_MAX_SLOTS:
            tree.warnings.append(
                f"pci_xhci max number of USB 2 or 3 devices reached, max {XHCI_MAX_SLOTS // 2}"
            )
            return
        if name not in USB_EMULATIONS:
            tree.warnings.append(f'{tree.prog}: USB device "{name}" does not exist')
            return
        slot = tree.node(str(number), create=True, parent=slots)
        assert slot is not None
        tree.set_in(slot, "device", name)
        if eq and conf:
            _generic_options(tree, slot, conf)


def _uart(tree: _ConfigTree, node: _Node, opts: str | None) -> None:
    if opts is not None:
        tree.set_in(node, "path", opts)


#: Emulations compiled into amd64 bhyve 14/15: name → (value of ``device``, parser).
#: The aliases store the emulation they stand for (``ahci-hd`` is ``device=ahci``).
PCI_EMULATIONS: Final[Mapping[str, tuple[str, _LegacyParser]]] = MappingProxyType(
    {
        "hostbridge": ("hostbridge", _generic_options),
        "amd_hostbridge": ("hostbridge", _amd_hostbridge),
        "lpc": ("lpc", _generic_options),
        "virtio-blk": ("virtio-blk", _block_options),
        "ahci": ("ahci", _ahci),
        "ahci-hd": ("ahci", _ahci_port0("hd")),
        "ahci-cd": ("ahci", _ahci_port0("cd")),
        "nvme": ("nvme", _nvme),
        "virtio-scsi": ("virtio-scsi", _scsi_options),
        "virtio-net": ("virtio-net", _net_options),
        "e1000": ("e1000", _net_options),
        "virtio-rnd": ("virtio-rnd", _generic_options),
        "virtio-console": ("virtio-console", _virtio_console),
        "virtio-9p": ("virtio-9p", _virtio_9p),
        "virtio-input": ("virtio-input", _virtio_input),
        "passthru": ("passthru", _passthru),
        "fbuf": ("fbuf", _generic_options),
        "xhci": ("xhci", _xhci),
        "hda": ("hda", _generic_options),
        "uart": ("uart", _uart),
    }
)
_ALIASES: Final = frozenset({"amd_hostbridge", "ahci-hd", "ahci-cd"})


# --------------------------------------------------------------------------------------
# getopt


def _getopt(args: Sequence[str], optstring: str) -> Generator[tuple[str, str | None], None, int]:
    """FreeBSD ``getopt(3)``: yields ``(option, argument)`` and stops at the first operand.

    An unknown option yields ``("?", char)``, a missing argument ``(":", char)``. The
    generator's return value (``StopIteration.value``) is the index of the first operand.
    """
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--":
            return index + 1
        if not word.startswith("-") or word == "-":
            return index
        index += 1
        pos = 1
        while pos < len(word):
            char = word[pos]
            pos += 1
            spec = optstring.find(char)
            if char == ":" or spec < 0:
                yield "?", char
                continue
            if optstring[spec + 1 : spec + 2] != ":":
                yield char, None
                continue
            if pos < len(word):
                yield char, word[pos:]
            elif index < len(args):
                index += 1
                yield char, args[index - 1]
            else:
                yield ":", char
            break
    return index


def _run_getopt(
    args: Sequence[str], optstring: str, handle: Callable[[str, str | None], None]
) -> list[str]:
    """Drive :func:`_getopt`, calling *handle* per option; returns the operands."""
    options = _getopt(args, optstring)
    while True:
        try:
            option, value = next(options)
        except StopIteration as stop:
            first_operand: int = stop.value
            return list(args[first_operand:])
        handle(option, value)


# --------------------------------------------------------------------------------------
# bhyve

_BHYVE_USAGE = """\
Usage: {p} [-AaCDeHhPSuWwxY]
       {s} [-c [[cpus=]numcpus][,sockets=n][,cores=n][,threads=n]]
       {s} [-G port] [-k config_file] [-l lpc] [-m mem] [-o var=value]
       {s} [-p vcpu:hostcpu] [-s pci] [-U uuid] vmname
       -A: create ACPI tables
       -a: local apic is in xAPIC mode (deprecated)
       -C: include guest memory in core file
       -c: number of CPUs and/or topology specification
       -D: destroy on power-off
       -e: exit on unhandled I/O access
       -G: start a debug server
       -H: vmexit from the guest on HLT
       -h: help
       -k: key=value flat config file
       -K: PS2 keyboard layout
       -l: LPC device configuration
       -m: memory size
       -n: NUMA domain specification
       -o: set config 'var' to 'value'
       -P: vmexit from the guest on pause
       -p: pin 'vcpu' to 'hostcpu'
       -S: guest memory cannot be swapped
       -s: <slot,driver,configinfo> PCI slot config
       -U: UUID
       -u: RTC keeps UTC time
       -W: force virtio to use single-vector MSI
       -w: ignore unimplemented MSRs
       -x: local APIC is in x2APIC mode
       -Y: disable MPtable generation
"""

_LPC_HELP: Final = "bootrom\ncom1\ncom2\ncom3\ncom4\ntpm\npc-testdev\n"

#: Simple flags: option → (config key, value).
_BHYVE_FLAGS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        "a": ("x86.x2apic", "false"),
        "C": ("memory.guest_in_core", "true"),
        "D": ("destroy_on_poweroff", "true"),
        "e": ("x86.strictio", "true"),
        "H": ("x86.vmexit_on_hlt", "true"),
        "P": ("x86.vmexit_on_pause", "true"),
        "S": ("memory.wired", "true"),
        "u": ("rtc.use_localtime", "false"),
        "W": ("virtio_msix", "false"),
        "w": ("x86.strictmsr", "false"),
        "x": ("x86.x2apic", "true"),
        "Y": ("x86.mptable", "false"),
    }
)


def _is_help(arg: str) -> bool:
    """bhyve compares ``strncmp(arg, "help", strlen(arg))``: any prefix of help matches."""
    return "help".startswith(arg)


def _default_read_file(path: str) -> str:
    return Path(path).read_text(encoding="utf-8", errors="surrogateescape")


class _BhyveParser:
    """One run of bhyve's option loop and start-up checks."""

    def __init__(self, program: str, read_file: Callable[[str], str]) -> None:
        self.program = program
        self.prog = posixpath.basename(program) or program
        self.read_file = read_file
        self.tree = _ConfigTree(self.prog)
        for key, value in _BHYVE_DEFAULTS:
            self.tree.set(key, value)
        self.fw_cfg: list[FwCfgItem] = []
        self.ignored_flags: list[str] = []

    # -- error helpers

    def usage_text(self) -> str:
        return _BHYVE_USAGE.format(p=self.prog, s=" " * len(self.prog))

    def fail(
        self, message: str, status: int, *, field: str | None = None, before: Sequence[str] = ()
    ) -> BhyveCommandError:
        """``errx(status, message)``, after any lines bhyve printed first."""
        lines = "".join(f"{line}\n" for line in before)
        return BhyveCommandError(
            message,
            exit_status=status,
            field=field,
            stderr=f"{lines}{self.prog}: {message}\n",
        )

    def fail_plain(
        self, lines: Sequence[str], status: int, *, field: str | None = None
    ) -> BhyveCommandError:
        """An error bhyve reports with ``EPRINTLN`` (no program prefix) and ``exit()``."""
        return BhyveCommandError(
            "; ".join(lines),
            exit_status=status,
            field=field,
            stderr="".join(f"{line}\n" for line in lines),
        )

    def usage_error(self, message: str, *, before: str = "") -> BhyveCommandError:
        return BhyveCommandError(
            message, exit_status=EXIT_USAGE, stderr=f"{before}{self.usage_text()}"
        )

    def set(self, key: str, value: str, *, field: str) -> None:
        try:
            self.tree.set(key, value)
        except _TreeError as exc:
            raise self.fail(str(exc), EXIT_ERROR, field=field) from None

    # -- the option loop

    def option(self, option: str, arg: str | None) -> None:
        if option == "?":
            raise self.usage_error(
                f"illegal option -- {arg}", before=f"{self.prog}: illegal option -- {arg}\n"
            )
        if option == ":":
            raise self.usage_error(
                f"option requires an argument -- {arg}",
                before=f"{self.prog}: option requires an argument -- {arg}\n",
            )
        if option in _BHYVE_FLAGS:
            key, value = _BHYVE_FLAGS[option]
            self.set(key, value, field=f"-{option}")
            return
        if option in ("A", "I"):
            # Accepted and ignored: ACPI tables and the I/O APIC are always there. Kept
            # aside because libvirt's XML records them as <acpi/> and <apic/>.
            if option not in self.ignored_flags:
                self.ignored_flags.append(option)
            return
        if option == "h":
            raise BhyveEarlyExit(0, stderr=self.usage_text())
        assert arg is not None
        handler = getattr(self, f"opt_{option}")
        handler(arg)

    def opt_c(self, arg: str) -> None:
        if arg == "":
            for key in ("sockets", "cores", "threads", "cpus"):
                self.set(key, "1", field="-c")
            return
        for token in arg.split(","):
            for key in ("cpus", "sockets", "cores", "threads"):
                if token.startswith(f"{key}="):
                    self.set(key, token[len(key) + 1 :], field="-c")
                    break
            else:
                if "=" in token:
                    raise self.fail(f"invalid cpu topology '{arg}'", EX_USAGE, field="-c")
                self.set("cpus", token, field="-c")

    def opt_f(self, arg: str) -> None:
        rest = arg[len("name=") :] if arg.startswith("name=") else arg
        name, comma, item = rest.partition(",")
        func = "qemu_fwcfg_parse_cmdline_arg"
        if not comma:
            raise self.fail(
                f"invalid fwcfg item '{arg}'",
                EX_USAGE,
                field="-f",
                before=[f"{func}: Invalid format '{arg}'"],
            )
        if len(name) >= FWCFG_MAX_NAME:
            raise self.fail(
                f"invalid fwcfg item '{arg}'",
                EX_USAGE,
                field="-f",
                before=[f"{func}: Name too long '{arg}'"],
            )
        for kind in ("string", "file"):
            if item.startswith(f"{kind}="):
                self.fw_cfg.append(FwCfgItem(name, kind, item[len(kind) + 1 :]))
                return
        raise self.fail(
            f"invalid fwcfg item '{arg}'",
            EX_USAGE,
            field="-f",
            before=[f"{func}: Invalid format '{arg}'"],
        )

    def opt_G(self, arg: str) -> None:
        if arg.startswith("w"):
            self.set("gdb.wait", "true", field="-G")
            arg = arg[1:]
        address, colon, port = arg.rpartition(":")
        if colon:
            self.set("gdb.address", address, field="-G")
        self.set("gdb.port", port, field="-G")

    def opt_k(self, arg: str) -> None:
        try:
            text = self.read_file(arg)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise self.fail(
                f"Failed to open configuration file {arg}: {reason}", EXIT_ERROR, field="-k"
            ) from None
        for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
            if line.startswith(("#", "\n")):
                continue
            line = line.removesuffix("\n")
            key, eq, value = line.partition("=")
            if not eq or value == "":
                raise self.fail(
                    f"{arg} line {lineno}: invalid config option", EXIT_ERROR, field="-k"
                )
            self.set(key, value, field="-k")

    def opt_K(self, arg: str) -> None:
        self.set("keyboard.layout", arg, field="-K")

    def opt_l(self, arg: str) -> None:
        if _is_help(arg):
            raise BhyveEarlyExit(0, stdout=_LPC_HELP)
        parts = arg.split(",")
        device = parts[0].lower()
        if device == "bootrom":
            if len(parts) < 2:
                raise self.fail(f'invalid bootrom option "{arg}"', EXIT_ERROR, field="-l")
            self.set("lpc.bootrom", parts[1], field="-l")
            extra = parts[2:]
            if extra and "=" not in extra[0]:
                self.set("lpc.bootvars", extra[0], field="-l")
                extra = extra[1:]
            self.legacy_options("lpc", ",".join(extra) if extra else None)
            return
        if device == "tpm":
            if len(parts) < 2:
                raise self.fail(f'invalid tpm type "{arg}"', EXIT_ERROR, field="-l")
            if len(parts) < 3:
                raise self.fail(f'invalid tpm path "{arg}"', EXIT_ERROR, field="-l")
            self.set("tpm.type", parts[1], field="-l")
            self.set("tpm.path", parts[2], field="-l")
            self.legacy_options("tpm", ",".join(parts[3:]) if parts[3:] else None)
            if self.tree.get("tpm.version") is None:
                self.set("tpm.version", "2.0", field="-l")
            return
        if device in LPC_UARTS:
            _, comma, backend = arg.partition(",")
            if not comma:
                raise self.fail(f"invalid lpc device configuration '{arg}'", EX_USAGE, field="-l")
            self.set(f"lpc.{device}.path", backend, field="-l")
            return
        if device == "pc-testdev":
            self.set("lpc.pc-testdev", "true", field="-l")
            return
        raise self.fail(f"invalid lpc device configuration '{arg}'", EX_USAGE, field="-l")

    def legacy_options(self, node_name: str, opts: str | None) -> None:
        """Generic ``key[=value]`` options under a top-level node (``-l`` extras)."""
        try:
            node = self.tree.node(node_name, create=True)
            assert node is not None
            _generic_options(self.tree, node, opts)
        except _TreeError as exc:
            raise self.fail(str(exc), EXIT_ERROR, field="-l") from None

    def opt_m(self, arg: str) -> None:
        self.set("memory.size", arg, field="-m")

    def opt_n(self, arg: str) -> None:
        values: dict[str, str] = {}
        for token in arg.split(","):
            key, eq, value = token.partition("=")
            if not eq or key not in ("id", "size", "cpus", "domain_policy") or key in values:
                raise self.fail(f"invalid NUMA configuration '{arg}'", EX_USAGE, field="-n")
            values[key] = value
        domain = _c_strtol_whole(values.get("id", ""))
        if domain is None or domain < 0 or "size" not in values:
            raise self.fail(f"invalid NUMA configuration '{arg}'", EX_USAGE, field="-n")
        for key in ("size", "cpus", "domain_policy"):
            if key in values:
                self.set(f"domains.{domain}.{key}", values[key], field="-n")

    def opt_o(self, arg: str) -> None:
        key, eq, value = arg.partition("=")
        if not eq or value == "":
            raise self.fail(f"invalid configuration option '{arg}'", EX_USAGE, field="-o")
        self.set(key, value, field="-o")

    def opt_p(self, arg: str) -> None:
        numbers = _scan_ints(arg, 2, ":")
        problem: str | None = None
        if len(numbers) != 2:
            problem = f"invalid format: {arg}"
        elif numbers[0] < 0:
            problem = f"invalid vcpu '{numbers[0]}'"
        elif not 0 <= numbers[1] < CPU_SETSIZE:
            problem = f"hostcpu '{numbers[1]}' outside valid range from 0 to {CPU_SETSIZE - 1}"
        if problem is not None:
            raise self.fail(
                f"invalid vcpu pinning configuration '{arg}'",
                EX_USAGE,
                field="-p",
                before=[problem],
            )
        key = f"vcpu.{numbers[0]}.cpuset"
        old = self.tree.get(key)
        self.set(key, f"{old},{numbers[1]}" if old is not None else str(numbers[1]), field="-p")

    def opt_s(self, arg: str) -> None:
        if _is_help(arg):
            raise BhyveEarlyExit(0, stdout="".join(f"{n}\n" for n in sorted(PCI_EMULATIONS)))
        where, comma, rest = arg.partition(",")
        if not comma:
            raise self.fail_plain([f'Invalid PCI slot info field "{arg}"'], EXIT_ERROR, field="-s")
        emulation, comma, conf = rest.partition(",")
        options = conf if comma else None
        numbers = _scan_ints(where, 3, ":")
        if len(numbers) == 3:
            bus, slot, func = numbers
        else:
            bus = 0
            numbers = _scan_ints(where, 2, ":")
            if len(numbers) == 2:
                slot, func = numbers
            else:
                func = 0
                slot = numbers[0] if numbers else -1
        if not (0 <= bus < PCI_BUSES and 0 <= slot < PCI_SLOTS and 0 <= func < PCI_FUNCS):
            raise self.fail_plain([f'Invalid PCI slot info field "{arg}"'], EXIT_ERROR, field="-s")
        if emulation not in PCI_EMULATIONS:
            raise self.fail_plain(
                [f'pci slot {bus}:{slot}:{func}: unknown device "{emulation}"'],
                EXIT_ERROR,
                field="-s",
            )
        try:
            node_name = f"pci.{bus}.{slot}.{func}"
            if self.tree.node(node_name, create=False) is not None:
                raise self.fail_plain(
                    [f"pci slot {bus}:{slot}:{func} already occupied!"],
                    EXIT_ERROR,
                    field="-s",
                )
            node = self.tree.node(node_name, create=True)
            assert node is not None
            device, legacy = PCI_EMULATIONS[emulation]
            self.tree.set_in(node, "device", device)
            legacy(self.tree, node, options)
        except _LegacyConfigError as exc:
            lines = [exc.message] if exc.message else []
            raise self.fail_plain(
                lines or [f"-s {arg}: invalid options"], EXIT_ERROR, field="-s"
            ) from None
        except _TreeError as exc:
            raise self.fail(str(exc), EXIT_ERROR, field="-s") from None

    def opt_U(self, arg: str) -> None:
        self.set("uuid", arg, field="-U")

    # -- after the loop

    def finish(self, operands: list[str]) -> BhyveCommand:
        if len(operands) > 1:
            raise self.usage_error(f"unexpected argument '{operands[1]}' after the VM name")
        if operands:
            self.set("name", operands[0], field="vmname")
        name = self.tree.get("name")
        if name is None:
            raise self.usage_error("missing VM name")
        config = self.tree.flatten()
        if _parse_bool(config.get("config.dump"), False) is True:
            raise BhyveEarlyExit(
                EXIT_USAGE, stdout="".join(f"{k}={v}\n" for k, v in config.items())
            )
        command = BhyveCommand(
            program=self.program,
            vmname=name,
            config=config,
            fw_cfg=tuple(self.fw_cfg),
            ignored_flags=tuple(self.ignored_flags),
            warnings=tuple(self.tree.warnings),
        )
        self.check(command)
        return command

    def check(self, command: BhyveCommand) -> None:
        """bhyve's start-up checks, in its order: topology, pins, memory, booleans, PCI."""
        try:
            ncpus = command.cpus
        except _TopologyError as exc:
            raise self.fail(str(exc), EXIT_ERROR, field="-c") from None
        for vcpu in range(ncpus):
            cpuset = command.config_value(f"vcpu.{vcpu}.cpuset")
            if cpuset is not None:
                try:
                    _parse_cpuset(vcpu, cpuset)
                except _TopologyError as exc:
                    raise self.fail(str(exc), EXIT_ERROR, field="-p") from None
        memory = command.config_value("memory.size") or ""
        try:
            parse_memsize(memory)
        except BhyveCommandError:
            raise self.fail(f"invalid memsize '{memory}'", EX_USAGE, field="-m") from None
        for key in _GLOBAL_BOOLEANS:
            value = command.config_value(key)
            if value is not None and _parse_bool(value, None) is None:
                raise self.fail(
                    f"Invalid value {value} for boolean variable {key}", EXIT_ERROR, field=key
                )
        self.check_pci(command)

    def check_pci(self, command: BhyveCommand) -> None:
        """``init_pci()``: every slot names a known, non-alias device; one lpc on bus 0."""
        lpc_seen = False
        for dev in command.pci_devices():
            where = f"pci slot {dev.bus}:{dev.slot}:{dev.func}"
            problem: str | None = None
            if dev.emulation == "":
                problem = f'{where}: missing "device" value'
            elif dev.emulation not in PCI_EMULATIONS:
                problem = f'{where}: unknown device "{dev.emulation}"'
            elif dev.emulation in _ALIASES:
                alias = PCI_EMULATIONS[dev.emulation][0]
                problem = f'{where}: legacy device "{dev.emulation}", use "{alias}" instead'
            elif dev.emulation == "lpc" and lpc_seen:
                problem = "Only one LPC bridge is allowed."
            elif dev.emulation == "lpc" and dev.bus != 0:
                problem = "LPC bridge can be present only on bus 0."
            lpc_seen = lpc_seen or dev.emulation == "lpc"
            if problem is not None:
                raise self.fail_plain(
                    [problem, "Device emulation initialization error: Invalid argument"],
                    EXIT_ERROR,
                    field="-s",
                )


def parse_bhyve_argv(
    argv: Sequence[str], *, read_file: Callable[[str], str] | None = None
) -> BhyveCommand:
    """Read a bhyve command line as FreeBSD 14/15's bhyve(8) does (amd64).

    Args:
        argv: the whole command line, ``argv[0]`` included (any path to bhyve).
        read_file: how ``-k FILE`` is read; gets the path as written and returns the
            text (raise :class:`OSError` for a missing file). Defaults to opening it.

    Returns:
        The config tree bhyve would build, with typed accessors.

    Raises:
        BhyveCommandError: bhyve would refuse the command line; ``exit_status`` and
            ``stderr`` are what it would exit with and print.
        BhyveEarlyExit: bhyve would print something and exit without running a guest
            (``-h``, ``-s help``, ``-l help``, ``-o config.dump=1``).
    """
    if not argv:
        raise BhyveCommandError("empty command line", exit_status=EXIT_USAGE)
    parser = _BhyveParser(argv[0], read_file or _default_read_file)
    operands = _run_getopt(argv[1:], BHYVE_OPTSTRING, parser.option)
    return parser.finish(operands)


# --------------------------------------------------------------------------------------
# Typed views of the tree


class _TopologyError(Exception):
    pass


def _parse_bool(value: str | None, default: bool | None) -> bool | None:
    """bhyve's boolean words (true/on/yes/1, false/off/no/0); *default* otherwise."""
    if value is None:
        return default
    if value.lower() in _TRUE_WORDS or value == "1":
        return True
    if value.lower() in _FALSE_WORDS or value == "0":
        return False
    return None


def _parse_int_value(key: str, value: str) -> int:
    """``parse_int_value()`` in bhyverun.c: strtol, whole string, 1..65535."""
    number = _c_strtol_whole(value)
    if number is None or not 1 <= number <= _UINT16_MAX:
        raise _TopologyError(f"Invalid value for {key}: '{value}'")
    return number


def _parse_cpuset(vcpu: int, text: str) -> frozenset[int]:
    """``parse_cpuset()``: ``N``, ``N-M`` and comma lists of them, each below 1024."""
    cpus: set[int] = set()
    start: int | None = None
    rest = text
    while True:
        value, after, _ = _c_strtoul(rest)
        if after == rest:
            raise _TopologyError(f"invalid cpuset for vcpu {vcpu}: '{text}'")
        if not 0 <= value < CPU_SETSIZE:
            raise _TopologyError(
                f"hostcpu '{value}' outside valid range from 0 to {CPU_SETSIZE - 1}"
            )
        sep = after[:1]
        if sep in ("", ","):
            if start is not None:
                if start > value:
                    raise _TopologyError(f"Invalid hostcpu range {start}-{value}")
                cpus.update(range(start, value))
                start = None
            cpus.add(value)
        elif sep == "-" and start is None:
            start = value
        else:
            raise _TopologyError(f"invalid cpuset for vcpu {vcpu}: '{text}'")
        if sep == "":
            return frozenset(cpus)
        rest = after[1:]


def _expand(config: Mapping[str, str], value: str, depth: int = 0) -> str:
    """Resolve ``%(var)`` references in a config value (``%%`` is a literal ``%``)."""
    out: list[str] = []
    pos = 0
    while pos < len(value):
        char = value[pos]
        if char == "%" and value.startswith("%%", pos):
            out.append("%")
            pos += 2
        elif char == "%" and value.startswith("%(", pos) and depth <= 15:
            end = value.find(")", pos + 2)
            if end < 0:
                out.append("%")
                pos += 1
                continue
            ref = config.get(value[pos + 2 : end])
            if ref is not None:
                out.append(_expand(config, ref, depth + 1))
            pos = end + 1
        else:
            out.append(char)
            pos += 1
    return "".join(out)


def _freeze(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@attrs.frozen(repr=False)
class FwCfgItem(Record):
    """One ``-f name,string=DATA`` or ``-f name,file=PATH`` fw_cfg item."""

    name: str
    kind: str  # "string" or "file"
    value: str


@attrs.frozen(repr=False)
class TpmDevice(Record):
    """``-l tpm,TYPE,PATH[,version=V]``."""

    type: str
    path: str
    version: str


@attrs.frozen(repr=False)
class PciDevice(Record):
    """One configured PCI function (``pci.B.S.F``).

    Attributes:
        emulation: the ``device`` value (aliases already resolved: ``ahci``, not
            ``ahci-hd``).
        options: every other key under the node, relative and flattened
            (``path``, ``port.0.type``), values as written (unexpanded).
    """

    bus: int
    slot: int
    func: int
    emulation: str
    options: Mapping[str, str] = attrs.field(converter=_freeze)

    @property
    def address(self) -> str:
        """``bus:slot:func`` as bhyve's ``-s`` writes it."""
        return f"{self.bus}:{self.slot}:{self.func}"


@attrs.frozen(repr=False)
class BhyveCommand(Record):
    """A bhyve command line, as the config tree bhyve builds from it.

    Attributes:
        program: ``argv[0]`` as given.
        vmname: the VM name (the operand, or ``name`` set with ``-o``/``-k``).
        config: bhyve's config tree in ``config.dump`` order, values unexpanded. It
            includes bhyve's defaults (``acpi_tables``, ``memory.size``,
            ``x86.strictmsr``, ``lpc.fwcfg``).
        fw_cfg: the ``-f`` items, which bhyve keeps outside the tree.
        warnings: what bhyve prints on stderr without failing (an unknown USB device).
        ignored_flags: the flags bhyve accepts without effect (``A``, ``I``), in the
            order first given; they leave no trace in the tree.
    """

    program: str
    vmname: str
    config: Mapping[str, str] = attrs.field(converter=_freeze)
    fw_cfg: tuple[FwCfgItem, ...] = ()
    warnings: tuple[str, ...] = ()
    ignored_flags: tuple[str, ...] = ()

    def dump(self) -> str:
        """The tree as ``-o config.dump=1`` prints it: ``key=value`` lines."""
        return "".join(f"{key}={value}\n" for key, value in self.config.items())

    def config_value(self, key: str, default: str | None = None) -> str | None:
        """A config value with ``%(var)`` references resolved, as bhyve reads it."""
        value = self.config.get(key)
        return default if value is None else _expand(self.config, value)

    def _bool(self, key: str, default: bool) -> bool:
        value = _parse_bool(self.config_value(key), default)
        return default if value is None else value

    # -- memory and CPUs

    @property
    def memsize(self) -> int:
        """Guest RAM in bytes."""
        return parse_memsize(self.config_value("memory.size") or "")

    @property
    def cpus(self) -> int:
        """The number of vCPUs (``-c``), after bhyve's topology rules."""
        return self._topology()[0]

    @property
    def sockets(self) -> int:
        return self._topology()[1]

    @property
    def cores(self) -> int:
        return self._topology()[2]

    @property
    def threads(self) -> int:
        return self._topology()[3]

    def _topology(self) -> tuple[int, int, int, int]:
        """``calc_topology()``: sockets default to cpus; cpus must be their product."""
        cpus_text = self.config_value("cpus")
        cpus = _parse_int_value("cpus", cpus_text) if cpus_text is not None else 1
        numbers = []
        for key in ("cores", "threads"):
            text = self.config_value(key)
            numbers.append(_parse_int_value(key, text) if text is not None else 1)
        cores, threads = numbers
        sockets_text = self.config_value("sockets")
        sockets = _parse_int_value("sockets", sockets_text) if sockets_text is not None else cpus
        product = sockets * cores * threads
        if product > _UINT16_MAX:
            raise _TopologyError(f"Computed number of vCPUs too large: {product}")
        if cpus_text is not None and cpus != product:
            raise _TopologyError(
                f"Topology ({sockets} sockets, {cores} cores, {threads} threads) "
                f"does not match {cpus} vCPUs"
            )
        return product, sockets, cores, threads

    @property
    def vcpu_pins(self) -> Mapping[int, frozenset[int]]:
        """Host CPUs per vCPU (``-p``, ``vcpu.N.cpuset``), for vCPUs the guest has."""
        pins: dict[int, frozenset[int]] = {}
        for vcpu in range(self.cpus):
            text = self.config_value(f"vcpu.{vcpu}.cpuset")
            if text is not None:
                pins[vcpu] = _parse_cpuset(vcpu, text)
        return MappingProxyType(pins)

    # -- flags

    @property
    def wired(self) -> bool:
        return self._bool("memory.wired", False)

    @property
    def guest_in_core(self) -> bool:
        return self._bool("memory.guest_in_core", False)

    @property
    def destroy_on_poweroff(self) -> bool:
        return self._bool("destroy_on_poweroff", False)

    @property
    def rtc_localtime(self) -> bool:
        """Whether the RTC holds host local time (the default; ``-u`` makes it UTC)."""
        return self._bool("rtc.use_localtime", True)

    @property
    def strictmsr(self) -> bool:
        """False with ``-w`` (unknown MSRs ignored)."""
        return self._bool("x86.strictmsr", True)

    @property
    def strictio(self) -> bool:
        return self._bool("x86.strictio", False)

    @property
    def acpi(self) -> bool:
        return self._bool("acpi_tables", True)

    @property
    def vmexit_on_hlt(self) -> bool:
        return self._bool("x86.vmexit_on_hlt", False)

    @property
    def vmexit_on_pause(self) -> bool:
        return self._bool("x86.vmexit_on_pause", False)

    @property
    def x2apic(self) -> bool:
        return self._bool("x86.x2apic", False)

    @property
    def mptable(self) -> bool:
        return self._bool("x86.mptable", True)

    @property
    def virtio_msix(self) -> bool:
        return self._bool("virtio_msix", True)

    @property
    def uuid(self) -> str | None:
        return self.config_value("uuid")

    @property
    def keyboard_layout(self) -> str | None:
        return self.config_value("keyboard.layout")

    @property
    def gdb(self) -> tuple[str | None, str, bool] | None:
        """``(address, port, wait)`` of the GDB stub (``-G``), or None."""
        port = self.config_value("gdb.port")
        if port is None:
            return None
        return self.config_value("gdb.address"), port, self._bool("gdb.wait", False)

    # -- LPC

    @property
    def has_lpc(self) -> bool:
        """Whether an ``lpc`` slot exists; without one the COM ports and bootrom are unused."""
        return any(dev.emulation == "lpc" for dev in self.pci_devices())

    def com_ports(self) -> dict[int, str]:
        """``-l comN,BACKEND``: port number → backend (``stdio``, ``tcp=...``, a tty path)."""
        ports: dict[int, str] = {}
        for number, name in enumerate(LPC_UARTS, start=1):
            path = self.config_value(f"lpc.{name}.path")
            if path is not None:
                ports[number] = path
        return ports

    @property
    def bootrom(self) -> str | None:
        return self.config_value("lpc.bootrom")

    @property
    def bootvars(self) -> str | None:
        return self.config_value("lpc.bootvars")

    @property
    def fwcfg(self) -> str:
        """The fw_cfg flavour: ``bhyve`` (default) or ``qemu``."""
        return self.config_value("lpc.fwcfg") or "bhyve"

    @property
    def pc_testdev(self) -> bool:
        return self._bool("lpc.pc-testdev", False)

    @property
    def tpm(self) -> TpmDevice | None:
        kind, path = self.config_value("tpm.type"), self.config_value("tpm.path")
        if kind is None or path is None:
            return None
        return TpmDevice(kind, path, self.config_value("tpm.version") or "2.0")

    # -- PCI

    def pci_devices(self) -> list[PciDevice]:
        """The configured PCI functions in bus/slot/function order.

        Nodes whose names are not canonical in-range decimals are left out: bhyve looks
        nodes up by number and never sees them.
        """
        nodes: dict[tuple[int, int, int], dict[str, str]] = {}
        for key, value in self.config.items():
            parts = key.split(".", 4)
            if len(parts) != 5 or parts[0] != "pci":
                continue
            try:
                bsf = tuple(int(p) for p in parts[1:4] if str(int(p)) == p)
            except ValueError:
                continue
            if len(bsf) != 3 or not (
                bsf[0] < PCI_BUSES and bsf[1] < PCI_SLOTS and bsf[2] < PCI_FUNCS
            ):
                continue
            nodes.setdefault((bsf[0], bsf[1], bsf[2]), {})[parts[4]] = value
        devices = []
        for (bus, slot, func), options in sorted(nodes.items()):
            emulation = options.pop("device", "")
            devices.append(PciDevice(bus, slot, func, emulation, options))
        return devices


# --------------------------------------------------------------------------------------
# bhyveload


@attrs.frozen(repr=False)
class BhyveloadCommand(Record):
    """A bhyveload(8) command line.

    Attributes:
        console: ``-c`` (the loader's console; ``stdio`` when not given).
        disks: ``-d`` paths in order.
        env: ``-e name=value`` strings in order.
        host_path: ``-h`` host directory used as the boot file system.
        loader: ``-l`` alternative userboot.so.
        memsize: ``-m`` in bytes (256 MiB when not given).
    """

    program: str
    vmname: str
    memsize: int = 256 * MIB
    console: str | None = None
    disks: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    host_path: str | None = None
    loader: str | None = None
    wired: bool = False
    guest_in_core: bool = False


def parse_bhyveload_argv(argv: Sequence[str]) -> BhyveloadCommand:
    """Read a bhyveload command line (getopt ``CSc:d:e:h:l:m:``, one VM name).

    Raises:
        BhyveCommandError: bhyveload would refuse it (status 1 for usage, 64 for a bad
            ``-m`` or a second ``-l``).
    """
    if not argv:
        raise BhyveCommandError("empty command line", exit_status=EXIT_USAGE)
    program = argv[0]
    prog = posixpath.basename(program) or program
    usage = (
        f"usage: {prog} [-CS] [-c <console-device>] [-d <disk-path>] [-e <name=value>]\n"
        f"       {' ' * len(prog)} [-h <host-path>] [-l <loader>] "
        f"[-m memsize[K|k|M|m|G|g|T|t]] <vmname>\n"
    )
    found = _BhyveloadOptions()

    def fail(message: str, status: int, field: str, before: str = "") -> BhyveCommandError:
        tail = usage if status == EXIT_USAGE else f"{prog}: {message}\n"
        return BhyveCommandError(message, exit_status=status, field=field, stderr=f"{before}{tail}")

    def handle(option: str, arg: str | None) -> None:
        if option in ("?", ":"):
            what = "illegal option" if option == "?" else "option requires an argument"
            raise fail(
                f"{what} -- {arg}", EXIT_USAGE, f"-{arg}", before=f"{prog}: {what} -- {arg}\n"
            )
        value = arg or ""
        if option == "C":
            found.guest_in_core = True
        elif option == "S":
            found.wired = True
        elif option == "c":
            found.console = value
        elif option == "d":
            if len(found.disks) >= BHYVELOAD_MAX_DISKS:
                raise fail(f"too many disks (at most {BHYVELOAD_MAX_DISKS})", EX_USAGE, "-d")
            found.disks.append(value)
        elif option == "e":
            found.env.append(value)
        elif option == "h":
            found.host_path = value
        elif option == "l":
            if found.loader is not None:
                raise fail("-l can only be given once", EX_USAGE, "-l")
            found.loader = value
        elif option == "m":
            try:
                found.memsize = parse_memsize(value)
            except BhyveCommandError:
                raise fail(f"Invalid memsize '{value}'", EX_USAGE, "-m") from None

    operands = _run_getopt(argv[1:], BHYVELOAD_OPTSTRING, handle)
    if len(operands) != 1:
        message = "missing VM name" if not operands else "more than one VM name"
        raise fail(message, EXIT_USAGE, "vmname")
    return BhyveloadCommand(
        program=program,
        vmname=operands[0],
        memsize=found.memsize,
        console=found.console,
        disks=tuple(found.disks),
        env=tuple(found.env),
        host_path=found.host_path,
        loader=found.loader,
        wired=found.wired,
        guest_in_core=found.guest_in_core,
    )


@attrs.define(repr=False)
class _BhyveloadOptions(Record):
    memsize: int = 256 * MIB
    console: str | None = None
    disks: list[str] = attrs.Factory(list)
    env: list[str] = attrs.Factory(list)
    host_path: str | None = None
    loader: str | None = None
    wired: bool = False
    guest_in_core: bool = False


# --------------------------------------------------------------------------------------
# grub-bhyve


@attrs.frozen(repr=False)
class GrubBhyveCommand(Record):
    """A grub-bhyve command line (sysutils/grub2-bhyve).

    Attributes:
        device_map: ``-m/--device-map`` file.
        root: ``-r/--root`` GRUB device (``hd0,msdos1``, ``cd``).
        memsize: ``-M/--memory`` in bytes (256 MiB when not given).
        cons_dev: ``-c/--cons-dev`` tty for the GRUB console.
        directory: ``-d/--directory`` with GRUB's files.
        grub_cfg: ``-g/--grub-cfg`` file name.
    """

    program: str
    vmname: str
    device_map: str | None = None
    root: str | None = None
    memsize: int = 256 * MIB
    cons_dev: str | None = None
    directory: str | None = None
    grub_cfg: str | None = None
    ncpus: int | None = None
    wired: bool = False
    evga: bool = False
    verbose: bool = False


#: grub-bhyve's options: long name → (short letter, takes an argument).
_GRUB_OPTIONS: Final[Mapping[str, tuple[str, bool]]] = MappingProxyType(
    {
        "cons-dev": ("c", True),
        "directory": ("d", True),
        "evga": ("e", False),
        "grub-cfg": ("g", True),
        "device-map": ("m", True),
        "memory": ("M", True),
        "ncpus": ("n", True),
        "root": ("r", True),
        "wire-memory": ("S", False),
        "verbose": ("v", False),
        "help": ("?", False),
        "version": ("V", False),
    }
)
_GRUB_SHORT: Final = {short: (long, arg) for long, (short, arg) in _GRUB_OPTIONS.items()}


def parse_grub_bhyve_argv(argv: Sequence[str]) -> GrubBhyveCommand:
    """Read a grub-bhyve command line (GNU argp: options anywhere, ``--long[=value]``).

    Raises:
        BhyveCommandError: grub-bhyve would refuse it (argp exits 64 for usage errors).
        BhyveEarlyExit: ``--help`` or ``--version``.
    """
    if not argv:
        raise BhyveCommandError("empty command line", exit_status=EX_USAGE)
    program = argv[0]
    prog = posixpath.basename(program) or program
    hint = f"Try `{prog} --help' or `{prog} --usage' for more information.\n"

    def fail(message: str, field: str) -> BhyveCommandError:
        return BhyveCommandError(
            message, exit_status=EX_USAGE, field=field, stderr=f"{prog}: {message}\n{hint}"
        )

    values: dict[str, str | None] = {}
    operands: list[str] = []
    args = list(argv[1:])
    index = 0
    while index < len(args):
        word = args[index]
        index += 1
        if word == "--":
            operands.extend(args[index:])
            break
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            matches = [long for long in _GRUB_OPTIONS if long.startswith(name)]
            if name in _GRUB_OPTIONS:
                matches = [name]
            if len(matches) != 1:
                kind = "unrecognized" if not matches else "ambiguous"
                raise fail(f"{kind} option '{word}'", word)
            long = matches[0]
            takes = _GRUB_OPTIONS[long][1]
            if takes and not eq:
                if index >= len(args):
                    raise fail(f"option '--{long}' requires an argument", f"--{long}")
                value, index = args[index], index + 1
            elif eq and not takes:
                raise fail(f"option '--{long}' doesn't allow an argument", f"--{long}")
            values[long] = value if takes else None
        elif word.startswith("-") and word != "-":
            pos = 1
            while pos < len(word):
                char = word[pos]
                pos += 1
                if char not in _GRUB_SHORT:
                    raise fail(f"invalid option -- '{char}'", f"-{char}")
                long, takes = _GRUB_SHORT[char]
                if not takes:
                    values[long] = None
                    continue
                if pos < len(word):
                    values[long] = word[pos:]
                elif index < len(args):
                    values[long], index = args[index], index + 1
                else:
                    raise fail(f"option requires an argument -- '{char}'", f"-{char}")
                break
        else:
            operands.append(word)
    if "help" in values:
        raise BhyveEarlyExit(0, stdout=f"Usage: {prog} [OPTION...] vmname\n")
    if "version" in values:
        raise BhyveEarlyExit(0, stdout=f"{prog} (GRUB) 2.00\n")
    if len(operands) != 1:
        raise fail("missing VM name" if not operands else "more than one VM name", "vmname")
    memsize = 256 * MIB
    if values.get("memory") is not None:
        try:
            memsize = parse_memsize(values["memory"] or "")
        except BhyveCommandError:
            raise fail(f"Invalid guest memory size '{values['memory']}'", "--memory") from None
    ncpus: int | None = None
    if values.get("ncpus") is not None:
        ncpus = _c_strtol_whole(values["ncpus"] or "")
        if ncpus is None or ncpus < 1:
            raise fail(f"Invalid number of CPUs '{values['ncpus']}'", "--ncpus")
    return GrubBhyveCommand(
        program=program,
        vmname=operands[0],
        device_map=values.get("device-map"),
        root=values.get("root"),
        memsize=memsize,
        cons_dev=values.get("cons-dev"),
        directory=values.get("directory"),
        grub_cfg=values.get("grub-cfg"),
        ncpus=ncpus,
        wired="wire-memory" in values,
        evga="evga" in values,
        verbose="verbose" in values,
    )
