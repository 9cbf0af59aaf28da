"""The simulated host's PCI functions and the drivers bound to them.

``pciconf -lv`` prints them in the 13.0+ layout (``name@pciD:B:S:F:<TAB>class=...``
with ``-v`` adding the indented ``vendor = '...'`` lines); ``devctl set driver [-f]``
and ``devctl clear driver [-f]`` move a function between its native driver and ppt(4),
which exists only while vmm.ko is loaded (ppt is part of it). Unit numbers are the
lowest free per driver, as newbus allocates them. The state is one document under
``ROOT/.simhost`` (:mod:`supervisor.vmm.sim.state`).
"""

from __future__ import annotations

import errno
import getopt
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from supervisor.vmm.sim import bsd, hardware, state

DOC = "pci"


def _fn(
    native: str | None,
    bus: int,
    slot: int,
    func: int,
    cls: int,
    vendor_id: int,
    device_id: int,
    sub: tuple[int, int],
    names: tuple[str, str, str, str],
    *,
    driver: str | None = "native",
    rev: int = 1,
) -> dict[str, Any]:
    return {
        "native": native,
        "driver": native if driver == "native" else driver,
        "unit": 0,
        "domain": 0,
        "bus": bus,
        "slot": slot,
        "function": func,
        "class": cls,
        "rev": rev,
        "hdr": 0,
        "vendor_id": vendor_id,
        "device_id": device_id,
        "subvendor_id": sub[0],
        "subdevice_id": sub[1],
        "vendor": names[0],
        "device": names[1],
        "class_name": names[2],
        "subclass": names[3],
    }


def default_devices() -> list[dict[str, Any]]:
    """A small Intel server: host bridge, USB, SMBus without a driver, the NIC the host
    uses (igb0) and a second NIC held by ppt since boot (``pptdevs="6/0/0"``)."""
    devices = [
        _fn(
            "hostb",
            0,
            0,
            0,
            0x060000,
            0x8086,
            0x6F00,
            (0x15D9, 0x0888),
            (
                "Intel Corporation",
                "Xeon E7 v4/Xeon E5 v4/Xeon E3 v4/Xeon D DMI2",
                "bridge",
                "HOST-PCI",
            ),
        ),
        _fn(
            "xhci",
            0,
            20,
            0,
            0x0C0330,
            0x8086,
            0x8D31,
            (0x15D9, 0x0888),
            (
                "Intel Corporation",
                "C610/X99 series chipset USB xHCI Host Controller",
                "serial bus",
                "USB",
            ),
        ),
        _fn(
            None,
            0,
            31,
            3,
            0x0C0500,
            0x8086,
            0x8D22,
            (0x15D9, 0x0888),
            (
                "Intel Corporation",
                "C610/X99 series chipset SMBus Controller",
                "serial bus",
                "SMBus",
            ),
            rev=5,
        ),
        _fn(
            "igb",
            2,
            0,
            0,
            0x020000,
            0x8086,
            0x1533,
            (0x15D9, 0x1533),
            ("Intel Corporation", "I210 Gigabit Network Connection", "network", "ethernet"),
            rev=3,
        ),
        _fn(
            "igb",
            6,
            0,
            0,
            0x020000,
            0x8086,
            0x1521,
            (0x8086, 0x0001),
            ("Intel Corporation", "I350 Gigabit Network Connection", "network", "ethernet"),
            driver="ppt",
        ),
    ]
    _renumber(devices)
    return devices


def _renumber(devices: list[dict[str, Any]]) -> None:
    """Give every driver's functions units 0, 1, ... in bus order (as at boot)."""
    counts: dict[str, int] = {}
    for d in sorted(devices, key=_key):
        name = d["driver"] or "none"
        d["unit"] = counts.get(name, 0)
        counts[name] = d["unit"] + 1


def _key(d: dict[str, Any]) -> tuple[int, int, int, int]:
    return (d["domain"], d["bus"], d["slot"], d["function"])


def _default_doc() -> dict[str, Any]:
    return {"devices": default_devices()}


def set_devices(root: str, devices: list[dict[str, Any]]) -> None:
    """Replace the simulated host's PCI functions (tests build other machines)."""
    with state.locked(root, DOC, _default_doc) as doc:
        doc["devices"] = devices
        _renumber(doc["devices"])


def devices(root: str) -> list[dict[str, Any]]:
    """The functions, in bus order."""
    return sorted(state.read(root, DOC, _default_doc)["devices"], key=_key)


def name_of(d: dict[str, Any]) -> str:
    return f"{d['driver'] or 'none'}{d['unit']}"


def selector_of(d: dict[str, Any]) -> str:
    return f"pci{d['domain']}:{d['bus']}:{d['slot']}:{d['function']}"


def pciconf_line(d: dict[str, Any]) -> str:
    return (
        f"{name_of(d)}@{selector_of(d)}:\tclass=0x{d['class']:06x} rev=0x{d['rev']:02x} "
        f"hdr=0x{d['hdr']:02x} vendor=0x{d['vendor_id']:04x} device=0x{d['device_id']:04x} "
        f"subvendor=0x{d['subvendor_id']:04x} subdevice=0x{d['subdevice_id']:04x}\n"
    )


def _find(devs: list[dict[str, Any]], spec: str) -> dict[str, Any] | None:
    for d in devs:
        if spec in (name_of(d), selector_of(d)) or (
            spec.startswith("pci") and spec == f"pci{d['bus']}:{d['slot']}:{d['function']}"
        ):
            return d
    return None


def _free_unit(devs: list[dict[str, Any]], driver: str) -> int:
    used = {d["unit"] for d in devs if d["driver"] == driver}
    unit = 0
    while unit in used:
        unit += 1
    return unit


_PCICONF_USAGE = (
    "usage: pciconf -l [-BbcevV] [device]\n"
    "       pciconf -a device\n"
    "       pciconf -r [-b | -h] device addr[:addr2]\n"
    "       pciconf -w [-b | -h] device addr value\n"
    "       pciconf -D [-b | -h | -x] device bar [start [count]]\n"
)


def pciconf(root: str, args: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``pciconf -l[v] [device]`` and ``pciconf -a device``."""
    try:
        opts, rest = getopt.getopt(list(args), "aBbcDehlrVvwx")
    except getopt.GetoptError:
        err.write(_PCICONF_USAGE)
        return 1
    flags = {o for o, _ in opts}
    devs = devices(root)
    if "-a" in flags:
        if len(rest) != 1:
            err.write(_PCICONF_USAGE)
            return 1
        d = _find(devs, rest[0])
        if d is None:
            err.write(f"pciconf: {rest[0]}: No such device\n")
            return 1
        out.write(
            f"{selector_of(d)} is attached\n"
            if d["driver"]
            else f"{selector_of(d)} is not attached\n"
        )
        return 0
    if "-l" not in flags or len(rest) > 1:
        err.write(_PCICONF_USAGE)
        return 1
    if rest:
        d = _find(devs, rest[0])
        if d is None:
            err.write(f"pciconf: {rest[0]}: No such device\n")
            return 1
        devs = [d]
    for d in devs:
        out.write(pciconf_line(d))
        if "-v" in flags:
            out.write(f"    vendor     = '{d['vendor']}'\n")
            out.write(f"    device     = '{d['device']}'\n")
            out.write(f"    class      = {d['class_name']}\n")
            if d.get("subclass"):
                out.write(f"    subclass   = {d['subclass']}\n")
    return 0


_DEVCTL_USAGE = (
    "usage: devctl attach device\n"
    "       devctl detach [-f] device\n"
    "       devctl set driver [-f] device driver\n"
    "       devctl clear driver [-f] device\n"
)


def _fail(err: TextIO, what: str, code: int) -> int:
    err.write(f"devctl: {what}: {bsd.strerror(code)}\n")
    return 1


def devctl(root: str, args: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``devctl set driver [-f] DEV DRIVER`` and ``devctl clear driver [-f] DEV``."""
    argv = list(args)
    if len(argv) < 2 or argv[:2] not in (["set", "driver"], ["clear", "driver"]):
        err.write(_DEVCTL_USAGE)
        return 1
    setting = argv[0] == "set"
    try:
        opts, rest = getopt.getopt(argv[2:], "f")
    except getopt.GetoptError:
        err.write(_DEVCTL_USAGE)
        return 1
    force = bool(opts)
    if len(rest) != (2 if setting else 1):
        err.write(_DEVCTL_USAGE)
        return 1
    spec = rest[0]
    what = (
        f"Failed to set {spec} driver to {rest[1]}"
        if setting
        else (f"Failed to clear {spec} driver")
    )
    hw = hardware.load(root)
    with state.locked(root, DOC, _default_doc) as doc:
        devs: list[dict[str, Any]] = doc["devices"]
        d = _find(devs, spec)
        if d is None:
            return _fail(err, what, errno.ENOENT)
        target = rest[1] if setting else d["native"]
        if target == "ppt" and "vmm.ko" not in hw.klds:
            return _fail(err, what, errno.ENOENT)  # no such driver: ppt lives in vmm.ko
        if d["driver"] == target:
            return 0
        if d["driver"] is not None and not force:
            return _fail(err, what, errno.EBUSY)
        if target is None:
            d["driver"], d["unit"] = None, _free_unit(devs, "none")
            return 0
        d["driver"] = None  # detached first, so the unit is free to take
        d["unit"] = _free_unit(devs, target)
        d["driver"] = target
    return 0


def main_pciconf(root: str, argv: Sequence[str]) -> int:
    return pciconf(root, argv[1:], sys.stdout, sys.stderr)


def main_devctl(root: str, argv: Sequence[str]) -> int:
    return devctl(root, argv[1:], sys.stdout, sys.stderr)


def passthru_problem(root: str, options: Mapping[str, str], wired: bool) -> str | None:
    """What bhyve's passthru device says when it cannot take the function (or None).

    bhyve requires wired guest memory (``-S``) and a function held by ppt(4)
    (``vm_assign_pptdev`` fails otherwise).
    """
    if not wired:
        return "passthru requires guest memory to be wired"
    devs = devices(root)
    if "pptdev" in options:
        d = _find(devs, str(options["pptdev"]))
        where = str(options["pptdev"])
    else:
        b, s, f = (int(options.get(k, "0")) for k in ("bus", "slot", "func"))
        d = next((x for x in devs if (x["bus"], x["slot"], x["function"]) == (b, s, f)), None)
        where = f"{b}/{s}/{f}"
    if d is None or d["driver"] != "ppt":
        return f"PCI device at {where} is not using the ppt(4) driver"
    return None
