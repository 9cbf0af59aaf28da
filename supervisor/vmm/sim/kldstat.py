"""The simulated ``kldstat(8)``: loaded kld files and modules of the simulated host.

Output follows FreeBSD 12.0 and later: ``Id Refs Address   Size Name`` with the size
right-aligned in eight columns (``%2d %4d %p %8zx %s``), ``-m`` printing
``Id  Refs Name`` rows, and ``-q`` turning the lookups into silent exit statuses.
"""

from __future__ import annotations

import getopt
import sys
from collections.abc import Sequence
from typing import TextIO

from supervisor.vmm.sim import hardware
from supervisor.vmm.sim.hardware import KLD_SIZES, Hardware

_USAGE = "usage: kldstat [-dhqv] [-i id] [-n filename]\n       kldstat [-dq] [-m modname]\n"

_BASE_ADDRESS = 0xFFFFFFFF80200000
_KLD_BASE = 0xFFFFFFFF82A00000


def _files(hw: Hardware) -> list[tuple[int, int, int, int, str]]:
    """(id, refs, address, size, name) of every loaded file, kernel first."""
    rows = [(1, 20 + 2 * len(hw.klds), _BASE_ADDRESS, KLD_SIZES["kernel"], "kernel")]
    address = _KLD_BASE
    for i, name in enumerate(hw.klds, start=2):
        size = KLD_SIZES[name]
        refs = 2 if name == "bridgestp.ko" and "if_bridge.ko" in hw.klds else 1
        rows.append((i, refs, address, size, name))
        address += (size + 0xFFF) & ~0xFFF
    return rows


def _humanize(size: int) -> str:
    """``humanize_number(buf, 5, size, "", HN_AUTOSCALE, HN_DECIMAL | HN_NOSPACE)``."""
    value = float(size)
    for prefix in ("", "K", "M", "G", "T"):
        if value < 1000 or prefix == "T":
            if prefix and value < 10:
                return f"{value:.1f}{prefix}"
            return f"{round(value)}{prefix}"
        value /= 1024
    raise AssertionError("unreachable")


def _file_line(row: tuple[int, int, int, int, str], human: bool) -> str:
    fid, refs, address, size, name = row
    shown = f"{_humanize(size):>8}" if human else f"{size:8x}"
    return f"{fid:2d} {refs:4d} 0x{address:x} {shown} {name}\n"


def _header() -> str:
    # "Address" is padded to the width of a 64-bit %p (18 columns).
    return f"Id Refs Address{' ' * 11} {'Size':>8} Name\n"


def run(hw: Hardware, args: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Run ``kldstat ARGS`` against *hw*; returns the exit status."""
    try:
        opts, rest = getopt.getopt(list(args), "dhi:m:n:qv")
    except getopt.GetoptError as e:
        err.write(f"kldstat: {e.msg}\n{_USAGE}")
        return 1
    if rest:
        err.write(_USAGE)
        return 1
    flags = {o for o, _ in opts}
    values = dict(opts)
    quiet, verbose, human = "-q" in flags, "-v" in flags, "-h" in flags
    files = _files(hw)
    modules = hw.modules()
    module_ids = {name: i for i, name in enumerate(modules, start=1)}

    if "-m" in values:
        name = values["-m"]
        if name not in modules:
            if not quiet:
                err.write(f"kldstat: can't find module {name}: No such file or directory\n")
            return 1
        if not quiet:
            out.write("Id  Refs Name\n")
            out.write(f"{module_ids[name]:3d} {1:4d} {name}\n")
        return 0

    selected = files
    if "-n" in values:
        wanted = values["-n"]
        # The kernel matches a file name with or without its ".ko".
        selected = [r for r in files if r[4] in (wanted, f"{wanted}.ko")]
        if not selected:
            if not quiet:
                err.write(f"kldstat: can't find file {wanted}: No such file or directory\n")
            return 1
    elif "-i" in values:
        try:
            fid = int(values["-i"], 0)
        except ValueError:
            err.write(f"kldstat: Invalid ID {values['-i']}\n")
            return 1
        selected = [r for r in files if r[0] == fid]
        if not selected:
            if not quiet:
                err.write(f"kldstat: can't stat file id {fid}: No such file or directory\n")
            return 1
    if quiet and ("-n" in values or "-i" in values):
        return 0
    out.write(_header())
    for row in selected:
        out.write(_file_line(row, human))
        if verbose:
            out.write("\tContains modules:\n\t\t Id Name\n")
            for name, where in modules.items():
                if where == row[4]:
                    out.write(f"\t\t{module_ids[name]:3d} {name}\n")
    return 0


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the installed ``/sbin/kldstat`` of the simulated host at *root*."""
    return run(hardware.load(root), argv[1:], sys.stdout, sys.stderr)
