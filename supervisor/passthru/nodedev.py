"""Host PCI functions as libvirt node devices (``nodedev-list --cap pci``). Pure.

libvirt names a PCI function ``pci_DDDD_BB_SS_F`` (hex, zero-padded); the rest of what
is shown comes from ``pciconf -lv`` (:func:`supervisor.vmm.hostparse.parse_pciconf`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from supervisor.domain.model import PciAddress
from supervisor.vmm.hostparse import PciDevice

__all__ = ["describe", "find", "nodedev_name", "selector_of"]


def nodedev_name(dev: PciDevice) -> str:
    """``pci_0000_02_00_0``: libvirt's name for the function."""
    return f"pci_{dev.domain:04x}_{dev.bus:02x}_{dev.slot:02x}_{dev.function:x}"


def selector_of(addr: PciAddress) -> str:
    """``pci0:B:S:F`` for a host address from a domain's ``<hostdev>``."""
    return f"pci{addr.domain}:{addr.bus}:{addr.slot}:{addr.function}"


def find(devices: Iterable[PciDevice], addr: PciAddress) -> PciDevice | None:
    """The host function at *addr*, if the host has one."""
    for d in devices:
        if (d.domain, d.bus, d.slot, d.function) == (
            addr.domain,
            addr.bus,
            addr.slot,
            addr.function,
        ):
            return d
    return None


def describe(dev: PciDevice) -> dict[str, Any]:
    """The JSON shape of one node device."""
    return {
        "name": nodedev_name(dev),
        "selector": dev.selector,
        "bsf": dev.bsf,
        "driver": dev.driver,
        "device_name": dev.name,
        "ppt": dev.is_ppt,
        "vendor_id": f"0x{dev.vendor_id:04x}",
        "product_id": f"0x{dev.device_id:04x}",
        "class": f"0x{dev.class_code:06x}" if dev.class_code is not None else None,
        "vendor": dev.vendor,
        "product": dev.device,
        "class_name": dev.class_name,
        "subclass": dev.subclass,
    }
