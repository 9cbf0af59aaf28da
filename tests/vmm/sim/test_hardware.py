from __future__ import annotations

import pytest

from supervisor.vmm.sim.hardware import AMD, Hardware, sysctl_tree


def test_intel_host_reports_vtx_capabilities() -> None:
    tree = sysctl_tree(Hardware(ncpu=4))
    assert tree["hw.vmm.vmx.initialized"] == 1
    assert tree["hw.vmm.vmx.cap.unrestricted_guest"] == 1
    assert tree["hw.vmm.maxcpu"] == 4
    assert tree["kern.osrelease"] == "15.0-RELEASE"
    assert not any(k.startswith("hw.vmm.svm.") for k in tree)


def test_amd_host_reports_svm_and_no_vmx() -> None:
    tree = sysctl_tree(Hardware(cpu_vendor=AMD))
    assert tree["hw.vmm.svm.num_asids"] == 32768
    assert not any(k.startswith("hw.vmm.vmx.") for k in tree)


def test_without_vmm_there_is_no_hw_vmm_tree() -> None:
    tree = sysctl_tree(Hardware(klds=("nmdm.ko",)))
    assert not any(k.startswith("hw.vmm") for k in tree)


def test_vmm_without_vtx_is_loaded_but_not_initialised() -> None:
    hw = Hardware(virtualization=False)
    assert "vmm" not in hw.modules()
    assert sysctl_tree(hw)["hw.vmm.vmx.initialized"] == 0
    assert not hw.vmm_loaded


def test_unrestricted_guest_needs_ept() -> None:
    assert not Hardware(ept=False).has_unrestricted_guest
    assert sysctl_tree(Hardware(ept=False))["hw.vmm.vmx.cap.unrestricted_guest"] == 0


def test_sysctl_overrides_add_replace_and_remove() -> None:
    tree = sysctl_tree(Hardware(sysctl={"hw.vmm.maxcpu": 2, "hw.ncpu": None, "x.y": "z"}))
    assert tree["hw.vmm.maxcpu"] == 2
    assert "hw.ncpu" not in tree
    assert tree["x.y"] == "z"


def test_round_trips_through_its_file_form() -> None:
    hw = Hardware(freebsd="14.3", cpu_vendor=AMD, ncpu=3, sysctl={"a.b": 1})
    assert Hardware.from_json(hw.to_json()) == hw
    assert hw.major == 14


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"freebsd": "fifteen"}, "freebsd"),
        ({"cpu_vendor": "Cyrix"}, "cpu_vendor"),
        ({"ncpu": 0}, "ncpu"),
        ({"klds": ("nope.ko",)}, "klds"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Hardware(**kwargs)  # type: ignore[arg-type]
