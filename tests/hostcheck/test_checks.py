"""The pure host checks: facts in, verdicts and fixes out."""

from __future__ import annotations

import attrs

from supervisor.hostcheck import checks as hc
from supervisor.hostcheck.checks import HostFacts, Verdict
from supervisor.vmm.hostparse import KldState, VmmSysctl, parse_pciconf

INTEL_DMESG = """CPU: Intel(R) Xeon(R) CPU E5-2650 v4 @ 2.20GHz (2200.05-MHz K8-class CPU)
  Origin="GenuineIntel"  Id=0x406f1  Family=0x6  Model=0x4f  Stepping=1
  Features2=0x7ffefbff<SSE3,PCLMULQDQ,VMX,SSE4.2,POPCNT,AESNI>
  VT-x: PAT,HLT,MTF,PAUSE,EPT,UG,VPID,VID,PostIntr
dmar0: <DMA remap> iomem 0xfbffc000-0xfbffcfff on acpi0
"""

LOADED = dict.fromkeys(("vmm", "nmdm", "if_bridge", "if_tuntap", "pf"), KldState.LOADED)

VMM = VmmSysctl(
    {
        "hw.vmm.vmx.initialized": "1",
        "hw.vmm.vmx.cap.unrestricted_guest": "1",
        "hw.vmm.maxcpu": "8",
        "hw.vmm.iommu.enable": "1",
    }
)

PCI = parse_pciconf(
    "igb0@pci0:2:0:0:\tclass=0x020000 rev=0x03 hdr=0x00 vendor=0x8086 device=0x1533 "
    "subvendor=0x15d9 subdevice=0x1533\n"
    "ppt0@pci0:6:0:0:\tclass=0x020000 rev=0x01 hdr=0x00 vendor=0x8086 device=0x1521 "
    "subvendor=0x8086 subdevice=0x0001\n"
    "    device     = 'I350 Gigabit Network Connection'\n"
)

HEALTHY = HostFacts(
    ostype="FreeBSD",
    osrelease="15.0-RELEASE",
    modules=LOADED,
    vmm=VMM,
    dmesg=INTEL_DMESG,
    pci=tuple(PCI),
    forwarding=1,
    pf_main_rules=('nat-anchor "bhyvesupd/*" all', 'rdr-anchor "bhyvesupd/*" all',
                   'anchor "bhyvesupd/*" all'),
)  # fmt: skip


def by_key(checks: list[hc.Check]) -> dict[str, hc.Check]:
    return {c.key: c for c in checks}


def test_a_healthy_intel_host_passes_everything() -> None:
    checks = hc.evaluate(HEALTHY)
    assert [c for c in checks if c.verdict is not Verdict.PASS] == []
    assert hc.exit_status(checks) == 0
    assert "ppt0 pci0:6:0:0 (I350 Gigabit Network Connection)" in str(by_key(checks)["ppt"].detail)


def test_vmm_file_loaded_without_virtualization_is_named_as_such() -> None:
    facts = attrs.evolve(
        HEALTHY,
        modules={**LOADED, "vmm": KldState.FILE_ONLY},
        vmm=VmmSysctl({"hw.vmm.maxcpu": "8"}),
        dmesg=INTEL_DMESG.replace("  VT-x: PAT,HLT,MTF,PAUSE,EPT,UG,VPID,VID,PostIntr\n", ""),
    )
    checks = by_key(hc.evaluate(facts))
    assert checks["cpu-virt"].verdict is Verdict.FAIL
    assert checks["vmm"].detail == (
        "vmm.ko loaded but the CPU lacks virtualization support (VT-x/AMD-V)"
    )
    assert "vmm missing" not in str(checks["vmm"].detail)
    assert hc.exit_status(list(checks.values())) == 1


def test_vmm_absent_fails_with_the_loader_conf_line() -> None:
    facts = attrs.evolve(HEALTHY, modules={**LOADED, "vmm": KldState.ABSENT}, vmm=VmmSysctl({}))
    checks = by_key(hc.evaluate(facts))
    assert checks["vmm"].verdict is Verdict.FAIL
    assert 'vmm_load="YES" in /boot/loader.conf' in str(checks["vmm"].fix)


def test_without_ept_or_unrestricted_guest() -> None:
    no_ug = attrs.evolve(
        HEALTHY,
        vmm=VmmSysctl({**VMM.values, "hw.vmm.vmx.cap.unrestricted_guest": "0"}),
    )
    checks = by_key(hc.evaluate(no_ug))
    assert checks["unrestricted-guest"].verdict is Verdict.WARN
    assert hc.exit_status(list(checks.values())) == 2
    no_ept = attrs.evolve(HEALTHY, vmm=VmmSysctl({**VMM.values, "hw.vmm.vmx.initialized": "0"}))
    assert by_key(hc.evaluate(no_ept))["ept"].verdict is Verdict.FAIL


def test_an_amd_host_uses_svm_and_needs_no_unrestricted_guest() -> None:
    facts = attrs.evolve(
        HEALTHY,
        vmm=VmmSysctl({"hw.vmm.svm.features": "125951", "hw.vmm.maxcpu": "16",
                       "hw.vmm.amdvi.enable": "1", "hw.vmm.iommu.enable": "1"}),
        dmesg='  Origin="AuthenticAMD"\n  Features2=0x1<POPCNT>\n  SVM: NP,NRIP\n'
        "AMD-Vi: IVRS Info VAsize = 64\n",
    )  # fmt: skip
    checks = by_key(hc.evaluate(facts))
    assert checks["cpu-virt"].detail == "AMD-V"
    assert checks["ept"].detail == "RVI (NP)"
    assert checks["unrestricted-guest"].verdict is Verdict.PASS
    assert checks["iommu"].detail == "AMD-Vi"


def test_a_compiled_in_tuntap_is_not_reported_missing() -> None:
    # kldstat -q -m finds modules built into the kernel: the facts say LOADED with no
    # if_tuntap.ko in sight, and the check passes (libvirt's .ko comparison would warn).
    assert by_key(hc.evaluate(HEALTHY))["if_tuntap"].verdict is Verdict.PASS


def test_pf_conf_without_the_anchor_calls_gets_the_exact_lines() -> None:
    facts = attrs.evolve(HEALTHY, pf_main_rules=("pass all",))
    check = by_key(hc.evaluate(facts))["pf-anchor"]
    assert check.verdict is Verdict.WARN
    for line in ('nat-anchor "bhyvesupd/*"', 'rdr-anchor "bhyvesupd/*"', 'anchor "bhyvesupd/*"'):
        assert line in str(check.fix)


def test_not_freebsd_is_one_failure() -> None:
    checks = hc.evaluate(HostFacts(ostype=None))
    assert [(c.key, c.verdict) for c in checks] == [("host", Verdict.FAIL)]


def test_render_follows_virt_host_validate() -> None:
    facts = attrs.evolve(HEALTHY, modules={**LOADED, "nmdm": KldState.ABSENT})
    text = hc.render(hc.evaluate(facts))
    line = next(x for x in text.splitlines() if "nmdm" in x)
    assert line.startswith(" BHYVE: Checking if module nmdm is loaded")
    assert ": FAIL (not loaded; kldload nmdm" in line
    assert text.splitlines()[0].endswith(": PASS")
