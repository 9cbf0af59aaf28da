"""The guest image builder's pure parts: module order, ldd output, package names."""

from __future__ import annotations

import pytest

from supervisor.vmm.sim import guestimage
from supervisor.vmm.sim.guestimage import GuestImageError

DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/acpi/button.ko:
"""


def test_modules_load_after_what_they_depend_on_and_once() -> None:
    order = guestimage.module_order(DEP, ["virtio_blk", "virtio-net", "button"])
    assert order == [
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/net/core/failover.ko",
        "kernel/drivers/net/net_failover.ko",
        "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/acpi/button.ko",
    ]


def test_a_module_missing_from_the_kernel_is_named() -> None:
    with pytest.raises(GuestImageError, match="'evdev' is not in linux-image-cloud-amd64"):
        guestimage.module_order(DEP, ["evdev"])


def test_ldd_output_gives_every_library_and_the_loader() -> None:
    text = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibglib-2.0.so.0 => /lib/x86_64-linux-gnu/libglib-2.0.so.0 (0x00007f01)\n"
        "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n"
    )
    assert guestimage.parse_ldd(text) == [
        "/lib/x86_64-linux-gnu/libglib-2.0.so.0",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]


def test_a_library_ldd_cannot_find_is_named() -> None:
    with pytest.raises(GuestImageError, match=r"libudev\.so\.1"):
        guestimage.parse_ldd("\tlibudev.so.1 => not found\n")


def test_the_versioned_kernel_package_is_read_from_the_metapackage() -> None:
    text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-50-cloud-amd64\n"
    assert guestimage.kernel_package_name(text) == "linux-image-6.1.0-50-cloud-amd64"
    with pytest.raises(GuestImageError, match="no linux-image package"):
        guestimage.kernel_package_name("linux-image-cloud-amd64\n  Depends: foo\n")


def test_rc_loads_modules_in_order_and_starts_the_agent_on_its_port() -> None:
    rc = guestimage.rc_script(["a/virtio.ko", "b/virtio_console.ko"])
    assert rc.index("insmod /lib/modules/a/virtio.ko") < rc.index("b/virtio_console.ko")
    assert "-p /dev/virtio-ports/org.qemu.guest_agent.0" in rc
    assert rc.rstrip().endswith(f'echo "{guestimage.BANNER}: Linux $(uname -r)"')


def test_a_missing_tool_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guestimage, "_have_tool", lambda tool: tool != "cpio")
    with pytest.raises(GuestImageError, match=r"cpio is not installed \(Debian package cpio\)"):
        guestimage.build()
    monkeypatch.setattr(guestimage, "_have_tool", lambda tool: tool != "apt-get")
    with pytest.raises(GuestImageError, match=r"apt-get is not installed \(Debian package apt\)"):
        guestimage.build()


def test_a_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guestimage, "_have_tool", lambda tool: True)
    monkeypatch.setattr(guestimage, "AGENT_PATH", "/nonexistent/qemu-ga")
    with pytest.raises(GuestImageError, match="qemu-guest-agent is not installed"):
        guestimage.build()
