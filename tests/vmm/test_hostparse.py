"""kldstat, sysctl and pciconf output, in every layout real hosts print."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from supervisor.errors import HostToolError, InvalidValueError
from supervisor.host import Host
from supervisor.vmm import hostparse as hp
from supervisor.vmm.hostparse import KldFile, KldState
from supervisor.vmm.sim import install

# --------------------------------------------------------------------------- kldstat

KLDSTAT_12 = (
    "Id Refs Address                Size Name\n"
    " 1   58 0xffffffff80200000  1f3e2d0 kernel\n"
    " 2    1 0xffffffff82140000   5e6b08 zfs.ko\n"
    " 3    1 0xffffffff8273e000     5ee8 vmm.ko\n"
    "10    1 0xffffffff82a21000     3250 nmdm.ko\n"
)

# Before 12.0 the size column was left-aligned under its heading.
KLDSTAT_11 = (
    "Id Refs Address            Size     Name\n"
    " 1   52 0xffffffff80200000 1f3c6c0  kernel\n"
    " 2    1 0xffffffff82021000 3c5e8    vmm.ko\n"
)

KLDSTAT_VERBOSE = (
    "Id Refs Address                Size Name\n"
    " 1   23 0xffffffff80200000  1f3e2d0 kernel (/boot/kernel/kernel)\n"
    "\tContains modules:\n"
    "\t\t Id Name\n"
    "\t\t  1 io\n"
    "\t\t  2 if_bridge\n"
    " 3    1 0xffffffff8273e000     5ee8 vmm.ko (/boot/kernel/vmm.ko)\n"
    "\tContains modules:\n"
    "\t\t Id Name\n"
    "\t\t 45 vmm\n"
)


def test_kldstat_current_layout() -> None:
    files = hp.parse_kldstat(KLDSTAT_12)
    assert files[0] == KldFile(1, 58, 0xFFFFFFFF80200000, 0x1F3E2D0, "kernel")
    assert [(f.id, f.name, f.size) for f in files[1:]] == [
        (2, "zfs.ko", 0x5E6B08),
        (3, "vmm.ko", 0x5EE8),
        (10, "nmdm.ko", 0x3250),
    ]


def test_kldstat_pre_12_layout() -> None:
    assert hp.parse_kldstat(KLDSTAT_11) == [
        KldFile(1, 52, 0xFFFFFFFF80200000, 0x1F3C6C0, "kernel"),
        KldFile(2, 1, 0xFFFFFFFF82021000, 0x3C5E8, "vmm.ko"),
    ]


def test_kldstat_verbose_lists_modules_per_file() -> None:
    kernel, vmm = hp.parse_kldstat(KLDSTAT_VERBOSE)
    assert (kernel.name, kernel.modules) == ("kernel", ("io", "if_bridge"))
    assert (vmm.name, vmm.modules, vmm.size) == ("vmm.ko", ("vmm",), 0x5EE8)


def test_kldstat_human_sizes_are_not_guessed() -> None:
    text = "Id Refs Address                Size Name\n 3    1 0xffffffff8273e000    23.9K vmm.ko\n"
    [vmm] = hp.parse_kldstat(text)
    assert (vmm.name, vmm.size) == ("vmm.ko", None)


@pytest.mark.parametrize("text", ["", "kldstat: can't find file vmm\n", KLDSTAT_12 + "garbage\n"])
def test_kldstat_refuses_other_text(text: str) -> None:
    with pytest.raises(HostToolError, match="kldstat: unexpected output"):
        hp.parse_kldstat(text)


def test_kldstat_argv() -> None:
    assert hp.kldstat_module_argv("vmm") == ["kldstat", "-q", "-m", "vmm"]
    assert hp.kldstat_file_argv("vmm.ko") == ["kldstat", "-q", "-n", "vmm.ko"]
    assert hp.kldstat_argv(verbose=True) == ["kldstat", "-v"]
    with pytest.raises(InvalidValueError, match="module: not a valid name"):
        hp.kldstat_module_argv("-v")


@pytest.mark.parametrize(
    ("module", "file", "state"),
    [
        (0, None, KldState.LOADED),
        (0, 1, KldState.LOADED),  # compiled into the kernel: no file, module present
        (1, 0, KldState.FILE_ONLY),
        (1, 1, KldState.ABSENT),
        (1, None, KldState.ABSENT),
    ],
)
def test_kld_state_from_exit_statuses(module: int, file: int | None, state: KldState) -> None:
    assert hp.kld_state(module, file) is state


def test_kld_state_sentences() -> None:
    assert hp.describe_kld_state("vmm", KldState.FILE_ONLY) == (
        "vmm.ko loaded but the CPU lacks virtualization support (VT-x/AMD-V)"
    )
    assert "not loaded" in hp.describe_kld_state("nmdm", KldState.ABSENT)
    assert "nmdm_load" in hp.describe_kld_state("nmdm", KldState.ABSENT)
    assert hp.describe_kld_state("if_bridge", KldState.FILE_ONLY) == (
        "if_bridge.ko loaded but its module did not initialise"
    )


# --------------------------------------------------------------------------- sysctl

HW_VMM_INTEL = (
    "hw.vmm.vmx.cap.posted_interrupts: 1\n"
    "hw.vmm.vmx.cap.unrestricted_guest: 1\n"
    "hw.vmm.vmx.cap.halt_exit: 1\n"
    "hw.vmm.vmx.initialized: 1\n"
    "hw.vmm.iommu.enable: 1\n"
    "hw.vmm.ppt.devices: 2\n"
    "hw.vmm.maxcpu: 16\n"
    "hw.vmm.halt_detection: 1\n"
)

HW_VMM_AMD = (
    "hw.vmm.svm.features: 4294967295\n"
    "hw.vmm.svm.num_asids: 32768\n"
    "hw.vmm.svm.disable_npf_assist: 0\n"
    "hw.vmm.maxcpu: 32\n"
)


def test_sysctl_lines() -> None:
    text = "hw.vmm.maxcpu: 16\nkern.ostype: FreeBSD\nkern.version: FreeBSD 14.1-RELEASE\n\n"
    assert hp.parse_sysctl(text) == {
        "hw.vmm.maxcpu": "16",
        "kern.ostype": "FreeBSD",
        "kern.version": "FreeBSD 14.1-RELEASE",
    }


def test_sysctl_equals_form_and_empty_values() -> None:
    assert hp.parse_sysctl("net.link.tap.up_on_open=1\nkern.hostuuid=\n") == {
        "net.link.tap.up_on_open": "1",
        "kern.hostuuid": "",
    }
    assert hp.parse_sysctl("dev.em.0.%desc: Intel(R) PRO/1000: x\n") == {
        "dev.em.0.%desc": "Intel(R) PRO/1000: x"
    }


def test_sysctl_multi_line_values() -> None:
    text = (
        "kern.geom.conftxt: \n0 DISK ada0 256060514304 512\n1 PART ada0p1 524288 512\n"
        "kern.ostype: FreeBSD\n"
    )
    values = hp.parse_sysctl(text)
    conftxt = "\n0 DISK ada0 256060514304 512\n1 PART ada0p1 524288 512"
    assert values["kern.geom.conftxt"] == conftxt
    assert values["kern.ostype"] == "FreeBSD"


def test_sysctl_output_must_start_with_a_name() -> None:
    with pytest.raises(HostToolError, match="sysctl: unexpected output"):
        hp.parse_sysctl("usage: sysctl [-bdehiNnoqTtWx]\n")


def test_sysctl_values_one_per_name() -> None:
    names = ["hw.vmm.maxcpu", "hw.vmm.vmx.initialized"]
    assert hp.parse_sysctl_values("16\n1\n", names) == dict(zip(names, ["16", "1"], strict=True))
    with pytest.raises(HostToolError, match="expected 2 value"):
        hp.parse_sysctl_values("16\n", names)


def test_unknown_oids_from_stderr() -> None:
    stderr = (
        "sysctl: unknown oid 'hw.vmm.vmx.initialized'\n"
        "sysctl: unknown oid 'hw.vmm.x': No such file\n"
    )
    assert hp.unknown_oids(stderr) == ["hw.vmm.vmx.initialized", "hw.vmm.x"]
    assert hp.unknown_oids("") == []


def test_sysctl_argv() -> None:
    assert hp.sysctl_argv("hw.vmm.maxcpu") == ["sysctl", "-n", "hw.vmm.maxcpu"]
    assert hp.sysctl_argv("hw.vmm", values_only=False) == ["sysctl", "hw.vmm"]
    with pytest.raises(InvalidValueError, match="at least one"):
        hp.sysctl_argv()


def test_hw_vmm_on_intel() -> None:
    vmm = hp.parse_vmm_sysctl(HW_VMM_INTEL + "kern.ostype: FreeBSD\n")
    assert vmm.vendor == "intel"
    assert vmm.initialized is True
    assert vmm.unrestricted_guest is True
    assert (vmm.maxcpu, vmm.ppt_devices, vmm.iommu_enabled) == (16, 2, True)
    assert vmm.get("vmx.cap.halt_exit") == "1"
    assert "kern.ostype" not in vmm.values


def test_hw_vmm_without_unrestricted_guest() -> None:
    vmm = hp.parse_vmm_sysctl(
        HW_VMM_INTEL.replace("unrestricted_guest: 1", "unrestricted_guest: 0")
    )
    assert vmm.unrestricted_guest is False


def test_hw_vmm_on_amd_and_without_vmm() -> None:
    amd = hp.parse_vmm_sysctl(HW_VMM_AMD)
    assert amd.vendor == "amd"
    assert amd.unrestricted_guest is True
    assert amd.initialized is None
    assert amd.maxcpu == 32
    none = hp.parse_vmm_sysctl("")
    assert (none.vendor, none.maxcpu, none.unrestricted_guest) == (None, None, None)


# --------------------------------------------------------------------------- pciconf

PCICONF_13 = (
    "hostb0@pci0:0:0:0:\tclass=0x060000 rev=0x07 hdr=0x00 "
    "vendor=0x8086 device=0x3e30 subvendor=0x15d9 subdevice=0x1b2e\n"
    "    vendor     = 'Intel Corporation'\n"
    "    device     = '8th Gen Core 8-core Desktop Processor Host Bridge/DRAM Registers'\n"
    "    class      = bridge\n"
    "    subclass   = HOST-PCI\n"
    "ppt0@pci0:2:0:0:\tclass=0x020000 rev=0x03 hdr=0x00 "
    "vendor=0x8086 device=0x1533 subvendor=0x15d9 subdevice=0x1533\n"
    "    vendor     = 'Intel Corporation'\n"
    "    device     = 'I210 Gigabit Network Connection'\n"
    "    class      = network\n"
    "    subclass   = ethernet\n"
    "    cap 01[40] = powerspec 3  supports D0 D3  current D0\n"
    "none3@pci0:0:31:3:\tclass=0x0c0500 rev=0x05 hdr=0x00 "
    "vendor=0x8086 device=0xa123 subvendor=0x15d9 subdevice=0x1b2e\n"
    "    vendor     = 'Intel Corporation'\n"
    "    class      = serial bus\n"
    "    subclass   = SMBus\n"
)

# Pasted output: spaces instead of the TAB, two-digit bus and function numbers.
PCICONF_PASTED = (
    "ppt1@pci0:37:0:0:       class=0x030000 rev=0xa1 hdr=0x00 "
    "vendor=0x10de device=0x1eb8 subvendor=0x10de subdevice=0x12a2\n"
    "igb10@pci0:1:0:17:      class=0x020000 rev=0x01 hdr=0x00 "
    "vendor=0x8086 device=0x1521 subvendor=0x8086 subdevice=0x0001\n"
)

# Before 13.0.
PCICONF_12 = (
    "em0@pci0:0:25:0:\tclass=0x020000 card=0x20528086 chip=0x15028086 rev=0x04 hdr=0x00\n"
    "    vendor     = 'Intel Corporation'\n"
    "    device     = '82579LM Gigabit Network Connection'\n"
    "    class      = network\n"
    "    subclass   = ethernet\n"
    "ppt0@pci0:2:0:0:\tcard=0x153315d9 chip=0x15338086 rev=0x03 hdr=0x00\n"
)


def test_pciconf_current_layout_verbose() -> None:
    host, ppt, smbus = hp.parse_pciconf(PCICONF_13)
    assert (host.name, host.driver, host.selector, host.class_code) == (
        "hostb0",
        "hostb",
        "pci0:0:0:0",
        0x060000,
    )
    assert (ppt.name, ppt.is_ppt, ppt.bsf) == ("ppt0", True, "2/0/0")
    assert (ppt.vendor_id, ppt.device_id, ppt.subvendor_id, ppt.subdevice_id) == (
        0x8086,
        0x1533,
        0x15D9,
        0x1533,
    )
    assert (ppt.revision, ppt.header) == (3, 0)
    assert (ppt.vendor, ppt.device, ppt.class_name, ppt.subclass) == (
        "Intel Corporation",
        "I210 Gigabit Network Connection",
        "network",
        "ethernet",
    )
    assert (smbus.driver, smbus.name, smbus.unit) == (None, "none3", 3)
    assert (smbus.bus, smbus.slot, smbus.function, smbus.device) == (0, 31, 3, None)
    assert smbus.class_name == "serial bus"


def test_pciconf_pasted_spaces_and_two_digit_numbers() -> None:
    gpu, nic = hp.parse_pciconf(PCICONF_PASTED)
    assert (gpu.name, gpu.bus, gpu.selector, gpu.vendor_id) == ("ppt1", 37, "pci0:37:0:0", 0x10DE)
    assert (nic.driver, nic.unit, nic.function, nic.bsf) == ("igb", 10, 17, "1/0/17")
    assert hp.ppt_devices([nic, gpu]) == [gpu]


def test_pciconf_pre_13_layout() -> None:
    em, ppt = hp.parse_pciconf(PCICONF_12)
    assert (em.vendor_id, em.device_id, em.subvendor_id, em.subdevice_id) == (
        0x8086,
        0x1502,
        0x8086,
        0x2052,
    )
    assert em.class_code == 0x020000
    assert em.device == "82579LM Gigabit Network Connection"
    assert (ppt.vendor_id, ppt.device_id, ppt.subvendor_id, ppt.subdevice_id) == (
        0x8086,
        0x1533,
        0x15D9,
        0x1533,
    )
    assert ppt.class_code is None
    assert ppt.vendor is None


@pytest.mark.parametrize(
    "text",
    [
        "pciconf: /dev/pci: Permission denied\n",
        "ppt0@pci0:2:0:0:\trev=0x03 hdr=0x00\n",
        "ppt0@pci0:2:0:\tclass=0x020000 vendor=0x8086 device=0x1533\n",
    ],
)
def test_pciconf_refuses_other_text(text: str) -> None:
    with pytest.raises(HostToolError, match="pciconf"):
        hp.parse_pciconf(text)


def test_pciconf_argv() -> None:
    assert hp.pciconf_argv() == ["pciconf", "-lv"]
    assert hp.pciconf_argv(verbose=False) == ["pciconf", "-l"]


# --------------------------------------------------------------------------- the simulated host


def _run(host: Host, argv: list[str]) -> tuple[int, str, str]:
    done = subprocess.run(
        [host.tool(argv[0]), *argv[1:]], capture_output=True, text=True, check=False, timeout=30
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    ("virtualization", "vmm_loaded", "state"),
    [
        (True, True, KldState.LOADED),
        (False, True, KldState.FILE_ONLY),
        (True, False, KldState.ABSENT),
    ],
)
def test_the_simulated_host_reads_as_a_real_one(
    tmp_path: Path, virtualization: bool, vmm_loaded: bool, state: KldState
) -> None:
    host = install(str(tmp_path), virtualization=virtualization, vmm_loaded=vmm_loaded)
    module, _, _ = _run(host, hp.kldstat_module_argv("vmm"))
    file, _, _ = _run(host, hp.kldstat_file_argv("vmm"))
    assert hp.kld_state(module, file) is state
    status, out, _ = _run(host, hp.kldstat_argv())
    assert status == 0
    names = [f.name for f in hp.parse_kldstat(out)]
    assert names[0] == "kernel"
    assert ("vmm.ko" in names) is vmm_loaded
    if state is KldState.LOADED:
        status, out, err = _run(host, hp.sysctl_argv("hw.vmm", values_only=False))
        assert status == 0, err
        vmm = hp.parse_vmm_sysctl(out)
        assert vmm.vendor == "intel"
        assert vmm.unrestricted_guest is True
        assert vmm.maxcpu == 8
