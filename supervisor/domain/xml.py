"""libvirt domain XML (``<domain type='bhyve'>``) to :class:`Domain` and back.

Parsing is hardened: one parser factory with entity resolution, DTD loading and network
access off, a size cap, and any DOCTYPE or entity reference rejected, because domain
XML arrives from RPC clients. The formatter writes libvirt's layout (two-space indent,
single-quoted attributes, libvirt's element order), so that a document libvirt would
write comes back byte for byte.

The supervisor's own policy lives in ``<metadata>`` as a ``<bhyvesup:policy>`` element
in the namespace :data:`SUPERVISOR_NS`; every other ``<metadata>`` child is kept
verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import cast, get_args

import attrs
from lxml import etree

from supervisor.domain.model import (
    Audio,
    BootDev,
    Channel,
    ClockOffset,
    Controller,
    ControllerType,
    CpuTopology,
    Disk,
    DiskBus,
    DiskDevice,
    DiskType,
    Domain,
    DriveAddress,
    Features,
    Filesystem,
    FilesystemAccess,
    FilesystemType,
    Graphics,
    Hostdev,
    Input,
    Interface,
    InterfaceType,
    LifecycleAction,
    Loader,
    Os,
    PciAddress,
    Rng,
    Serial,
    SerialType,
    Sound,
    SupervisorPolicy,
    VcpuPin,
    VgaConf,
    Video,
    normalize_mac,
    normalize_uuid,
    prefixed,
)
from supervisor.domain.postparse import IdSource, post_parse
from supervisor.errors import InvalidValueError, InvalidXMLError
from supervisor.vmm.caps import DEFAULT, Capabilities

__all__ = [
    "BHYVE_NS",
    "MAX_XML_BYTES",
    "SUPERVISOR_NS",
    "format_cpuset",
    "format_domain_xml",
    "parse_cpuset",
    "parse_domain_xml",
    "parse_xml_document",
]

#: libvirt's namespace for ``<bhyve:commandline>``.
BHYVE_NS = "http://libvirt.org/schemas/domain/bhyve/1.0"
#: The supervisor's metadata namespace (prefix ``bhyvesup``).
SUPERVISOR_NS = "urn:bhyve-supervisor:domain:1"
SUPERVISOR_PREFIX = "bhyvesup"
#: The largest document accepted. A 32-disk guest is about 10 KiB.
MAX_XML_BYTES = 1024 * 1024

_MEMORY_UNITS: dict[str, int] = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}


# --------------------------------------------------------------------------------------
# Hardened parsing


def _parser() -> etree.XMLParser:
    # One factory so every document gets the same defences; parsers are not shared
    # between threads, so build one per call.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
        remove_comments=True,
    )


def parse_xml_document(data: bytes | str) -> etree._Element:
    """Parse *data* safely and return its root element.

    Raises:
        InvalidXMLError: too large, not well-formed, or it has a DOCTYPE or an entity.
    """
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_XML_BYTES:
        raise InvalidXMLError(
            f"document: larger than {MAX_XML_BYTES} bytes ({len(raw)})", field="document"
        )
    if re.search(rb"<!DOCTYPE|<!ENTITY", raw, re.IGNORECASE):
        raise InvalidXMLError("document: DOCTYPE and entity declarations are not accepted")
    if isinstance(data, str):
        # lxml refuses str input that carries an encoding declaration.
        raw = re.sub(rb"^\s*<\?xml[^>]*\?>", b"", raw)
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        raise InvalidXMLError(f"document: not well-formed XML: {exc}") from None
    tree = root.getroottree()
    docinfo = tree.docinfo
    if docinfo.internalDTD is not None or getattr(docinfo, "doctype", None):
        raise InvalidXMLError("document: DOCTYPE declarations are not accepted")
    for node in root.iter():
        if isinstance(node, etree._Entity):
            raise InvalidXMLError("document: entity references are not accepted")
    return root


# --------------------------------------------------------------------------------------
# Reading helpers


def _err(field: str, message: str) -> InvalidValueError:
    return InvalidValueError(f"{field}: {message}", field=field)


def _choice(field: str, value: str, allowed: object) -> str:
    choices = get_args(allowed)
    if value not in choices:
        raise _err(field, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _int(field: str, value: str | None, default: int | None = None) -> int:
    if value is None:
        if default is None:
            raise _err(field, "is required")
        return default
    text = value.strip()
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise _err(field, f"not a number, got {value!r}") from None


def _opt_int(field: str, value: str | None) -> int | None:
    return None if value is None else _int(field, value)


def _yes_no(field: str, value: str | None) -> bool | None:
    if value is None:
        return None
    if value in ("yes", "on"):
        return True
    if value in ("no", "off"):
        return False
    raise _err(field, f"must be 'yes' or 'no', got {value!r}")


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    return (el.text or "").strip()


def _memory_kib(field: str, el: etree._Element) -> int:
    unit = (el.get("unit") or "KiB").lower()
    scale = _MEMORY_UNITS.get(unit)
    if scale is None:
        raise _err(f"{field}.unit", f"unknown unit {el.get('unit')!r}")
    amount = _int(field, _text(el))
    if amount < 0:
        raise _err(field, f"must be > 0, got {amount}")
    return -(-(amount * scale) // 1024)


def _children(el: etree._Element, tag: str) -> list[etree._Element]:
    return [c for c in el if c.tag == tag]


def _pci_address(field: str, el: etree._Element) -> PciAddress:
    with prefixed(field):
        return PciAddress(
            domain=_int("domain", el.get("domain"), 0),
            bus=_int("bus", el.get("bus"), 0),
            slot=_int("slot", el.get("slot")),
            function=_int("function", el.get("function"), 0),
        )


def _address(field: str, parent: etree._Element) -> PciAddress | DriveAddress | None:
    el = parent.find("address")
    if el is None:
        return None
    base = f"{field}.address" if field else "address"
    kind = el.get("type")
    if kind == "pci":
        return _pci_address(base, el)
    if kind == "drive":
        with prefixed(base):
            return DriveAddress(
                controller=_int("controller", el.get("controller"), 0),
                bus=_int("bus", el.get("bus"), 0),
                target=_int("target", el.get("target"), 0),
                unit=_int("unit", el.get("unit"), 0),
            )
    if kind == "virtio-serial":
        return None
    raise _err(f"{base}.type", f"must be 'pci' or 'drive', got {kind!r}")


def _pci_only(field: str, parent: etree._Element) -> PciAddress | None:
    address = _address(field, parent)
    if isinstance(address, DriveAddress):
        raise _err(f"{field}.address.type" if field else "address.type", "takes a PCI address")
    return address


# --------------------------------------------------------------------------------------
# Devices


def _disk(field: str, el: etree._Element) -> Disk:
    dtype = _choice(f"{field}.type", el.get("type", "file"), DiskType)
    device = _choice(f"{field}.device", el.get("device", "disk"), DiskDevice)
    target_el = el.find("target")
    if target_el is None or not target_el.get("dev"):
        raise _err(f"{field}.target.dev", "is required")
    target = target_el.get("dev", "")
    bus = target_el.get("bus") or _bus_from_target(target)
    bus = _choice(f"{field}.target.bus", bus, DiskBus)
    source_el = el.find("source")
    source = pool = volume = None
    if source_el is not None:
        if dtype == "file":
            source = source_el.get("file")
        elif dtype == "block":
            source = source_el.get("dev")
        else:
            pool, volume = source_el.get("pool"), source_el.get("volume")
    driver = el.find("driver")
    boot = el.find("boot")
    with prefixed(field):
        return Disk(
            target=target,
            source=source,
            type=cast(DiskType, dtype),
            device=cast(DiskDevice, device),
            bus=cast(DiskBus, bus),
            # libvirt makes every cdrom read-only.
            readonly=el.find("readonly") is not None or device == "cdrom",
            boot_order=None if boot is None else _int("boot.order", boot.get("order")),
            address=_address("", el) if el.find("address") is not None else None,
            driver_name=None if driver is None else driver.get("name"),
            driver_type=None if driver is None else driver.get("type"),
            source_pool=pool,
            source_volume=volume,
            nvme_max_queues=None
            if driver is None
            else _opt_int("driver.queues", driver.get("queues")),
            nvme_queue_size=None
            if driver is None
            else _opt_int("driver.queue_size", driver.get("queue_size")),
        )


def _bus_from_target(target: str) -> str:
    if target.startswith("vd"):
        return "virtio"
    if target.startswith("nvme"):
        return "nvme"
    return "sata"


def _controller(field: str, el: etree._Element) -> Controller:
    ctype = _choice(f"{field}.type", el.get("type", ""), ControllerType)
    index = _int(f"{field}.index", el.get("index"), 0)
    if ctype == "isa" and index != 0:
        raise _err(f"{field}.index", f"bhyve has one ISA (LPC) bridge, index 0; got {index}")
    with prefixed(field):
        return Controller(
            type=cast(ControllerType, ctype),
            index=index,
            model=el.get("model"),
            address=_pci_only("", el) if el.find("address") is not None else None,
        )


def _interface(field: str, el: etree._Element) -> Interface:
    itype = _choice(f"{field}.type", el.get("type", ""), InterfaceType)
    mac_el = el.find("mac")
    mac = None
    if mac_el is not None:
        with prefixed(field):
            mac = normalize_mac(mac_el.get("address", ""))
    source = el.find("source")
    model = el.find("model")
    target = el.find("target")
    with prefixed(field):
        return Interface(
            type=cast(InterfaceType, itype),
            mac=mac,
            model=None if model is None else model.get("type"),
            bridge=None if source is None else source.get("bridge"),
            network=None if source is None else source.get("network"),
            target_dev=None if target is None else target.get("dev"),
            address=_pci_only("", el) if el.find("address") is not None else None,
        )


def _serial(field: str, el: etree._Element, *, console: bool) -> Serial:
    stype = _choice(f"{field}.type", el.get("type", ""), SerialType)
    source = el.find("source")
    target = el.find("target")
    port = None if target is None else _opt_int(f"{field}.target.port", target.get("port"))
    service = None
    if source is not None and source.get("service") is not None:
        service = _int(f"{field}.source.service", source.get("service"))
    with prefixed(field):
        return Serial(
            type=cast(SerialType, stype),
            port=port,
            master=None if source is None else source.get("master"),
            slave=None if source is None else source.get("slave"),
            host=None if source is None else source.get("host"),
            service=service,
            target_type=(target.get("type") if target is not None else None) or None
            if console
            else None,
        )


def _channel(field: str, el: etree._Element) -> Channel:
    if el.get("type") != "unix":
        raise _err(f"{field}.type", f"bhyve channels are 'unix' sockets, got {el.get('type')!r}")
    source = el.find("source")
    target = el.find("target")
    if target is None or target.get("type", "virtio") != "virtio":
        raise _err(f"{field}.target.type", "bhyve channels are virtio-console ports")
    address = el.find("address")
    with prefixed(field):
        return Channel(
            name=target.get("name", ""),
            path="" if source is None else source.get("path", ""),
            controller=None
            if address is None
            else _opt_int("address.controller", address.get("controller")),
            port=None if address is None else _opt_int("address.port", address.get("port")),
        )


def _graphics(field: str, el: etree._Element) -> Graphics:
    if el.get("type") != "vnc":
        raise _err(f"{field}.type", f"bhyve's framebuffer is 'vnc', got {el.get('type')!r}")
    port = _int(f"{field}.port", el.get("port"), -1)
    autoport = _yes_no(f"{field}.autoport", el.get("autoport"))
    if autoport is None:
        autoport = port == -1
    listen_el = el.find("listen")
    listen = el.get("listen")
    listen_type = listen_address = None
    if listen_el is not None:
        listen_type = listen_el.get("type")
        listen_address = listen_el.get("address")
        if listen is None:
            listen = listen_address
    with prefixed(field):
        return Graphics(
            port=-1 if autoport else port,
            autoport=autoport,
            listen=listen,
            passwd=el.get("passwd"),
            listen_type=listen_type,
            listen_address=listen_address,
        )


def _video(field: str, el: etree._Element) -> Video:
    model = el.find("model")
    driver = el.find("driver")
    resolution = None
    res_el = None if model is None else model.find("resolution")
    if res_el is not None:
        resolution = (
            _int(f"{field}.model.resolution.x", res_el.get("x")),
            _int(f"{field}.model.resolution.y", res_el.get("y")),
        )
    vgaconf = None if driver is None else driver.get("vgaconf")
    if vgaconf is not None:
        _choice(f"{field}.driver.vgaconf", vgaconf, VgaConf)
    with prefixed(field):
        return Video(
            model="default" if model is None else model.get("type", "default"),
            heads=1
            if model is None or model.get("heads") is None
            else _int("model.heads", model.get("heads")),
            primary=None if model is None else _yes_no("model.primary", model.get("primary")),
            resolution=resolution,
            vgaconf=cast(VgaConf | None, vgaconf),
            wait=bool(driver is not None and _yes_no("driver.wait", driver.get("wait"))),
            address=_pci_only("", el) if el.find("address") is not None else None,
        )


def _sound(field: str, el: etree._Element) -> Sound:
    audio = el.find("audio")
    with prefixed(field):
        return Sound(
            model=el.get("model", ""),
            audio_id=None if audio is None else _opt_int("audio.id", audio.get("id")),
            address=_pci_only("", el) if el.find("address") is not None else None,
        )


def _audio(field: str, el: etree._Element) -> Audio:
    inp = el.find("input")
    out = el.find("output")
    with prefixed(field):
        return Audio(
            id=_int("id", el.get("id")),
            type=el.get("type", ""),
            input_dev=None if inp is None else inp.get("dev"),
            output_dev=None if out is None else out.get("dev"),
        )


def _rng(field: str, el: etree._Element) -> Rng:
    backend = el.find("backend")
    with prefixed(field):
        return Rng(
            model=el.get("model", ""),
            backend="" if backend is None else backend.get("model", ""),
            source=_text(backend) or None,
            address=_pci_only("", el) if el.find("address") is not None else None,
        )


def _filesystem(field: str, el: etree._Element) -> Filesystem:
    ftype = _choice(f"{field}.type", el.get("type", "mount"), FilesystemType)
    access = _choice(f"{field}.accessmode", el.get("accessmode", "passthrough"), FilesystemAccess)
    source = el.find("source")
    target = el.find("target")
    driver = el.find("driver")
    with prefixed(field):
        return Filesystem(
            source="" if source is None else source.get("dir", ""),
            target="" if target is None else target.get("dir", ""),
            type=cast(FilesystemType, ftype),
            accessmode=cast(FilesystemAccess, access),
            driver=None if driver is None else driver.get("type"),
            readonly=el.find("readonly") is not None,
            address=_pci_only("", el) if el.find("address") is not None else None,
        )


def _hostdev(field: str, el: etree._Element) -> Hostdev:
    if el.get("mode", "subsystem") != "subsystem" or el.get("type") != "pci":
        raise _err(f"{field}.type", "bhyve passes through PCI subsystem devices only")
    host = el.find("source/address")
    if host is None:
        raise _err(f"{field}.source.address", "is required")
    rom = el.find("rom")
    with prefixed(field):
        return Hostdev(
            host=_pci_address("source.address", host),
            address=_pci_only("", el) if el.find("address") is not None else None,
            rom=None if rom is None else rom.get("file"),
            managed=_yes_no("managed", el.get("managed")),
        )


def _input(field: str, el: etree._Element) -> Input:
    itype, bus = el.get("type", ""), el.get("bus", "usb")
    if itype != "tablet" or bus != "usb":
        raise _err(field, f"bhyve has a USB tablet only, got type={itype!r} bus={bus!r}")
    return Input(type=itype, bus=bus)


# --------------------------------------------------------------------------------------
# The domain


def _os(el: etree._Element | None, bootloader: str | None, bootloader_args: str | None) -> Os:
    if el is None:
        raise _err("os", "is required")
    type_el = el.find("type")
    loader_el = el.find("loader")
    nvram_el = el.find("nvram")
    loader = None
    if loader_el is not None and _text(loader_el):
        with prefixed("os.loader"):
            loader = Loader(
                path=_text(loader_el) or "",
                readonly=_yes_no("readonly", loader_el.get("readonly")),
                type=loader_el.get("type"),
                format=loader_el.get("format"),
            )
    boot_devs = []
    for i, boot in enumerate(_children(el, "boot")):
        boot_devs.append(cast(BootDev, _choice(f"os.boot[{i}].dev", boot.get("dev", ""), BootDev)))
    return Os(
        type=_text(type_el) or "hvm",
        arch=None if type_el is None else type_el.get("arch"),
        machine=None if type_el is None else type_el.get("machine"),
        firmware=el.get("firmware"),
        loader=loader,
        nvram=_text(nvram_el) or None,
        nvram_template=None if nvram_el is None else nvram_el.get("template"),
        bootloader=bootloader,
        bootloader_args=bootloader_args,
        boot_devs=tuple(boot_devs),
    )


def parse_cpuset(field: str, text: str) -> tuple[int, ...]:
    """libvirt's cpuset syntax (``0-3,^2,5``) as ascending CPU numbers."""
    include: set[int] = set()
    exclude: set[int] = set()
    for part in text.replace(" ", "").split(","):
        target = exclude if part.startswith("^") else include
        part = part.lstrip("^")
        low, _, high = part.partition("-")
        first = _int(field, low)
        last = _int(field, high) if high else first
        if first < 0 or last < first:
            raise _err(field, f"not a CPU list, got {text!r}")
        target.update(range(first, last + 1))
    return tuple(sorted(include - exclude))


def format_cpuset(cpus: tuple[int, ...]) -> str:
    """CPU numbers in libvirt's compact form (``0-3,5``)."""
    parts: list[str] = []
    start = prev = None
    for cpu in [*cpus, None]:
        if start is not None and (cpu is None or prev is None or cpu != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if cpu is not None and start is None:
            start = cpu
        prev = cpu
    return ",".join(parts)


def _vcpu_pins(el: etree._Element | None) -> tuple[VcpuPin, ...]:
    if el is None:
        return ()
    pins = []
    for i, pin in enumerate(_children(el, "vcpupin")):
        field = f"cputune.vcpupin[{i}]"
        with prefixed(field):
            pins.append(
                VcpuPin(
                    vcpu=_int("vcpu", pin.get("vcpu")),
                    cpuset=parse_cpuset("cpuset", pin.get("cpuset", "")),
                )
            )
    return tuple(pins)


def _features(el: etree._Element | None) -> Features:
    if el is None:
        return Features()
    acpi = apic = msrs = False
    for child in el:
        if child.tag == "acpi":
            acpi = True
        elif child.tag == "apic":
            apic = True
        elif child.tag == "msrs":
            if child.get("unknown") != "ignore":
                raise _err("features.msrs.unknown", "bhyve can only 'ignore' unknown MSRs")
            msrs = True
        else:
            raise _err(f"features.{child.tag}", "not a feature bhyve has")
    return Features(acpi=acpi, apic=apic, msrs_ignore=msrs)


_POLICY_FIELDS: dict[str, str] = {
    "autostart": "autostart",
    "start-order": "start_order",
    "depends-on": "depends_on",
    "start-delay": "start_delay",
    "stop-timeout": "stop_timeout",
    "restart-backoff": "restart_backoff",
    "restart-backoff-max": "restart_backoff_max",
    "crash-limit": "crash_limit",
    "crash-window": "crash_window",
    "ready-console-regex": "ready_console_regex",
}


def _policy(el: etree._Element) -> SupervisorPolicy:
    values: dict[str, object] = {}
    depends: list[str] = []
    defaults = SupervisorPolicy()
    for child in el:
        local = etree.QName(child).localname
        name = _POLICY_FIELDS.get(local)
        field = f"metadata.policy.{local}"
        if etree.QName(child).namespace != SUPERVISOR_NS or name is None:
            raise InvalidXMLError(f"{field}: unknown policy element", field=field)
        text = _text(child) or ""
        default = getattr(defaults, name)
        if name == "depends_on":
            depends.append(text)
        elif isinstance(default, bool):
            flag = _yes_no(field, text)
            values[name] = flag
        elif isinstance(default, int):
            values[name] = _int(field, text)
        elif isinstance(default, float):
            try:
                values[name] = float(text)
            except ValueError:
                raise _err(field, f"not a number, got {text!r}") from None
        else:
            values[name] = text
    if depends:
        values["depends_on"] = tuple(depends)
    try:
        return SupervisorPolicy(**values)  # type: ignore[arg-type]
    except InvalidValueError as exc:
        field = f"metadata.{exc.field}"
        raise InvalidValueError(f"metadata.{exc.message}", field=field) from None


def _metadata(el: etree._Element | None) -> tuple[SupervisorPolicy, tuple[str, ...]]:
    if el is None:
        return SupervisorPolicy(), ()
    policy = SupervisorPolicy()
    others: list[str] = []
    for child in el:
        qname = etree.QName(child)
        if qname.namespace == SUPERVISOR_NS:
            if qname.localname != "policy":
                raise InvalidXMLError(
                    f"metadata.{qname.localname}: unknown supervisor element",
                    field=f"metadata.{qname.localname}",
                )
            policy = _policy(child)
            continue
        if qname.namespace is None:
            raise _err(f"metadata.{qname.localname}", "metadata elements need a namespace")
        others.append(_serialise_foreign(child))
    return policy, tuple(others)


def _serialise_foreign(el: etree._Element) -> str:
    copy = etree.fromstring(etree.tostring(el))
    copy.tail = None
    for node in copy.iter():
        if len(node):
            node.text = None if node.text is None or not node.text.strip() else node.text
        node.tail = None if node.tail is None or not node.tail.strip() else node.tail
    etree.indent(copy, space="  ")
    return etree.tostring(copy, encoding="unicode")


_DEVICE_PARSERS: dict[str, tuple[str, Callable[[str, etree._Element], object]]] = {
    "disk": ("disks", _disk),
    "controller": ("controllers", _controller),
    "interface": ("interfaces", _interface),
    "filesystem": ("filesystems", _filesystem),
    "serial": ("serials", lambda f, e: _serial(f, e, console=False)),
    "console": ("consoles", lambda f, e: _serial(f, e, console=True)),
    "channel": ("channels", _channel),
    "input": ("inputs", _input),
    "graphics": ("graphics", _graphics),
    "sound": ("sounds", _sound),
    "audio": ("audios", _audio),
    "video": ("videos", _video),
    "hostdev": ("hostdevs", _hostdev),
    "rng": ("rngs", _rng),
}


def _devices(el: etree._Element | None) -> dict[str, tuple[object, ...]]:
    found: dict[str, list[object]] = {name: [] for name, _ in _DEVICE_PARSERS.values()}
    if el is None:
        return {k: tuple(v) for k, v in found.items()}
    counts: dict[str, int] = {}
    for child in el:
        if child.tag == "memballoon" and child.get("model") == "none":
            continue
        entry = _DEVICE_PARSERS.get(child.tag)
        if entry is None:
            raise _err(f"devices.{child.tag}", "not a device bhyve has")
        index = counts.get(child.tag, 0)
        counts[child.tag] = index + 1
        name, parse = entry
        found[name].append(parse(f"devices.{child.tag}[{index}]", child))
    return {k: tuple(v) for k, v in found.items()}


def _lifecycle(root: etree._Element, tag: str, default: str) -> LifecycleAction:
    value = _text(root.find(tag)) or default
    return cast(LifecycleAction, _choice(tag, value, LifecycleAction))


def domain_from_element(root: etree._Element) -> Domain:
    """The :class:`Domain` an already parsed ``<domain>`` element describes, without
    post-parse."""
    if root.tag != "domain":
        raise InvalidXMLError(f"document: the root element must be <domain>, got <{root.tag}>")
    if root.get("type") != "bhyve":
        raise _err("type", f"must be 'bhyve', got {root.get('type')!r}")
    name = _text(root.find("name"))
    if not name:
        raise _err("name", "is required")
    uuid = _text(root.find("uuid"))
    if uuid:
        uuid = normalize_uuid(uuid)
    memory_el = root.find("memory")
    if memory_el is None:
        raise _err("memory", "is required")
    memory = _memory_kib("memory", memory_el)
    current_el = root.find("currentMemory")
    current = None if current_el is None else _memory_kib("currentMemory", current_el)
    vcpus = _int("vcpu", _text(root.find("vcpu")), 1)
    topology = None
    topo_el = root.find("cpu/topology")
    if topo_el is not None:
        topology = CpuTopology(
            sockets=_int("cpu.topology.sockets", topo_el.get("sockets"), 1),
            cores=_int("cpu.topology.cores", topo_el.get("cores"), 1),
            threads=_int("cpu.topology.threads", topo_el.get("threads"), 1),
            dies=_int("cpu.topology.dies", topo_el.get("dies"), 1),
            clusters=_int("cpu.topology.clusters", topo_el.get("clusters"), 1),
        )
    clock_el = root.find("clock")
    clock = "utc" if clock_el is None else clock_el.get("offset", "utc")
    clock = _choice("clock.offset", clock, ClockOffset)
    bootloader = _text(root.find("bootloader")) or None
    bootloader_args = _text(root.find("bootloader_args"))
    policy, metadata = _metadata(root.find("metadata"))
    commandline = tuple(
        arg.get("value", "")
        for arg in root.iterfind(f"{{{BHYVE_NS}}}commandline/{{{BHYVE_NS}}}arg")
    )
    devices = _devices(root.find("devices"))
    return Domain(
        name=name,
        uuid=uuid or None,
        memory_kib=memory,
        current_memory_kib=current,
        vcpus=vcpus,
        topology=topology,
        vcpu_pins=_vcpu_pins(root.find("cputune")),
        wired=root.find("memoryBacking/locked") is not None,
        clock=cast(ClockOffset, clock),
        features=_features(root.find("features")),
        os=_os(root.find("os"), bootloader, bootloader_args),
        on_poweroff=_lifecycle(root, "on_poweroff", "destroy"),
        on_reboot=_lifecycle(root, "on_reboot", "restart"),
        on_crash=_lifecycle(root, "on_crash", "destroy"),
        policy=policy,
        metadata=metadata,
        commandline=commandline,
        title=_text(root.find("title")),
        description=_text(root.find("description")),
        **devices,  # type: ignore[arg-type]
    )


def parse_domain_xml(
    data: bytes | str,
    *,
    caps: Capabilities | None = None,
    post_parse: bool = True,
    ids: IdSource | None = None,
) -> Domain:
    """Parse a libvirt ``<domain type='bhyve'>`` document.

    Args:
        data: the document (at most :data:`MAX_XML_BYTES`).
        caps: the bhyve it will run on; AHCI32SLOT decides how SATA disks are
            addressed. Defaults to :data:`supervisor.vmm.caps.DEFAULT`.
        post_parse: add implicit devices, addresses, MACs and paths (see
            :mod:`supervisor.domain.postparse`). Off, the model is exactly the document.
        ids: where new MACs and UUIDs come from (random by default).

    Raises:
        InvalidXMLError: the document is unsafe, too large or not well-formed.
        InvalidValueError: a value is not acceptable; ``field`` names it.
    """
    domain = domain_from_element(parse_xml_document(data))
    if post_parse:
        domain = _post_parse(domain, caps or DEFAULT, ids)
    return domain


_post_parse = post_parse


# --------------------------------------------------------------------------------------
# Formatting


def _esc(value: object) -> str:
    return (
        str(value)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("'", "&apos;")
        .replace('"', "&quot;")
    )


def _attrs(**values: object) -> str:
    out = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        out.append(f" {key.rstrip('_').replace('__', '-')}='{_esc(value)}'")
    return "".join(out)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def line(self, text: str) -> None:
        self.lines.append("  " * self.depth + text)

    def empty(self, tag: str, **values: object) -> None:
        self.line(f"<{tag}{_attrs(**values)}/>")

    def text(self, tag: str, text: object, **values: object) -> None:
        self.line(f"<{tag}{_attrs(**values)}>{_esc(text)}</{tag}>")

    def open(self, tag: str, **values: object) -> None:
        self.line(f"<{tag}{_attrs(**values)}>")
        self.depth += 1

    def close(self, tag: str) -> None:
        self.depth -= 1
        self.line(f"</{tag}>")


def _fmt_address(w: _Writer, address: PciAddress | DriveAddress | None) -> None:
    if isinstance(address, PciAddress):
        w.line(
            f"<address type='pci' domain='0x{address.domain:04x}' bus='0x{address.bus:02x}' "
            f"slot='0x{address.slot:02x}' function='0x{address.function:x}'/>"
        )
    elif isinstance(address, DriveAddress):
        w.empty(
            "address",
            type="drive",
            controller=address.controller,
            bus=address.bus,
            target=address.target,
            unit=address.unit,
        )


def _fmt_disk(w: _Writer, disk: Disk) -> None:
    w.open("disk", type=disk.type, device=disk.device)
    if disk.driver_name or disk.driver_type or disk.nvme_max_queues or disk.nvme_queue_size:
        w.empty(
            "driver",
            name=disk.driver_name,
            type=disk.driver_type,
            queues=disk.nvme_max_queues,
            queue_size=disk.nvme_queue_size,
        )
    if disk.type == "file" and disk.source is not None:
        w.empty("source", file=disk.source)
    elif disk.type == "block" and disk.source is not None:
        w.empty("source", dev=disk.source)
    elif disk.type == "volume" and disk.source_pool:
        w.empty("source", pool=disk.source_pool, volume=disk.source_volume)
    w.empty("target", dev=disk.target, bus=disk.bus)
    if disk.readonly:
        w.empty("readonly")
    if disk.boot_order is not None:
        w.empty("boot", order=disk.boot_order)
    _fmt_address(w, disk.address)
    w.close("disk")


def _fmt_with_address(
    w: _Writer, tag: str, address: PciAddress | DriveAddress | None, **values: object
) -> None:
    if address is None:
        w.empty(tag, **values)
        return
    w.open(tag, **values)
    _fmt_address(w, address)
    w.close(tag)


def _fmt_interface(w: _Writer, nic: Interface) -> None:
    w.open("interface", type=nic.type)
    if nic.mac is not None:
        w.empty("mac", address=nic.mac)
    if nic.type == "bridge":
        w.empty("source", bridge=nic.bridge)
    elif nic.type == "network":
        w.empty("source", network=nic.network, bridge=nic.bridge)
    if nic.target_dev is not None:
        w.empty("target", dev=nic.target_dev)
    if nic.model is not None:
        w.empty("model", type=nic.model)
    _fmt_address(w, nic.address)
    w.close("interface")


def _fmt_serial(w: _Writer, tag: str, serial: Serial, target_type: str | None) -> None:
    w.open(tag, type=serial.type)
    if serial.type == "nmdm":
        w.empty("source", master=serial.master, slave=serial.slave)
    elif serial.type == "tcp":
        w.empty("source", mode="bind", host=serial.host, service=serial.service)
        w.empty("protocol", type="raw")
    w.empty("target", type=target_type, port=serial.port)
    w.close(tag)


def _fmt_filesystem(w: _Writer, fs: Filesystem) -> None:
    w.open("filesystem", type=fs.type, accessmode=fs.accessmode)
    if fs.driver is not None:
        w.empty("driver", type=fs.driver)
    w.empty("source", dir=fs.source)
    w.empty("target", dir=fs.target)
    if fs.readonly:
        w.empty("readonly")
    _fmt_address(w, fs.address)
    w.close("filesystem")


def _fmt_graphics(w: _Writer, g: Graphics) -> None:
    listens = g.listen_type is not None
    values = {
        "type": "vnc",
        "port": g.port,
        "autoport": g.autoport,
        "listen": g.listen,
        "passwd": g.passwd,
    }
    if not listens:
        w.empty("graphics", **values)
        return
    w.open("graphics", **values)
    w.empty("listen", type=g.listen_type, address=g.listen_address)
    w.close("graphics")


def _fmt_video(w: _Writer, v: Video) -> None:
    w.open("video")
    # libvirt leaves out vgaconf 'io' (its zero value); 'wait' is the supervisor's own.
    vgaconf = v.vgaconf if v.vgaconf != "io" else None
    if vgaconf is not None or v.wait:
        w.empty("driver", vgaconf=vgaconf, wait=True if v.wait else None)
    model_attrs = {"type": v.model, "heads": v.heads, "primary": True if v.primary else None}
    if v.resolution is None:
        w.empty("model", **model_attrs)
    else:
        w.open("model", **model_attrs)
        w.empty("resolution", x=v.resolution[0], y=v.resolution[1])
        w.close("model")
    _fmt_address(w, v.address)
    w.close("video")


def _fmt_hostdev(w: _Writer, h: Hostdev) -> None:
    w.open("hostdev", mode="subsystem", type="pci", managed=h.managed)
    w.open("source")
    w.line(
        f"<address domain='0x{h.host.domain:04x}' bus='0x{h.host.bus:02x}' "
        f"slot='0x{h.host.slot:02x}' function='0x{h.host.function:x}'/>"
    )
    w.close("source")
    if h.rom is not None:
        w.empty("rom", file=h.rom)
    _fmt_address(w, h.address)
    w.close("hostdev")


def _fmt_policy(w: _Writer, policy: SupervisorPolicy) -> None:
    defaults = SupervisorPolicy()
    if policy == defaults:
        return
    p = SUPERVISOR_PREFIX
    w.line(f"<{p}:policy xmlns:{p}='{SUPERVISOR_NS}'>")
    w.depth += 1
    for tag, name in _POLICY_FIELDS.items():
        value = getattr(policy, name)
        if value == getattr(defaults, name):
            continue
        if name == "depends_on":
            for dep in value:
                w.text(f"{p}:{tag}", dep)
        elif isinstance(value, bool):
            w.text(f"{p}:{tag}", "yes" if value else "no")
        else:
            w.text(f"{p}:{tag}", value)
    w.close(f"{p}:policy")


def _fmt_devices(w: _Writer, d: Domain) -> None:
    w.open("devices")
    for disk in d.disks:
        _fmt_disk(w, disk)
    for ctrl in d.controllers:
        _fmt_with_address(
            w, "controller", ctrl.address, type=ctrl.type, index=ctrl.index, model=ctrl.model
        )
    for fs in d.filesystems:
        _fmt_filesystem(w, fs)
    for nic in d.interfaces:
        _fmt_interface(w, nic)
    for serial in d.serials:
        _fmt_serial(w, "serial", serial, None)
    for i, console in enumerate(d.consoles):
        # Console 0 is a view of serial port 0, as libvirt writes it.
        source = (
            d.serials[0] if i == 0 and d.serials and console.target_type == "serial" else console
        )
        _fmt_serial(w, "console", attrs.evolve(source, port=console.port), console.target_type)
    for ch in d.channels:
        w.open("channel", type="unix")
        w.empty("source", mode="bind", path=ch.path)
        w.empty("target", type="virtio", name=ch.name)
        if ch.controller is not None:
            w.empty("address", type="virtio-serial", controller=ch.controller, bus=0, port=ch.port)
        w.close("channel")
    for inp in d.inputs:
        w.empty("input", type=inp.type, bus=inp.bus)
    for g in d.graphics:
        _fmt_graphics(w, g)
    for sound in d.sounds:
        if sound.audio_id is None and sound.address is None:
            w.empty("sound", model=sound.model)
            continue
        w.open("sound", model=sound.model)
        if sound.audio_id is not None:
            w.empty("audio", id=sound.audio_id)
        _fmt_address(w, sound.address)
        w.close("sound")
    for audio in d.audios:
        w.open("audio", id=audio.id, type=audio.type)
        if audio.input_dev is not None:
            w.empty("input", dev=audio.input_dev)
        if audio.output_dev is not None:
            w.empty("output", dev=audio.output_dev)
        w.close("audio")
    for video in d.videos:
        _fmt_video(w, video)
    for hostdev in d.hostdevs:
        _fmt_hostdev(w, hostdev)
    for rng in d.rngs:
        w.open("rng", model=rng.model)
        if rng.source is None:
            w.empty("backend", model=rng.backend)
        else:
            w.text("backend", rng.source, model=rng.backend)
        _fmt_address(w, rng.address)
        w.close("rng")
    w.close("devices")


def format_domain_xml(domain: Domain, *, inactive: bool = True) -> str:
    """*domain* as libvirt domain XML, in libvirt's layout, ending with a newline.

    Args:
        inactive: write the persistent definition (the only form there is today;
            kept for libvirt's flag of the same name).
    """
    d = domain
    w = _Writer()
    ns = f" xmlns:bhyve='{BHYVE_NS}'" if d.commandline else ""
    w.line(f"<domain type='bhyve'{ns}>")
    w.depth += 1
    w.text("name", d.name)
    if d.uuid is not None:
        w.text("uuid", d.uuid)
    if d.title is not None:
        w.text("title", d.title)
    if d.description is not None:
        w.text("description", d.description)
    if d.metadata or d.policy != SupervisorPolicy():
        w.open("metadata")
        _fmt_policy(w, d.policy)
        for chunk in d.metadata:
            for line in chunk.splitlines():
                w.line(line)
        w.close("metadata")
    w.text("memory", d.memory_kib, unit="KiB")
    w.text("currentMemory", d.current_memory_kib or d.memory_kib, unit="KiB")
    if d.wired:
        w.open("memoryBacking")
        w.empty("locked")
        w.close("memoryBacking")
    w.text("vcpu", d.vcpus, placement="static")
    if d.vcpu_pins:
        w.open("cputune")
        for pin in d.vcpu_pins:
            w.empty("vcpupin", vcpu=pin.vcpu, cpuset=format_cpuset(pin.cpuset))
        w.close("cputune")
    if d.os.bootloader is not None:
        w.text("bootloader", d.os.bootloader)
    if d.os.bootloader_args is not None:
        w.text("bootloader_args", d.os.bootloader_args)
    w.open("os", firmware=d.os.firmware)
    w.text("type", d.os.type, arch=d.os.arch, machine=d.os.machine)
    if d.os.loader is not None:
        loader = d.os.loader
        w.text(
            "loader",
            loader.path,
            readonly=loader.readonly,
            type=loader.type,
            format=loader.format,
        )
    if d.os.nvram is not None:
        w.text("nvram", d.os.nvram, template=d.os.nvram_template)
    if d.os.bootloader is None:
        for dev in d.os.boot_devs:
            w.empty("boot", dev=dev)
    w.close("os")
    if d.features != Features():
        w.open("features")
        if d.features.acpi:
            w.empty("acpi")
        if d.features.apic:
            w.empty("apic")
        if d.features.msrs_ignore:
            w.empty("msrs", unknown="ignore")
        w.close("features")
    if d.topology is not None:
        t = d.topology
        w.open("cpu")
        w.empty(
            "topology",
            sockets=t.sockets,
            dies=t.dies if t.dies != 1 else None,
            clusters=t.clusters if t.clusters != 1 else None,
            cores=t.cores,
            threads=t.threads,
        )
        w.close("cpu")
    w.empty("clock", offset=d.clock)
    w.text("on_poweroff", d.on_poweroff)
    w.text("on_reboot", d.on_reboot)
    w.text("on_crash", d.on_crash)
    _fmt_devices(w, d)
    if d.commandline:
        w.open("bhyve:commandline")
        for arg in d.commandline:
            w.empty("bhyve:arg", value=arg)
        w.close("bhyve:commandline")
    w.depth -= 1
    w.line("</domain>")
    return "\n".join(w.lines) + "\n"
