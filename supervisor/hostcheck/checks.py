"""Pure host checks: probed facts in, one PASS/WARN/FAIL verdict per check out.

Theory of operation
===================

:func:`supervisor.hostcheck.probe.gather` runs the host's tools (sysctl, kldstat,
pciconf, pfctl, the boot messages) and fills a :class:`HostFacts`; :func:`evaluate`
reads nothing else. Every verdict other than PASS carries the fix in words a FreeBSD
administrator can act on (a loader.conf line, a kldload, the pf.conf lines to add).

The module tests use ``kldstat -q -m NAME``, which also finds drivers compiled into the
kernel (libvirt compares ``.ko`` file names and so warns falsely about them); a module
whose file is loaded but which did not initialise is told apart (vmm.ko on a CPU
without VT-x/AMD-V). FAIL means guests cannot run as defined; WARN means a feature
(passthrough, NAT, multi-vCPU guests) will not work until fixed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from supervisor._record import Record
from supervisor.vmm.hostparse import KldState, PciDevice, VmmSysctl, ppt_devices

__all__ = [
    "Check",
    "HostFacts",
    "Verdict",
    "evaluate",
    "exit_status",
    "overall",
    "pf_anchor_lines",
    "render",
]


class Verdict(enum.Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@attrs.frozen(repr=False)
class Check(Record):
    """One line of the report.

    Args:
        key: a stable identifier (``vmm``, ``ept``, ``pf-anchor``...).
        description: what is checked, after "Checking ".
        verdict: the result.
        detail: what was found (always set when known).
        fix: how to make it PASS (None when it passes).
    """

    key: str
    description: str
    verdict: Verdict
    detail: str | None = None
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "description": self.description,
            "result": self.verdict.value,
            "detail": self.detail,
            "fix": self.fix,
        }


@attrs.frozen(repr=False)
class HostFacts(Record):
    """What the probe found; None wherever a tool could not say.

    Args:
        ostype, osrelease: ``kern.ostype`` and ``kern.osrelease``.
        modules: module name → state from ``kldstat -q -m`` / ``-q -n``.
        vmm: the ``hw.vmm`` sysctl subtree.
        dmesg: ``/var/run/dmesg.boot``.
        pci: the PCI functions (``pciconf -lv``), None if it failed.
        forwarding: ``net.inet.ip.forwarding``.
        firewall: the configured NAT firewall (``pf`` or ``ipfw``).
        pf_anchor: the daemon's pf anchor.
        pf_main_rules: ``pfctl -sn`` and ``pfctl -sr`` of the main ruleset, None if
            not asked or pf is not there.
    """

    ostype: str | None
    osrelease: str | None = None
    modules: Mapping[str, KldState] = attrs.field(factory=dict)
    vmm: VmmSysctl = attrs.field(factory=lambda: VmmSysctl({}))
    dmesg: str | None = None
    pci: tuple[PciDevice, ...] | None = None
    forwarding: int | None = None
    firewall: str = "pf"
    pf_anchor: str = "bhyvesupd"
    pf_main_rules: tuple[str, ...] | None = None


_VTX_RE = re.compile(r"^\s*VT-x:\s*(\S.*)$", re.MULTILINE)
_SVM_RE = re.compile(r"^\s*SVM:\s*(\S.*)$", re.MULTILINE)
_FEATURES2_RE = re.compile(r"^\s*Features2=0x[0-9a-fA-F]+<([^>]*)>", re.MULTILINE)
_ORIGIN_RE = re.compile(r'Origin\s*=\s*"([^"]+)"')


def _dmesg_flags(regex: re.Pattern[str], dmesg: str | None) -> frozenset[str] | None:
    if dmesg is None:
        return None
    m = regex.search(dmesg)
    if m is None:
        return None
    return frozenset(f.strip().split("=")[0] for f in m.group(1).split(","))


def pf_anchor_lines(anchor: str) -> tuple[str, ...]:
    """The pf.conf lines that call the daemon's anchor (translation, then filter)."""
    return (
        f'nat-anchor "{anchor}/*"',
        f'rdr-anchor "{anchor}/*"',
        f'anchor "{anchor}/*"',
    )


def _vendor(facts: HostFacts) -> str | None:
    if facts.vmm.vendor is not None:
        return facts.vmm.vendor
    m = _ORIGIN_RE.search(facts.dmesg or "")
    if m is None:
        return None
    return {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(m.group(1))


def _module(facts: HostFacts, name: str, description: str, *, missing: Verdict, fix: str) -> Check:
    state = facts.modules.get(name)
    if state is KldState.LOADED:
        return Check(name, description, Verdict.PASS, "loaded")
    if state is None:
        return Check(name, description, Verdict.WARN, "kldstat could not tell", fix)
    if state is KldState.FILE_ONLY:
        return Check(
            name, description, missing, f"{name}.ko is loaded but its module did not start", fix
        )
    return Check(name, description, missing, "not loaded", fix)


def _virtualization(facts: HostFacts) -> list[Check]:
    vendor = _vendor(facts)
    vtx = _dmesg_flags(_VTX_RE, facts.dmesg)
    svm = _dmesg_flags(_SVM_RE, facts.dmesg)
    vmm_state = facts.modules.get("vmm")
    desc = "for hardware virtualization (VT-x or AMD-V)"
    out: list[Check] = []
    if vmm_state is KldState.FILE_ONLY:
        out.append(
            Check(
                "cpu-virt",
                desc,
                Verdict.FAIL,
                "vmm.ko loaded but the CPU lacks virtualization support (VT-x/AMD-V)",
                "enable VT-x/AMD-V (and VT-d/AMD-Vi) in the firmware setup; in a virtual "
                "machine, turn on nested virtualization",
            )
        )
        return out
    if vmm_state is KldState.LOADED or vtx is not None or svm is not None:
        found = "VT-x" if vendor == "intel" or vtx is not None else "AMD-V"
        out.append(Check("cpu-virt", desc, Verdict.PASS, found))
    else:
        out.append(
            Check(
                "cpu-virt",
                desc,
                Verdict.WARN,
                "no VT-x or SVM line in the boot messages and vmm is not loaded",
                "load vmm (kldload vmm) to let it probe the CPU",
            )
        )
        return out
    desc_np = "for nested paging (Intel EPT / AMD RVI)"
    if vendor == "amd":
        features = facts.vmm.get("svm.features")
        np_ok: bool | None
        if features is not None:
            try:
                np_ok = bool(int(features, 0) & 1)
            except ValueError:
                np_ok = None
        else:
            np_ok = None if svm is None else "NP" in svm
        if np_ok is None:
            out.append(Check("ept", desc_np, Verdict.WARN, "hw.vmm.svm.features unknown"))
        elif np_ok:
            out.append(Check("ept", desc_np, Verdict.PASS, "RVI (NP)"))
        else:
            out.append(
                Check(
                    "ept", desc_np, Verdict.FAIL, "the CPU has no RVI (nested paging)",
                    "bhyve needs an AMD CPU with RVI (Barcelona or later)",
                )
            )  # fmt: skip
        out.append(
            Check(
                "unrestricted-guest",
                "for unrestricted guest (UEFI, SMP, non-FreeBSD guests)",
                Verdict.PASS,
                "AMD-V has no such restriction",
            )
        )
        return out
    initialized = facts.vmm.initialized
    ept = initialized if initialized is not None else (None if vtx is None else "EPT" in vtx)
    if ept is None:
        out.append(Check("ept", desc_np, Verdict.WARN, "hw.vmm.vmx.initialized unknown"))
    elif ept:
        out.append(Check("ept", desc_np, Verdict.PASS, "EPT"))
    else:
        out.append(
            Check(
                "ept",
                desc_np,
                Verdict.FAIL,
                "VT-x without EPT: vmm cannot start (hw.vmm.vmx.initialized=0)",
                "bhyve needs an Intel CPU with EPT (Nehalem or later)",
            )
        )
    ug = facts.vmm.unrestricted_guest
    if ug is None and vtx is not None:
        ug = "UG" in vtx
    desc_ug = "for unrestricted guest (UEFI, SMP, non-FreeBSD guests)"
    if ug:
        out.append(Check("unrestricted-guest", desc_ug, Verdict.PASS, "yes"))
    else:
        out.append(
            Check(
                "unrestricted-guest",
                desc_ug,
                Verdict.WARN,
                "no unrestricted guest: only single-vCPU FreeBSD guests booted by bhyveload",
                "use a Westmere or later Intel CPU",
            )
        )
    return out


def _popcnt(facts: HostFacts) -> Check:
    desc = "for POPCNT"
    flags = _dmesg_flags(_FEATURES2_RE, facts.dmesg)
    if flags is None:
        return Check("popcnt", desc, Verdict.WARN, "no Features2 line in /var/run/dmesg.boot")
    if "POPCNT" in flags:
        return Check("popcnt", desc, Verdict.PASS, "yes")
    return Check(
        "popcnt",
        desc,
        Verdict.WARN,
        "the CPU does not report POPCNT (older than the EPT generation)",
        "use a CPU with POPCNT and EPT (Nehalem or later)",
    )


def _vmm_state(facts: HostFacts) -> Check:
    desc = "for vmm limits (hw.vmm.maxcpu)"
    maxcpu = facts.vmm.maxcpu
    if maxcpu is None:
        return Check(
            "hw.vmm",
            desc,
            Verdict.FAIL if facts.modules.get("vmm") is not KldState.LOADED else Verdict.WARN,
            "hw.vmm.maxcpu is not set",
            'load vmm (vmm_load="YES" in /boot/loader.conf)',
        )
    return Check("hw.vmm", desc, Verdict.PASS, f"guests may have up to {maxcpu} vCPUs")


def _iommu(facts: HostFacts) -> Check:
    desc = "for an IOMMU (PCI passthrough)"
    dmesg = facts.dmesg or ""
    vendor = _vendor(facts)
    enabled = facts.vmm.iommu_enabled
    if enabled is False:
        return Check(
            "iommu",
            desc,
            Verdict.WARN,
            "hw.vmm.iommu.enable=0: passthrough is off",
            'set hw.vmm.iommu.enable="1" in /boot/loader.conf',
        )
    if vendor == "amd":
        amdvi = facts.vmm.get("amdvi.enable")
        if "AMD-Vi" in dmesg or "ivhd" in dmesg:
            if amdvi is not None and amdvi.strip() == "0":
                return Check(
                    "iommu",
                    desc,
                    Verdict.WARN,
                    "AMD-Vi present but hw.vmm.amdvi.enable=0",
                    'set hw.vmm.amdvi.enable="1" in /boot/loader.conf',
                )
            return Check("iommu", desc, Verdict.PASS, "AMD-Vi")
    elif re.search(r"^dmar\d+: ", dmesg, re.MULTILINE):
        return Check("iommu", desc, Verdict.PASS, "Intel VT-d (DMAR)")
    return Check(
        "iommu",
        desc,
        Verdict.WARN,
        "no VT-d/AMD-Vi found in the boot messages",
        "enable VT-d/AMD-Vi in the firmware setup (passthrough needs it)",
    )


def _ppt(facts: HostFacts) -> Check:
    desc = "for devices claimed by ppt"
    if facts.pci is None:
        return Check("ppt", desc, Verdict.WARN, "pciconf -lv failed")
    held = ppt_devices(facts.pci)
    if not held:
        return Check(
            "ppt",
            desc,
            Verdict.PASS,
            'none (reserve with pptdevs="B/S/F" in /boot/loader.conf, or '
            "devctl set driver -f pciD:B:S:F ppt)",
        )
    return Check(
        "ppt",
        desc,
        Verdict.PASS,
        ", ".join(f"{d.name} {d.selector}" + (f" ({d.device})" if d.device else "") for d in held),
    )


def _firewall(facts: HostFacts) -> list[Check]:
    if facts.firewall == "ipfw":
        return [
            _module(
                facts,
                "ipfw",
                "if module ipfw is loaded (NAT networks)",
                missing=Verdict.WARN,
                fix='firewall_enable="YES" and firewall_nat_enable="YES" in /etc/rc.conf',
            )
        ]
    out = [
        _module(
            facts,
            "pf",
            "if module pf is loaded (NAT networks)",
            missing=Verdict.WARN,
            fix='pf_enable="YES" in /etc/rc.conf (and kldload pf)',
        )
    ]
    if facts.modules.get("pf") is KldState.LOADED and facts.pf_main_rules is not None:
        wanted = pf_anchor_lines(facts.pf_anchor)
        present = {" ".join(line.split()) for line in facts.pf_main_rules}
        missing = [line for line in wanted if not any(p.startswith(line) for p in present)]
        desc = f'if pf.conf calls the anchor "{facts.pf_anchor}/*"'
        if missing:
            out.append(
                Check(
                    "pf-anchor",
                    desc,
                    Verdict.WARN,
                    f"the main ruleset lacks {len(missing)} anchor call(s)",
                    "add to /etc/pf.conf (translation anchors before filter rules) "
                    "and run pfctl -f /etc/pf.conf: " + "; ".join(missing),
                )
            )
        else:
            out.append(Check("pf-anchor", desc, Verdict.PASS, "called"))
    return out


def _forwarding(facts: HostFacts) -> Check:
    desc = "for IPv4 forwarding (NAT networks)"
    if facts.forwarding == 1:
        return Check("forwarding", desc, Verdict.PASS, "net.inet.ip.forwarding=1")
    return Check(
        "forwarding",
        desc,
        Verdict.WARN,
        f"net.inet.ip.forwarding={facts.forwarding if facts.forwarding is not None else '?'} "
        "(bhyvesupd turns it on when a NAT network starts)",
        'gateway_enable="YES" in /etc/rc.conf',
    )


def evaluate(facts: HostFacts) -> list[Check]:
    """Every check, in report order."""
    desc_host = "for a FreeBSD host"
    if facts.ostype != "FreeBSD":
        return [
            Check(
                "host",
                desc_host,
                Verdict.FAIL,
                f"kern.ostype is {facts.ostype!r}" if facts.ostype else "not a FreeBSD host",
                "bhyve runs on FreeBSD only",
            )
        ]
    checks = [Check("host", desc_host, Verdict.PASS, facts.osrelease or "FreeBSD")]
    checks += _virtualization(facts)
    checks.append(_popcnt(facts))
    checks.append(
        _module(
            facts,
            "vmm",
            "if module vmm is loaded",
            missing=Verdict.FAIL,
            fix='kldload vmm, and vmm_load="YES" in /boot/loader.conf',
        )
    )
    if checks[-1].detail and "did not start" in checks[-1].detail:
        checks[-1] = attrs.evolve(
            checks[-1],
            detail="vmm.ko loaded but the CPU lacks virtualization support (VT-x/AMD-V)",
            fix="enable VT-x/AMD-V in the firmware setup",
        )
    checks.append(_vmm_state(facts))
    checks.append(
        _module(
            facts,
            "nmdm",
            "if module nmdm is loaded (serial consoles)",
            missing=Verdict.FAIL,
            fix='kldload nmdm, and nmdm_load="YES" in /boot/loader.conf',
        )
    )
    checks.append(
        _module(
            facts,
            "if_bridge",
            "if module if_bridge is loaded (switches)",
            missing=Verdict.WARN,
            fix='if_bridge_load="YES" in /boot/loader.conf (ifconfig bridge create loads it too)',
        )
    )
    checks.append(
        _module(
            facts,
            "if_tuntap",
            "if module if_tuntap is loaded (guest NICs)",
            missing=Verdict.FAIL,
            fix='kldload if_tuntap, and if_tuntap_load="YES" in /boot/loader.conf',
        )
    )
    checks.append(_iommu(facts))
    checks.append(_ppt(facts))
    checks += _firewall(facts)
    checks.append(_forwarding(facts))
    return checks


def overall(checks: Sequence[Check]) -> Verdict:
    """FAIL if any check failed, else WARN if any warned, else PASS."""
    verdicts = {c.verdict for c in checks}
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if Verdict.WARN in verdicts:
        return Verdict.WARN
    return Verdict.PASS


def exit_status(checks: Sequence[Check]) -> int:
    """0 all passed, 1 something failed, 2 only warnings."""
    return {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.WARN: 2}[overall(checks)]


def render(checks: Sequence[Check]) -> str:
    """The report in virt-host-validate's layout."""
    lines = []
    for c in checks:
        line = f"{'BHYVE':>6}: Checking {c.description:<60}: {c.verdict.value}"
        if c.verdict is not Verdict.PASS:
            why = "; ".join(x for x in (c.detail, c.fix) if x)
            if why:
                line += f" ({why})"
        lines.append(line)
    return "\n".join(lines)
