"""The sans-IO QMP core and the mapping of QEMU stop reasons onto bhyve's."""

from __future__ import annotations

import json

import pytest

from supervisor.vmm.sim import qmp
from supervisor.vmm.sim.qmp import Event, Greeting, QmpProtocolError, QmpSession, Reply

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""},'
    b' "capabilities": ["oob"]}}\r\n'
)


def test_greeting_reply_and_event_split_across_reads() -> None:
    s = QmpSession()
    ident, wire = s.command("inject-nmi")
    assert json.loads(wire) == {"execute": "inject-nmi", "id": ident}
    assert wire.endswith(b"\n")
    data = GREETING + b'{"return": {}, "id": %d}\r\n' % ident
    data += b'{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-reset"}}\r\n'
    out = s.feed(data[:30]) + s.feed(data[30:101]) + s.feed(data[101:])
    assert out == [
        Greeting("7.2.22", ("oob",)),
        Reply(ident, {}),
        Event("SHUTDOWN", {"guest": True, "reason": "guest-reset"}),
    ]
    assert s.greeted


def test_each_command_gets_its_own_id_and_errors_are_kept() -> None:
    s = QmpSession()
    a, _ = s.command("qmp_capabilities")
    b, wire = s.command("human-monitor-command", {"command-line": "info"})
    assert a != b
    assert json.loads(wire)["arguments"] == {"command-line": "info"}
    (reply,) = s.feed(b'{"id": %d, "error": {"class": "CommandNotFound", "desc": "no"}}\n' % b)
    assert isinstance(reply, Reply)
    assert not reply.ok
    assert (reply.error_class, reply.error) == ("CommandNotFound", "no")


@pytest.mark.parametrize("line", [b"garbage\n", b"[1]\n", b'{"return": 1}\n', b'{"id": 1}\n'])
def test_what_is_not_qmp_is_refused(line: bytes) -> None:
    with pytest.raises(QmpProtocolError, match="QMP"):
        QmpSession().feed(line)


@pytest.mark.parametrize(
    ("reason", "how"),
    [
        ("guest-reset", "reset"),
        ("host-qmp-system-reset", "reset"),
        ("guest-shutdown", "poweroff"),
        ("host-qmp-quit", "poweroff"),
        ("guest-panic", None),
    ],
)
def test_shutdown_reasons_map_onto_bhyve_suspend_reasons(reason: str, how: str | None) -> None:
    assert qmp.suspend_for(reason) == how


def test_a_triple_fault_is_told_from_a_reset_by_qemus_reset_log() -> None:
    # What -d cpu_reset writes: a CPU state dump per reset, and the line before the
    # reset request when the reset is a triple fault's.
    dump = "CPU Reset (CPU 0)\nEAX=00000000 EBX=00000000\nEFL=00000002 [-------]\n"
    assert not qmp.triple_faulted(dump + dump)
    assert qmp.triple_faulted(dump + "Triple fault\n" + dump)
    assert not qmp.triple_faulted("")


def test_the_rtc_struct_tm_reads_as_seconds_of_wall_time() -> None:
    tm = {"tm_year": 130, "tm_mon": 0, "tm_mday": 2, "tm_hour": 3, "tm_min": 4, "tm_sec": 5}
    assert qmp.rtc_seconds(tm) == 1893553445  # 2030-01-02T03:04:05 counted as UTC
    with pytest.raises(QmpProtocolError, match="rtc-time"):
        qmp.rtc_seconds({"tm_year": 130})


IDLE = "CPU#0\nRAX=0\nRIP=ffffffff8580dfeb RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n"
DEAD = "CPU#0\nRIP=ffffffff8580dfeb RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n"
BUSY = "CPU#1\nRIP=ffffffff8580dfeb RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\n"


def test_halted_for_good_needs_every_vcpu_halted_with_interrupts_off() -> None:
    assert qmp.halted_for_good(DEAD)
    assert qmp.halted_for_good(DEAD + DEAD.replace("CPU#0", "CPU#1"))
    assert not qmp.halted_for_good(IDLE)  # sti; hlt: an idle guest
    assert not qmp.halted_for_good(DEAD + BUSY)  # one vCPU still runs
    assert not qmp.halted_for_good("")


def test_setting_the_rtc_writes_the_chip_through_its_ports_bcd_or_binary() -> None:
    assert qmp.rtc_read_reg_b() == ["o /b 0x70 0xb", "i /b 0x71"]
    assert qmp.parse_port_read("portb[0x0071] = 0x02\r\n") == 2
    with pytest.raises(qmp.QmpProtocolError, match="not an ioport read"):
        qmp.parse_port_read("unknown command: 'i'")
    # 2031-05-06 19:08:09 UTC, a Tuesday (the chip's day 3).
    seconds = 1935860889
    bcd = qmp.rtc_set_commands(seconds, 0x02)
    pairs = [
        (int(bcd[i].split()[-1], 16), int(bcd[i + 1].split()[-1], 16))
        for i in range(0, len(bcd), 2)
    ]
    assert pairs[0] == (0x0B, 0x82)  # SET first: the chip stops updating
    assert dict(pairs[1:-1]) == {
        0x00: 0x09, 0x02: 0x08, 0x04: 0x19, 0x06: 3, 0x07: 0x06, 0x08: 0x05, 0x09: 0x31, 0x32: 0x20,
    }  # fmt: skip
    assert pairs[-1] == (0x0B, 0x02)  # SET cleared last: QEMU takes the new time
    assert all(c.startswith(("o /b 0x70 ", "o /b 0x71 ")) for c in bcd)
    binary12 = qmp.rtc_set_commands(seconds, 0x04)
    regs = {
        int(binary12[i].split()[-1], 16): int(binary12[i + 1].split()[-1], 16)
        for i in range(0, len(binary12), 2)
    }
    assert regs[0x04] == 0x80 | 7  # 7 pm in 12-hour mode
    assert regs[0x09] == 31
    assert regs[0x32] == 20
