"""A sans-IO QMP (QEMU Machine Protocol) client core, and what QEMU's stop reasons mean to bhyve.

Theory of operation
-------------------

QMP is line-delimited JSON over a stream. QEMU speaks first with a greeting
(``{"QMP": {...}}``); the client must send ``qmp_capabilities`` before any other
command. Every command may carry an ``id`` that its reply (``{"return": ...}`` or
``{"error": {"class", "desc"}}``) echoes; events (``{"event": NAME, "data": ...}``)
arrive between replies at any time.

:class:`QmpSession` holds no socket: :meth:`QmpSession.command` returns the bytes to
send, :meth:`QmpSession.feed` takes received bytes and returns what they completed
(:class:`Greeting`, :class:`Reply`, :class:`Event`). The I/O glue
(:mod:`supervisor.vmm.sim.qemurun`) moves the bytes.

bhyve's exit contract comes from QEMU's ``SHUTDOWN`` event: QEMU runs with
``-action reboot=shutdown,shutdown=pause``, so a guest reset and a guest power-off
both stop the machine and report why (``data.reason``), which :func:`suspend_for`
maps onto bhyve's suspend reasons (``reset`` exits 0, ``poweroff`` 1).
"""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Mapping
from typing import Any

import attrs

from supervisor._record import Record
from supervisor.errors import SupervisorError


class QmpProtocolError(SupervisorError):
    """QEMU sent something that is not QMP."""


@attrs.frozen(repr=False)
class Greeting(Record):
    """QEMU's first message: its version and offered capabilities."""

    version: str
    capabilities: tuple[str, ...]


@attrs.frozen(repr=False)
class Reply(Record):
    """The answer to the command with this *id*: a value, or an error."""

    id: int
    value: Any = None
    error_class: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_class is None


@attrs.frozen(repr=False)
class Event(Record):
    """An asynchronous event (``SHUTDOWN``, ``POWERDOWN``, ``STOP``...)."""

    name: str
    data: dict[str, Any] = attrs.field(factory=dict)


Message = Greeting | Reply | Event

#: QEMU's ShutdownCause values and the bhyve suspend reason each stands for.
SHUTDOWN_SUSPEND: dict[str, str] = {
    # The guest reset itself (reboot; also a triple fault, which QEMU reports the same
    # way: see triple_faulted).
    "guest-reset": "reset",
    "host-qmp-system-reset": "reset",
    # The guest powered off through ACPI S5 (after a power button press or on its own).
    "guest-shutdown": "poweroff",
    "host-qmp-quit": "poweroff",
    "host-signal": "poweroff",
    "host-ui": "poweroff",
}


def suspend_for(reason: str) -> str | None:
    """The bhyve suspend reason for a ``SHUTDOWN`` event's *reason*, if it maps."""
    return SHUTDOWN_SUSPEND.get(reason)


#: What QEMU's x86 TCG code logs (``-d cpu_reset``) just before it requests the reset
#: that a triple fault causes; the ``SHUTDOWN`` event that follows says only
#: ``guest-reset``.
TRIPLE_FAULT_LOG = "Triple fault"


def triple_faulted(reset_log: str) -> bool:
    """Whether QEMU's CPU-reset log *reset_log* records a triple fault.

    The log is rewritten at each QEMU start and the engine's QEMU ends at its first
    reset (``-action reboot=shutdown``), so any such line is that reset's cause.
    """
    return any(line.strip() == TRIPLE_FAULT_LOG for line in reset_log.splitlines())


def rtc_seconds(tm: Mapping[str, Any]) -> int:
    """The RTC reading of ``qom-get /machine rtc-time`` (a ``struct tm``) as seconds.

    The RTC holds a wall time without a zone; the seconds are that wall time counted
    as if it were UTC, the way bhyve's ``--get-rtc-time`` counts it.

    Raises:
        QmpProtocolError: a field is missing or not a number.
    """
    try:
        return calendar.timegm(
            (
                1900 + int(tm["tm_year"]),
                1 + int(tm["tm_mon"]),
                int(tm["tm_mday"]),
                int(tm["tm_hour"]),
                int(tm["tm_min"]),
                int(tm["tm_sec"]),
                0,
                0,
                0,
            )
        )
    except (KeyError, TypeError, ValueError) as e:
        raise QmpProtocolError(f"QMP: rtc-time: not a struct tm: {dict(tm)!r}") from e


_IF = 0x200  # EFLAGS.IF


def halted_for_good(info_registers: str) -> bool:
    """Whether HMP ``info registers -a`` shows every vCPU halted with interrupts off.

    That is bhyve's ``VM_SUSPEND_HALT``: a vCPU that executes ``hlt`` with interrupts
    disabled can never wake, and when all have, bhyve exits 2. An idle guest halts
    with interrupts on (``sti; hlt``) and is not halted for good. QEMU raises no event
    for this, so the runner asks.
    """
    cpus = 0
    for line in info_registers.splitlines():
        if "HLT=" not in line or "RFL=" not in line:
            continue
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        try:
            rflags = int(fields["RFL"], 16)
        except (KeyError, ValueError):
            return False
        if fields.get("HLT") != "1" or rflags & _IF:
            return False
        cpus += 1
    return cpus > 0


class QmpSession:
    """One QMP conversation, without I/O."""

    def __init__(self) -> None:
        self._buffer = b""
        self._next_id = 1
        self.greeted = False
        self.version = ""

    def command(self, name: str, arguments: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """The id and wire bytes of command *name* with *arguments*."""
        ident = self._next_id
        self._next_id += 1
        msg: dict[str, Any] = {"execute": name, "id": ident}
        if arguments:
            msg["arguments"] = arguments
        return ident, json.dumps(msg, separators=(",", ":")).encode() + b"\n"

    def feed(self, data: bytes) -> list[Message]:
        """Take received *data*; return the messages it completed, in order.

        Raises:
            QmpProtocolError: a line is not a QMP message.
        """
        self._buffer += data
        out: list[Message] = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            line = line.strip()
            if line:
                out.append(self._parse(line))
        return out

    def _parse(self, line: bytes) -> Message:
        try:
            msg = json.loads(line)
        except ValueError:
            raise QmpProtocolError(f"QMP: not JSON: {line[:200]!r}") from None
        if not isinstance(msg, dict):
            raise QmpProtocolError(f"QMP: not an object: {line[:200]!r}")
        if "QMP" in msg:
            info = msg["QMP"]
            qemu = info.get("version", {}).get("qemu", {})
            self.version = f"{qemu.get('major', 0)}.{qemu.get('minor', 0)}.{qemu.get('micro', 0)}"
            self.greeted = True
            return Greeting(self.version, tuple(info.get("capabilities", ())))
        if "event" in msg:
            return Event(str(msg["event"]), dict(msg.get("data") or {}))
        ident = msg.get("id")
        if not isinstance(ident, int):
            raise QmpProtocolError(f"QMP: reply without a numeric id: {line[:200]!r}")
        if "error" in msg:
            err = msg["error"] or {}
            return Reply(ident, None, str(err.get("class", "GenericError")), str(err.get("desc")))
        if "return" in msg:
            return Reply(ident, msg["return"])
        raise QmpProtocolError(f"QMP: unknown message: {line[:200]!r}")


# -- setting QEMU's RTC ----------------------------------------------------------------
#
# QMP has no command that sets the emulated MC146818's time (rtc-time is read-only and
# -rtc base= applies at start only), but HMP's ioport commands reach the chip the way a
# guest's hwclock -w does: index port 0x70, data port 0x71. Setting register B's SET
# bit stops the chip's updates while the time registers are written; clearing it makes
# QEMU take the new time. The registers hold BCD unless register B's DM bit says binary.

RTC_INDEX_PORT = 0x70
RTC_DATA_PORT = 0x71
RTC_REG_B = 0x0B
RTC_B_SET = 0x80
RTC_B_BINARY = 0x04
RTC_B_24H = 0x02
#: QEMU's PC machines keep the century in CMOS register 0x32.
RTC_REG_CENTURY = 0x32


def rtc_read_reg_b() -> list[str]:
    """HMP commands whose last reply is register B (see :func:`parse_port_read`)."""
    return [f"o /b {RTC_INDEX_PORT:#x} {RTC_REG_B:#x}", f"i /b {RTC_DATA_PORT:#x}"]


def parse_port_read(text: str) -> int:
    """The value of an HMP ``i`` reply (``portb[0x0071] = 0x02``).

    Raises:
        QmpProtocolError: the reply is not that.
    """
    _, sep, value = text.strip().partition("=")
    try:
        number = int(value.strip(), 16)
    except ValueError:
        number = -1
    if not sep or number < 0:
        raise QmpProtocolError(f"not an ioport read: {text!r}")
    return number


def rtc_set_commands(seconds: int, reg_b: int) -> list[str]:
    """HMP commands that set QEMU's RTC to read *seconds* (wall time counted as UTC,
    as :func:`rtc_seconds` counts it), for a chip whose register B is *reg_b*."""
    t = time.gmtime(seconds)
    binary = bool(reg_b & RTC_B_BINARY)

    def enc(v: int) -> int:
        return v if binary else (v // 10) * 16 + v % 10

    if reg_b & RTC_B_24H:
        hour = enc(t.tm_hour)
    else:  # 12-hour mode: 12, 1..11, with bit 7 for PM
        hour = enc(t.tm_hour % 12 or 12) | (0x80 if t.tm_hour >= 12 else 0)
    regs = [
        (0x00, enc(t.tm_sec)),
        (0x02, enc(t.tm_min)),
        (0x04, hour),
        (0x06, (t.tm_wday + 1) % 7 + 1),  # Sunday is 1; tm_wday counts from Monday = 0
        (0x07, enc(t.tm_mday)),
        (0x08, enc(t.tm_mon)),
        (0x09, enc(t.tm_year % 100)),
        (RTC_REG_CENTURY, enc(t.tm_year // 100)),
    ]
    out: list[str] = []
    for reg, value in [(RTC_REG_B, reg_b | RTC_B_SET), *regs, (RTC_REG_B, reg_b & ~RTC_B_SET)]:
        out += [f"o /b {RTC_INDEX_PORT:#x} {reg:#x}", f"o /b {RTC_DATA_PORT:#x} {value:#x}"]
    return out
