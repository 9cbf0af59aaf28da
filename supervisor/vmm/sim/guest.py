"""The scripted guest the simulated bhyve runs: a sans-IO state machine.

The guest speaks on com1. It prints a banner naming the VM and its boot number
(kept by the simulated kernel, so it counts bhyve restarts of one VM), then a
login-free prompt ``NAME# `` and obeys a few commands::

    reboot         reset            → bhyve exits 0
    poweroff       ACPI S5          → bhyve exits 1
    halt           halt             → bhyve exits 2
    triple-fault   triple fault     → bhyve exits 3
    abort          an unhandled VM exit → bhyve aborts (SIGABRT)
    ignore-acpi    ignore the power button from now on
    obey-acpi      obey it again (the default)
    "write-disk N read-disk N spin N SECS 9p-tags echo TEXT help"
    echo TEXT      print TEXT
    help           list the commands

Shortly after its banner the guest enables ACPI; only from then on is SIGTERM to
bhyve a power-button press (before, it kills bhyve, as on FreeBSD). A press makes an
obedient guest print a shutdown line and power off after a short delay.

:class:`Guest` takes events (boot, console bytes, timer expiries, the power button,
an NMI) and returns :data:`Action` values for the bhyve process to carry out; it does
no I/O and reads no clock, so it is tested without processes.
"""

from __future__ import annotations

import attrs

from supervisor._record import Record
from supervisor.vmm.sim.agent import Agent

#: Seconds from the banner until the guest enables ACPI (writes ACPI_ENABLE to SMI_CMD).
ACPI_DELAY = 0.2
#: Seconds from an obeyed power-button press until the guest powers off.
SHUTDOWN_DELAY = 0.1
#: Where the guest leaves its signature in guest-physical memory.
SIGNATURE_GPA = 0x1000
#: The longest console line the guest keeps; the rest is dropped.
MAX_LINE = 4096


@attrs.frozen(repr=False)
class Output(Record):
    """Write *data* to the console."""

    data: bytes


@attrs.frozen(repr=False)
class StartTimer(Record):
    """Call :meth:`Guest.on_timer` with *token* after *delay* seconds."""

    delay: float
    token: str


@attrs.frozen(repr=False)
class EnableAcpi(Record):
    """The guest enabled ACPI: SIGTERM is now the power button. Its APs are started."""


@attrs.frozen(repr=False)
class Suspend(Record):
    """The guest stops every vCPU for *how*: ``reset``, ``poweroff``, ``halt``, ``triplefault``."""

    how: str


@attrs.frozen(repr=False)
class Abort(Record):
    """A VM exit bhyve cannot handle: it calls abort()."""


@attrs.frozen(repr=False)
class WriteMemory(Record):
    """Store *data* at guest-physical address *gpa*."""

    gpa: int
    data: bytes


@attrs.frozen(repr=False)
class WriteDisk(Record):
    """Write *kib* KiB to the first disk; report with :meth:`Guest.on_disk_written`.
    With *read*, read them instead."""

    kib: int
    read: bool = False


@attrs.frozen(repr=False)
class Spin(Record):
    """Keep vCPU *vcpu* busy for *seconds*; report with :meth:`Guest.on_spin_started`."""

    vcpu: int
    seconds: float


#: The longest ``spin`` a guest accepts, in seconds.
MAX_SPIN = 5.0

Action = Output | StartTimer | EnableAcpi | Suspend | Abort | WriteMemory | WriteDisk | Spin

_HELP = (
    "commands: reboot poweroff halt triple-fault abort ignore-acpi obey-acpi "
    "write-disk N read-disk N spin N SECS 9p-tags echo TEXT help"
)

_STOPS = {
    "reboot": ("Rebooting...", "reset"),
    "poweroff": ("Powering off...", "poweroff"),
    "halt": ("Halted.", "halt"),
    "triple-fault": ("Triple fault.", "triplefault"),
}


def _line(text: str) -> bytes:
    # A serial console wants CR LF; the tty is raw, so nothing translates for us.
    return text.encode() + b"\r\n"


class Guest:
    """The scripted guest of one boot of VM *name*.

    Args:
        name: the VM name.
        boot: which boot of this VM this is (1 for the first).
        acpi_delay: seconds from the banner until ACPI is enabled; ``None`` for a guest
            that never enables it (a boot loader, a non-ACPI OS).
    """

    def __init__(
        self,
        name: str,
        boot: int,
        *,
        acpi_delay: float | None = ACPI_DELAY,
        shares: tuple[tuple[str, bool], ...] = (),
    ) -> None:
        self.name = name
        #: The virtio-9p shares: (mount tag, read-only).
        self.shares = shares
        #: The guest agent (answers only when bhyve has its virtio-console port).
        self.agent = Agent()
        self.acpi_delay = acpi_delay
        self.boot_number = boot
        self.acpi_enabled = False
        self.obey_acpi = True
        self.stopped = False
        self._pending = bytearray()
        self._after_cr = False

    @property
    def prompt(self) -> bytes:
        """What the guest prints when it waits for a command."""
        return f"{self.name}# ".encode()

    @property
    def signature(self) -> bytes:
        """What the guest stores at :data:`SIGNATURE_GPA`."""
        return f"BHYVESIM:{self.name}:{self.boot_number}".encode()

    def boot(self) -> list[Action]:
        """The guest starts."""
        actions: list[Action] = [
            WriteMemory(SIGNATURE_GPA, self.signature),
            Output(_line(f"BHYVESIM guest {self.name} boot {self.boot_number}") + self.prompt),
        ]
        if self.acpi_delay is not None:
            actions.append(StartTimer(self.acpi_delay, "acpi"))
        return actions

    def on_timer(self, token: str) -> list[Action]:
        """A timer the guest started has expired."""
        if self.stopped:
            return []
        if token == "acpi":
            self.acpi_enabled = True
            return [EnableAcpi()]
        if token == "shutdown":
            return self._stop("poweroff")
        return []

    def on_power_button(self) -> list[Action]:
        """The ACPI power button was pressed (SIGTERM to bhyve after ACPI was enabled)."""
        if self.stopped or not self.obey_acpi:
            return []
        return [
            Output(b"\r\n" + _line("ACPI power button pressed: shutting down")),
            StartTimer(SHUTDOWN_DELAY, "shutdown"),
        ]

    def on_nmi(self, vcpu: int) -> list[Action]:
        """An NMI was injected into *vcpu*."""
        if self.stopped:
            return []
        return [Output(b"\r\n" + _line(f"NMI received on vcpu {vcpu}") + self.prompt)]

    def on_disk_written(self, message: str) -> list[Action]:
        """bhyve carried out a :class:`WriteDisk`; *message* says how it went."""
        return [Output(_line(message) + self.prompt)]

    def on_spin_started(self, message: str) -> list[Action]:
        """bhyve handed a :class:`Spin` to the vCPU (or could not); *message* says which."""
        return [Output(_line(message) + self.prompt)]

    def on_input(self, data: bytes) -> list[Action]:
        """Bytes typed on the console."""
        if self.stopped:
            return []
        actions: list[Action] = []
        echo = bytearray()
        for byte in data:
            after_cr, self._after_cr = self._after_cr, byte == 0x0D
            if byte in (0x0D, 0x0A):
                if byte == 0x0A and after_cr:
                    continue  # CR LF ends one line, not two
                echo += b"\r\n"
                line = self._pending.decode(errors="replace").strip()
                self._pending.clear()
                actions.append(Output(bytes(echo)))
                echo.clear()
                done = self._command(line)
                actions.extend(done)
                if any(isinstance(a, Suspend | Abort) for a in done):
                    return actions  # the guest is gone: the rest is never read
            elif byte in (0x08, 0x7F):
                if self._pending:
                    self._pending.pop()
                    echo += b"\b \b"
            elif len(self._pending) < MAX_LINE:
                self._pending.append(byte)
                echo.append(byte)
        if echo:
            actions.append(Output(bytes(echo)))
        return actions

    def _stop(self, how: str) -> list[Action]:
        self.stopped = True
        return [Suspend(how)]

    def _command(self, line: str) -> list[Action]:
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if not word:
            return [Output(self.prompt)]
        if word in _STOPS:
            text, how = _STOPS[word]
            return [Output(_line(text)), *self._stop(how)]
        if word == "abort":
            self.stopped = True
            return [Abort()]
        if word == "ignore-acpi":
            self.obey_acpi = False
            return [Output(_line("ACPI power button will be ignored") + self.prompt)]
        if word == "obey-acpi":
            self.obey_acpi = True
            return [Output(_line("ACPI power button will be obeyed") + self.prompt)]
        if word in ("write-disk", "read-disk"):
            if not rest.isdigit() or int(rest) == 0:
                return [Output(_line(f"usage: {word} N (KiB, N > 0)") + self.prompt)]
            if word == "read-disk":
                return [WriteDisk(int(rest), read=True)]
            if self.agent.frozen:
                return [Output(_line("write-disk: filesystem is frozen") + self.prompt)]
            return [WriteDisk(int(rest))]
        if word == "spin":
            vcpu, _, secs = rest.partition(" ")
            try:
                seconds = float(secs)
            except ValueError:
                seconds = -1.0
            if not vcpu.isdigit() or not 0 < seconds <= MAX_SPIN:
                return [Output(_line("usage: spin VCPU SECONDS (0 < SECONDS <= 5)") + self.prompt)]
            return [Spin(int(vcpu), seconds)]
        if word == "9p-tags":
            lines = b"".join(
                _line(f"{tag}{' (ro)' if ro else ''}") for tag, ro in self.shares
            ) or _line("no 9p shares")
            return [Output(lines + self.prompt)]
        if word == "echo":
            return [Output(_line(rest) + self.prompt)]
        if word == "help":
            return [Output(_line(_HELP) + self.prompt)]
        return [Output(_line(f"sh: {word}: not found") + self.prompt)]
