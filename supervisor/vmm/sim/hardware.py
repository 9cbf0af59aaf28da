"""The simulated machine: CPU, loaded kernel modules and the sysctl tree it implies.

A simulated host's "hardware" is one JSON file kept outside the FreeBSD trees
(``ROOT/.simhost/hardware.json``). Every simulated tool reads it: ``kldstat`` lists
the klds it names, ``sysctl`` prints the tree :func:`sysctl_tree` derives from it,
and ``bhyve`` refuses more vCPUs than ``hw.vmm.maxcpu`` or a bootrom without
unrestricted guest. Tests build a broken host (vmm not loaded, no VT-x, an AMD CPU)
by installing with other values; nothing else differs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import attrs

from supervisor._record import Record

#: Where the simulator keeps its own state, relative to the simulated root.
SIM_DIR = ".simhost"
HARDWARE_FILE = "hardware.json"

INTEL = "GenuineIntel"
AMD = "AuthenticAMD"

#: The klds a default 14/15 amd64 bhyve host has loaded besides the kernel.
DEFAULT_KLDS: tuple[str, ...] = ("vmm.ko", "nmdm.ko", "if_bridge.ko", "bridgestp.ko")

#: Modules each kld file registers (``kldstat -v`` / ``kldstat -m``). GENERIC has
#: tuntap compiled in, so ``kldstat -q -m if_tuntap`` succeeds with no if_tuntap.ko.
KLD_MODULES: Mapping[str, tuple[str, ...]] = {
    "kernel": ("if_tuntap", "if_tun", "if_tap", "pci", "acpi", "cpufreq", "zfs_kern"),
    "vmm.ko": ("vmm",),
    "nmdm.ko": ("nmdm",),
    "if_bridge.ko": ("if_bridge",),
    "bridgestp.ko": ("bridgestp",),
    "pf.ko": ("pf",),
    "ipfw.ko": ("ipfw",),
    "ipfw_nat.ko": ("ipfw_nat",),
    "libalias.ko": ("libalias",),
    "zfs.ko": ("zfs",),
}

#: Plausible sizes for ``kldstat``'s Size column (bytes).
KLD_SIZES: Mapping[str, int] = {
    "kernel": 0x1F4E3F8,
    "vmm.ko": 0x5D4C8 + 0x200000,
    "nmdm.ko": 0x3228,
    "if_bridge.ko": 0x7E40,
    "bridgestp.ko": 0x2C78,
    "pf.ko": 0x6B9D0,
    "ipfw.ko": 0x4C840,
    "ipfw_nat.ko": 0x3A88,
    "libalias.ko": 0xB1A0,
    "zfs.ko": 0x5F4E10,
}

SysctlValue = int | str


@attrs.frozen(repr=False)
class Hardware(Record):
    """What the simulated machine is.

    Args:
        freebsd: the release, ``MAJOR.MINOR`` (``"15.0"``, ``"14.3"``); bhyve and
            bhyvectl follow the behaviour of that major version.
        cpu_vendor: the CPUID vendor string, :data:`INTEL` or :data:`AMD`.
        ncpu: host CPUs; also ``hw.vmm.maxcpu``, the most vCPUs a guest may have.
        physmem: host RAM in bytes.
        klds: loaded kld files besides the kernel (``vmm.ko``, ``nmdm.ko``...).
        virtualization: whether the CPU offers VT-x / AMD-V. Without it vmm.ko loads
            but its module does not initialise: ``kldstat -q -n vmm.ko`` succeeds
            while ``kldstat -q -m vmm`` fails, as on a nested host without it.
        ept: Intel EPT (nested paging); AMD hosts always have NPT here.
        unrestricted_guest: Intel unrestricted guest, needed for a bootrom and for
            more than one vCPU.
        sysctl: extra or replaced sysctl values; a value of ``None`` removes the OID.
    """

    freebsd: str = "15.0"
    cpu_vendor: str = INTEL
    ncpu: int = 8
    physmem: int = 32 * 1024**3
    klds: tuple[str, ...] = DEFAULT_KLDS
    virtualization: bool = True
    ept: bool = True
    unrestricted_guest: bool = True
    sysctl: Mapping[str, SysctlValue | None] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        major, _, minor = self.freebsd.partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise ValueError(f"freebsd: must look like '15.0', got {self.freebsd!r}")
        if self.cpu_vendor not in (INTEL, AMD):
            raise ValueError(f"cpu_vendor: must be {INTEL!r} or {AMD!r}, got {self.cpu_vendor!r}")
        if self.ncpu < 1:
            raise ValueError(f"ncpu: must be >= 1, got {self.ncpu}")
        for kld in self.klds:
            if kld not in KLD_MODULES or kld == "kernel":
                raise ValueError(f"klds: unknown kld file {kld!r}")

    @property
    def major(self) -> int:
        """The FreeBSD major version (14, 15...)."""
        return int(self.freebsd.partition(".")[0])

    @property
    def vmm_loaded(self) -> bool:
        """Whether vmm.ko is loaded *and* initialised (``kldstat -q -m vmm``)."""
        return "vmm.ko" in self.klds and self.virtualization

    @property
    def can_run_guests(self) -> bool:
        """Whether a VM can be created at all."""
        return self.vmm_loaded and (self.cpu_vendor == AMD or self.ept)

    @property
    def has_unrestricted_guest(self) -> bool:
        """Whether bootroms and multi-vCPU guests are possible."""
        return self.cpu_vendor == AMD or (self.ept and self.unrestricted_guest)

    def modules(self) -> dict[str, str]:
        """Every initialised kernel module, mapped to the file that holds it."""
        out: dict[str, str] = {}
        for kld in ("kernel", *self.klds):
            if kld == "vmm.ko" and not self.virtualization:
                continue
            for module in KLD_MODULES[kld]:
                out[module] = kld
        return out

    def to_json(self) -> str:
        """The file form of this description."""
        data = attrs.asdict(self)
        data["klds"] = list(self.klds)
        data["sysctl"] = dict(self.sysctl)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Hardware:
        """Read back what :meth:`to_json` wrote."""
        data = json.loads(text)
        data["klds"] = tuple(data["klds"])
        return cls(**data)


def hardware_path(root: str) -> str:
    """Where the hardware description of the simulated host at *root* lives."""
    return os.path.join(root, SIM_DIR, HARDWARE_FILE)


def load(root: str) -> Hardware:
    """The hardware of the simulated host at *root*."""
    with open(hardware_path(root), encoding="utf-8") as f:
        return Hardware.from_json(f.read())


def save(root: str, hw: Hardware) -> None:
    """Record *hw* as the hardware of the simulated host at *root* (atomically)."""
    path = hardware_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(hw.to_json())
    os.replace(tmp, path)


def os_reldate(hw: Hardware) -> int:
    """``kern.osreldate`` for the release (15.0 → 1500000 + patch level)."""
    major, _, minor = hw.freebsd.partition(".")
    return int(major) * 100000 + int(minor) * 1000 + 68


def sysctl_tree(hw: Hardware) -> dict[str, SysctlValue]:
    """The sysctl OIDs (leaves only, in OID order) of the simulated host."""
    intel = hw.cpu_vendor == INTEL
    tree: dict[str, SysctlValue] = {
        "kern.ostype": "FreeBSD",
        "kern.osrelease": f"{hw.freebsd}-RELEASE",
        "kern.osrevision": 199506,
        "kern.osreldate": os_reldate(hw),
        "kern.hostname": "bhyvesim",
        "hw.machine": "amd64",
        "hw.model": (
            "Intel(R) Xeon(R) CPU E5-2650 v4 @ 2.20GHz"
            if intel
            else "AMD EPYC 7302P 16-Core Processor"
        ),
        "hw.ncpu": hw.ncpu,
        "hw.physmem": hw.physmem,
        "hw.pagesize": 4096,
        "hw.machine_arch": "amd64",
        "hw.vendor": "Supermicro" if intel else "ASRockRack",
    }
    if "vmm.ko" in hw.klds:
        # vmm.ko's static sysctls exist as soon as the file is linked, even when its
        # module failed to initialise for lack of VT-x/AMD-V.
        up = hw.virtualization
        tree.update(
            {
                "hw.vmm.amdvi.enable": 0,
                "hw.vmm.iommu.enable": 1,
                "hw.vmm.iommu.initialized": 0,
                "hw.vmm.ppt.devices": 0,
                "hw.vmm.ipinum": 251 if up else 0,
                "hw.vmm.halt_detection": 1,
                "hw.vmm.trace_guest_exceptions": 0,
                "hw.vmm.trap_wbinvd": 0,
                "hw.vmm.maxcpu": hw.ncpu,
                "hw.vmm.topology.cores_per_package": 1,
                "hw.vmm.topology.threads_per_core": 1,
            }
        )
        if intel:
            cap = int(up and hw.ept)
            tree.update(
                {
                    "hw.vmm.vmx.initialized": int(up and hw.ept),
                    "hw.vmm.vmx.cap.halt_exit": cap,
                    "hw.vmm.vmx.cap.pause_exit": cap,
                    "hw.vmm.vmx.cap.monitor_trap": cap,
                    "hw.vmm.vmx.cap.unrestricted_guest": int(cap and hw.unrestricted_guest),
                    "hw.vmm.vmx.cap.invpcid": cap,
                    "hw.vmm.vmx.cap.tpr_shadowing": cap,
                    "hw.vmm.vmx.cap.virtual_interrupt_delivery": 0,
                    "hw.vmm.vmx.cap.posted_interrupts": 0,
                    "hw.vmm.vmx.vpid_alloc_failed": 0,
                }
            )
        else:
            tree.update(
                {
                    "hw.vmm.svm.features": 0x1EBFF if up else 0,
                    "hw.vmm.svm.num_asids": 32768 if up else 0,
                    "hw.vmm.svm.disable_npf_assist": 0,
                    "hw.vmm.svm.vmcb_clean": 1023,
                }
            )
    if "if_bridge.ko" in hw.klds:
        tree["net.link.bridge.pfil_member"] = 1
        tree["net.link.bridge.pfil_bridge"] = 1
    tree["net.link.tap.up_on_open"] = 0
    tree["net.inet.ip.forwarding"] = 0
    for name, value in hw.sysctl.items():
        if value is None:
            tree.pop(name, None)
        else:
            tree[name] = value
    return tree
