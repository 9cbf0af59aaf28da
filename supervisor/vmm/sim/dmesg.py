"""``/var/run/dmesg.boot`` of a simulated host: the boot messages host checks read.

The CPU block follows FreeBSD 14/15 on a normal (not verbose) boot: ``Origin="..."``,
``Features2=...<...,POPCNT,...>``, then ``VT-x: PAT,HLT,MTF,PAUSE,EPT,UG,...`` on Intel
or ``SVM: NP,NRIP,...`` on AMD; a CPU without virtualization prints neither. The IOMMU
attaches as ``dmar0`` (Intel VT-d) or reports ``AMD-Vi:`` (AMD).
"""

from __future__ import annotations

from supervisor.vmm.sim.hardware import INTEL, Hardware

_FEATURES2_INTEL = (
    "0x7ffefbff<SSE3,PCLMULQDQ,DTES64,MON,DS_CPL,VMX,SMX,EST,TM2,SSSE3,SDBG,FMA,CX16,"
    "xTPR,PDCM,PCID,DCA,SSE4.1,SSE4.2,x2APIC,MOVBE,POPCNT,TSCDLT,AESNI,XSAVE,OSXSAVE,AVX,"
    "F16C,RDRAND>"
)
_FEATURES2_AMD = (
    "0x7ed8320b<SSE3,PCLMULQDQ,MON,SSSE3,FMA,CX16,SSE4.1,SSE4.2,MOVBE,POPCNT,AESNI,XSAVE,"
    "OSXSAVE,AVX,F16C,RDRAND>"
)


def dmesg_boot(hw: Hardware) -> str:
    """The boot messages of *hw*."""
    intel = hw.cpu_vendor == INTEL
    model = (
        "Intel(R) Xeon(R) CPU E5-2650 v4 @ 2.20GHz (2200.05-MHz K8-class CPU)"
        if intel
        else "AMD EPYC 7302P 16-Core Processor (3000.12-MHz K8-class CPU)"
    )
    lines = [
        "---<<BOOT>>---",
        "Copyright (c) 1992-2025 The FreeBSD Project.",
        f"FreeBSD {hw.freebsd}-RELEASE GENERIC amd64",
        f"CPU: {model}",
        f'  Origin="{hw.cpu_vendor}"  Id=0x406f1  Family=0x6  Model=0x4f  Stepping=1'
        if intel
        else f'  Origin="{hw.cpu_vendor}"  Id=0x830f10  Family=0x17  Model=0x31  Stepping=0',
        "  Features=0xbfebfbff<FPU,VME,DE,PSE,TSC,MSR,PAE,MCE,CX8,APIC,SEP,MTRR,PGE,MCA,"
        "CMOV,PAT,PSE36,CLFLUSH,DTS,ACPI,MMX,FXSR,SSE,SSE2,SS,HTT,TM,PBE>",
        f"  Features2={_FEATURES2_INTEL if intel else _FEATURES2_AMD}",
        "  AMD Features=0x2c100800<SYSCALL,NX,Page1GB,RDTSCP,LM>",
    ]
    if hw.virtualization and intel:
        flags = ["PAT", "HLT", "MTF", "PAUSE"]
        if hw.ept:
            flags.append("EPT")
            if hw.unrestricted_guest:
                flags.append("UG")
        flags += ["VPID", "VID", "PostIntr"]
        lines.append(f"  VT-x: {','.join(flags)}")
    elif hw.virtualization:
        lines.append("  SVM: NP,NRIP,VClean,AFlush,DAssist,NAsids=32768")
    lines.append(f"real memory  = {hw.physmem} ({hw.physmem // 1024**2} MB)")
    lines.append(f"FreeBSD/SMP: Multiprocessor System Detected: {hw.ncpu} CPUs")
    if intel:
        lines.append("dmar0: <DMA remap> iomem 0xfbffc000-0xfbffcfff on acpi0")
    else:
        lines.append("AMD-Vi: IVRS Info VAsize = 64 PAsize = 48 GVAsize = 2 flags:0")
    return "\n".join(lines) + "\n"
