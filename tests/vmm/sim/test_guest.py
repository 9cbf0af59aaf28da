from __future__ import annotations

import pytest

from supervisor.vmm.sim.guest import (
    Abort,
    EnableAcpi,
    Guest,
    Output,
    StartTimer,
    Suspend,
    WriteDisk,
    WriteMemory,
)


def text(actions: list[object]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Output))


def test_boot_prints_banner_prompt_and_signature() -> None:
    actions = Guest("web1", 3).boot()
    assert WriteMemory(0x1000, b"BHYVESIM:web1:3") in actions
    assert text(actions) == b"BHYVESIM guest web1 boot 3\r\nweb1# "
    assert StartTimer(0.2, "acpi") in actions


def test_a_guest_without_acpi_never_asks_for_it() -> None:
    assert not any(isinstance(a, StartTimer) for a in Guest("x", 1, acpi_delay=None).boot())


def test_acpi_is_enabled_by_its_timer() -> None:
    g = Guest("x", 1)
    assert not g.acpi_enabled
    assert g.on_timer("acpi") == [EnableAcpi()]
    assert g.acpi_enabled


@pytest.mark.parametrize(
    ("command", "how"),
    [
        (b"reboot", "reset"),
        (b"poweroff", "poweroff"),
        (b"halt", "halt"),
        (b"triple-fault", "triplefault"),
    ],
)
def test_stop_commands_suspend_the_vm(command: bytes, how: str) -> None:
    g = Guest("x", 1)
    actions = g.on_input(command + b"\r")
    assert actions[-1] == Suspend(how)
    assert g.on_input(b"echo still here\r") == []


def test_abort_and_write_disk() -> None:
    assert Guest("x", 1).on_input(b"abort\n")[-1] == Abort()
    g = Guest("x", 1)
    assert g.on_input(b"write-disk 8\r")[-1] == WriteDisk(8)
    assert text(g.on_disk_written("wrote 8 KiB to /d")) == b"wrote 8 KiB to /d\r\nx# "
    assert b"usage: write-disk" in text(g.on_input(b"write-disk lots\r"))


def test_line_editing_echo_and_crlf() -> None:
    g = Guest("x", 1)
    out = text(g.on_input(b"echp\x7fo hi\r\n"))
    assert out == b"echp\b \bo hi\r\nhi\r\nx# "
    assert text(g.on_input(b"nope\r")) == b"nope\r\nsh: nope: not found\r\nx# "
    assert text(g.on_input(b"\r")) == b"\r\nx# "


def test_input_split_across_reads_makes_one_command() -> None:
    g = Guest("x", 1)
    g.on_input(b"ec")
    assert text(g.on_input(b"ho split\r")).endswith(b"split\r\nx# ")


def test_power_button_obeyed_then_poweroff_after_a_delay() -> None:
    g = Guest("x", 1)
    actions = g.on_power_button()
    assert b"shutting down" in text(actions)
    timer = next(a for a in actions if isinstance(a, StartTimer))
    assert g.on_timer(timer.token) == [Suspend("poweroff")]


def test_power_button_ignored_on_request() -> None:
    g = Guest("x", 1)
    assert b"ignored" in text(g.on_input(b"ignore-acpi\r"))
    assert g.on_power_button() == []
    g.on_input(b"obey-acpi\r")
    assert g.on_power_button() != []


def test_nmi_is_reported_on_the_console() -> None:
    assert text(Guest("x", 1).on_nmi(2)) == b"\r\nNMI received on vcpu 2\r\nx# "


def test_spin_keeps_a_vcpu_busy() -> None:
    from supervisor.vmm.sim.guest import Spin

    g = Guest("x", 1)
    g.boot()
    assert g.on_input(b"spin 1 0.25\r")[-1] == Spin(1, 0.25)
    assert text(g.on_spin_started("vcpu 1 busy for 0.25 s")) == b"vcpu 1 busy for 0.25 s\r\nx# "
    for bad in (b"spin\r", b"spin x 1\r", b"spin 0 0\r", b"spin 0 6\r", b"spin 0 lots\r"):
        assert b"usage: spin" in text(g.on_input(bad))
