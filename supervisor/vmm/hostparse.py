"""What kldstat(8), sysctl(8) and pciconf(8) print, parsed into typed values.

Pure functions over captured text, with the argv that produces it (argv[0] is the tool
name; the caller maps it with :meth:`supervisor.host.Host.tool`). They accept every
layout real hosts are known to print (the facts sheet, §13), not only the current one:

- kldstat's default listing changed at 12.0 (the size column became right-aligned);
  splitting on blanks reads both. ``-v`` adds "Contains modules" blocks, read too.
- ``kldstat -q -m NAME`` answers "did the *module* initialise", ``-q -n NAME`` "is the
  *file* loaded". vmm.ko loads on a CPU without VT-x/AMD-V but its module does not
  initialise: host validation must say so rather than "vmm missing"
  (:func:`kld_state`).
- ``sysctl NAME`` prints ``name: value`` lines (``name=value`` with ``-e``); a value may
  run over several lines. ``sysctl -n`` prints values alone.
- ``pciconf -l[v]`` has a pre-13.0 layout (``card= chip= rev= hdr=``) and the current one
  (``class= rev= hdr= vendor= device= subvendor= subdevice=``); a TAB follows the selector
  (pasted output often shows spaces); bus, slot and function may have two digits; devices
  without a driver are ``noneN@``, devices held for passthrough ``pptN@``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

import attrs

from supervisor._record import Record
from supervisor.errors import HostToolError, InvalidValueError

__all__ = [
    "KldFile",
    "KldState",
    "PciDevice",
    "VmmSysctl",
    "describe_kld_state",
    "kld_state",
    "kldstat_argv",
    "kldstat_file_argv",
    "kldstat_module_argv",
    "parse_kldstat",
    "parse_pciconf",
    "parse_sysctl",
    "parse_sysctl_values",
    "parse_vmm_sysctl",
    "pciconf_argv",
    "ppt_devices",
    "sysctl_argv",
    "unknown_oids",
]


def _unexpected(tool: str, text: str) -> HostToolError:
    shown = text if len(text) <= 200 else text[:200] + "..."
    return HostToolError(f"{tool}: unexpected output {shown!r}")


def _name(what: str, value: str) -> str:
    if not value or any(c.isspace() for c in value) or value.startswith("-"):
        raise InvalidValueError(f"{what}: not a valid name, got {value!r}", field=what)
    return value


# --------------------------------------------------------------------------- kldstat


def kldstat_argv(*, verbose: bool = False) -> list[str]:
    """``kldstat`` (``-v`` adds the modules each file contains)."""
    return ["kldstat", "-v"] if verbose else ["kldstat"]


def kldstat_module_argv(module: str) -> list[str]:
    """``kldstat -q -m MODULE``: exit 0 iff the module is present and initialised."""
    return ["kldstat", "-q", "-m", _name("module", module)]


def kldstat_file_argv(file: str) -> list[str]:
    """``kldstat -q -n FILE``: exit 0 iff the file (``vmm`` or ``vmm.ko``) is loaded."""
    return ["kldstat", "-q", "-n", _name("file", file)]


@attrs.frozen(repr=False)
class KldFile(Record):
    """One loaded kernel file.

    Args:
        id: the file id.
        refs: its reference count.
        address: its load address.
        size: its size in bytes (None if printed human-readable with ``-h``).
        name: the file name (``kernel``, ``vmm.ko``).
        modules: the modules it contains (with ``-v`` only).
    """

    id: int
    refs: int
    address: int
    size: int | None
    name: str
    modules: tuple[str, ...] = ()


_KLD_ROW_RE: Final = re.compile(
    r"\s*(\d+)\s+(\d+)\s+(0x[0-9a-fA-F]+)\s+(\S+)\s+(\S+)(?:\s+\(.*\))?\s*"
)
_KLD_MODULE_RE: Final = re.compile(r"\s+(\d+)\s+(\S+)\s*")


def parse_kldstat(text: str) -> list[KldFile]:
    """The files of a ``kldstat`` or ``kldstat -v`` listing, either layout.

    Raises:
        HostToolError: the text is not such a listing.
    """
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines or lines[0].split()[:3] != ["Id", "Refs", "Address"]:
        raise _unexpected("kldstat", text)
    files: list[KldFile] = []
    modules: list[str] = []

    def flush() -> None:
        if files and modules:
            files[-1] = attrs.evolve(files[-1], modules=tuple(modules))
        modules.clear()

    for line in lines[1:]:
        stripped = line.strip()
        if stripped == "Contains modules:" or stripped.split() == ["Id", "Name"]:
            continue
        if line.startswith("\t") and (m := _KLD_MODULE_RE.fullmatch(line)):
            modules.append(m.group(2))
            continue
        m = _KLD_ROW_RE.fullmatch(line)
        if m is None:
            raise _unexpected("kldstat", line)
        flush()
        size_text = m.group(4)
        size = int(size_text, 16) if re.fullmatch(r"[0-9a-fA-F]+", size_text) else None
        files.append(
            KldFile(int(m.group(1)), int(m.group(2)), int(m.group(3), 16), size, m.group(5))
        )
    flush()
    return files


class KldState(enum.Enum):
    """What ``kldstat -q -m`` and ``kldstat -q -n`` together say about a module."""

    #: The module is present and initialised (compiled in or loaded).
    LOADED = "loaded"
    #: Its file is loaded but the module did not initialise (vmm on a CPU without
    #: VT-x/AMD-V, or with them disabled in the firmware).
    FILE_ONLY = "file-only"
    #: Neither the module nor its file is there.
    ABSENT = "absent"


def kld_state(module_status: int, file_status: int | None = None) -> KldState:
    """Interpret the exit statuses of ``kldstat -q -m NAME`` and ``kldstat -q -n NAME``.

    Args:
        module_status: exit status of ``kldstat -q -m NAME``.
        file_status: exit status of ``kldstat -q -n NAME`` (None if not asked; only
            needed when the module is missing).
    """
    if module_status == 0:
        return KldState.LOADED
    if file_status == 0:
        return KldState.FILE_ONLY
    return KldState.ABSENT


def describe_kld_state(module: str, state: KldState) -> str:
    """One sentence for a host check report (``vmm.ko loaded but ...``)."""
    if state is KldState.LOADED:
        return f"{module}: loaded"
    if state is KldState.FILE_ONLY:
        if module == "vmm":
            return "vmm.ko loaded but the CPU lacks virtualization support (VT-x/AMD-V)"
        return f"{module}.ko loaded but its module did not initialise"
    return f'{module}: not loaded (kldload {module}, or {module}_load="YES" in loader.conf)'


# --------------------------------------------------------------------------- sysctl


def sysctl_argv(*names: str, values_only: bool = True) -> list[str]:
    """``sysctl -n NAME...`` (or ``sysctl NAME...`` for ``name: value`` lines)."""
    if not names:
        raise InvalidValueError("names: give at least one sysctl name", field="names")
    checked = [_name("name", n) for n in names]
    return ["sysctl", "-n", *checked] if values_only else ["sysctl", *checked]


_SYSCTL_LINE_RE: Final = re.compile(r"([A-Za-z0-9_%.-]+)(: |:$|=)(.*)")


def parse_sysctl(text: str) -> dict[str, str]:
    """``name: value`` (or ``-e`` ``name=value``) lines as a dict; order kept.

    A line that does not start a new name continues the previous value (multi-line
    values such as ``kern.geom.conftxt``).

    Raises:
        HostToolError: the text does not start with a name.
    """
    out: dict[str, str] = {}
    last: str | None = None
    for line in text.split("\n"):
        m = _SYSCTL_LINE_RE.fullmatch(line)
        if m is not None and "." in m.group(1):
            last = m.group(1)
            out[last] = m.group(3)
        elif last is not None:
            out[last] += "\n" + line
        elif line:
            raise _unexpected("sysctl", line)
    if last is not None:
        out[last] = out[last].rstrip("\n")
    return out


def parse_sysctl_values(text: str, names: Sequence[str]) -> dict[str, str]:
    """The output of ``sysctl -n NAME...``: one value per line, in the order asked.

    Raises:
        HostToolError: not one line per name (a name was unknown: see
            :func:`unknown_oids` on stderr).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(names):
        raise HostToolError(
            f"sysctl -n: expected {len(names)} value(s) for {', '.join(names)}, got {len(lines)}"
        )
    return dict(zip(names, lines, strict=True))


_UNKNOWN_OID_RE: Final = re.compile(r"sysctl: unknown oid '([^']*)'.*")


def unknown_oids(stderr: str) -> list[str]:
    """The names sysctl reported as ``unknown oid`` on standard error."""
    return [m.group(1) for line in stderr.splitlines() if (m := _UNKNOWN_OID_RE.fullmatch(line))]


def _flag(value: str | None) -> bool | None:
    if value is None:
        return None
    try:
        return int(value.strip()) != 0
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip(), 0)
    except ValueError:
        return None


@attrs.frozen(repr=False)
class VmmSysctl(Record):
    """The ``hw.vmm`` subtree (``sysctl hw.vmm``), with the values host checks need.

    Args:
        values: every ``hw.vmm.*`` value as printed.
    """

    values: Mapping[str, str]

    def get(self, name: str) -> str | None:
        """The value of ``hw.vmm.NAME`` or of the full name *name*."""
        return self.values.get(name if name.startswith("hw.vmm") else f"hw.vmm.{name}")

    @property
    def vendor(self) -> Literal["intel", "amd"] | None:
        """Which backend vmm attached (VT-x or SVM), if either."""
        if any(k.startswith("hw.vmm.vmx.") for k in self.values):
            return "intel"
        if any(k.startswith("hw.vmm.svm.") for k in self.values):
            return "amd"
        return None

    @property
    def initialized(self) -> bool | None:
        """``hw.vmm.vmx.initialized`` on Intel; None where the kernel does not say."""
        return _flag(self.get("vmx.initialized"))

    @property
    def unrestricted_guest(self) -> bool | None:
        """Whether UEFI, multi-vCPU and non-FreeBSD guests can run.

        Intel reports ``hw.vmm.vmx.cap.unrestricted_guest``; AMD-V has no such
        restriction.
        """
        if self.vendor == "amd":
            return True
        return _flag(self.get("vmx.cap.unrestricted_guest"))

    @property
    def maxcpu(self) -> int | None:
        """``hw.vmm.maxcpu``: the most vCPUs a guest may have."""
        return _int(self.get("maxcpu"))

    @property
    def iommu_enabled(self) -> bool | None:
        """``hw.vmm.iommu.enable`` (needed for passthrough)."""
        return _flag(self.get("iommu.enable"))

    @property
    def ppt_devices(self) -> int | None:
        """``hw.vmm.ppt.devices``: devices held by ppt."""
        return _int(self.get("ppt.devices"))


def parse_vmm_sysctl(text: str) -> VmmSysctl:
    """The ``hw.vmm`` lines of ``sysctl hw.vmm`` output (other names are ignored)."""
    values = {k: v for k, v in parse_sysctl(text).items() if k.startswith("hw.vmm.")}
    return VmmSysctl(values)


# --------------------------------------------------------------------------- pciconf


def pciconf_argv(*, verbose: bool = True) -> list[str]:
    """``pciconf -lv`` (or ``-l``)."""
    return ["pciconf", "-lv" if verbose else "-l"]


@attrs.frozen(repr=False)
class PciDevice(Record):
    """One PCI function from ``pciconf -l[v]``.

    Args:
        driver: the attached driver (``ppt``, ``em``), None when ``none``.
        unit: the driver unit number.
        domain, bus, slot, function: the address.
        vendor_id, device_id: the chip ids.
        subvendor_id, subdevice_id: the card ids.
        class_code: the 24-bit class (``0x020000``), None in the pre-13 layout.
        revision, header: ``rev=`` and ``hdr=``.
        vendor, device: the names ``-v`` prints, if any.
        class_name, subclass: ``-v``'s class and subclass words, if any.
    """

    driver: str | None
    unit: int
    domain: int
    bus: int
    slot: int
    function: int
    vendor_id: int
    device_id: int
    subvendor_id: int
    subdevice_id: int
    class_code: int | None
    revision: int
    header: int
    vendor: str | None = None
    device: str | None = None
    class_name: str | None = None
    subclass: str | None = None

    @property
    def name(self) -> str:
        """``ppt0``, ``em1``, ``none3``."""
        return f"{self.driver or 'none'}{self.unit}"

    @property
    def selector(self) -> str:
        """``pci0:2:0:0``: the form pciconf, devctl and bhyve's passthru accept."""
        return f"pci{self.domain}:{self.bus}:{self.slot}:{self.function}"

    @property
    def bsf(self) -> str:
        """``2/0/0``: the form of loader.conf's ``pptdevs`` and bhyve's ``-s N,passthru,``."""
        return f"{self.bus}/{self.slot}/{self.function}"

    @property
    def is_ppt(self) -> bool:
        """Whether ppt holds the device (it can be given to a guest)."""
        return self.driver == "ppt"


_PCI_LINE_RE: Final = re.compile(r"(\w+?)(\d+)@pci(\d+):(\d+):(\d+):(\d+):\s+(.*)")
_PCI_FIELD_RE: Final = re.compile(r"(\w+)=(0x[0-9a-fA-F]+)")
_PCI_VERBOSE_RE: Final = re.compile(r"\s+(vendor|device|class|subclass)\s*=\s*(.*?)\s*")


def _hexfield(fields: Mapping[str, int], key: str, line: str) -> int:
    try:
        return fields[key]
    except KeyError:
        raise _unexpected(f"pciconf (no {key}=)", line) from None


def _device_from_line(m: re.Match[str], line: str) -> PciDevice:
    driver, unit, domain, bus, slot, function, rest = m.groups()
    fields = {k: int(v, 16) for k, v in _PCI_FIELD_RE.findall(rest)}
    if "chip" in fields:
        # Before 13.0: chip = device << 16 | vendor, card = subdevice << 16 | subvendor.
        chip, card = fields["chip"], fields.get("card", 0)
        vendor_id, device_id = chip & 0xFFFF, chip >> 16
        subvendor_id, subdevice_id = card & 0xFFFF, card >> 16
        class_code = fields.get("class")
    else:
        vendor_id = _hexfield(fields, "vendor", line)
        device_id = _hexfield(fields, "device", line)
        subvendor_id = fields.get("subvendor", 0)
        subdevice_id = fields.get("subdevice", 0)
        class_code = _hexfield(fields, "class", line)
    return PciDevice(
        driver=None if driver == "none" else driver,
        unit=int(unit),
        domain=int(domain),
        bus=int(bus),
        slot=int(slot),
        function=int(function),
        vendor_id=vendor_id,
        device_id=device_id,
        subvendor_id=subvendor_id,
        subdevice_id=subdevice_id,
        class_code=class_code,
        revision=fields.get("rev", 0),
        header=fields.get("hdr", 0),
    )


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    return value


def parse_pciconf(text: str) -> list[PciDevice]:
    """The devices of ``pciconf -l`` or ``-lv`` output, either layout.

    Indented lines other than ``vendor``/``device``/``class``/``subclass`` (capabilities
    from ``-c``, BARs from ``-b``) are skipped.

    Raises:
        HostToolError: a device line cannot be read.
    """
    devices: list[PciDevice] = []
    names: dict[str, str] = {}

    def flush() -> None:
        if devices and names:
            devices[-1] = attrs.evolve(
                devices[-1],
                vendor=names.get("vendor"),
                device=names.get("device"),
                class_name=names.get("class"),
                subclass=names.get("subclass"),
            )
        names.clear()

    for line in text.split("\n"):
        if not line.strip():
            continue
        if not line[0].isspace():
            m = _PCI_LINE_RE.fullmatch(line.rstrip())
            if m is None:
                raise _unexpected("pciconf", line)
            flush()
            devices.append(_device_from_line(m, line))
        elif devices and (v := _PCI_VERBOSE_RE.fullmatch(line)):
            names[v.group(1)] = _unquote(v.group(2))
    flush()
    return devices


def ppt_devices(devices: Iterable[PciDevice]) -> list[PciDevice]:
    """The devices ppt holds, in bus order."""
    return sorted(
        (d for d in devices if d.is_ppt), key=lambda d: (d.domain, d.bus, d.slot, d.function)
    )
