"""What this host's bhyve can do, and pure parsers for the probes that tell.

The probes are the ones libvirt runs (libvirt-bhyve-facts §3, "Capability probing");
running them is the core's job (:data:`PROBES` lists their argv), reading their output
is done here, without I/O:

* ``bhyve -h`` (usage on stderr): ``-u:`` means RTC_UTC; the *absence* of the old
  ``-c vcpus`` wording means CPUTOPOLOGY; ``-A:`` means ACPI; ``-n:`` means NUMA.
* ``bhyve -s help`` (stdout): one emulation per line.
* ``bhyve -l bootrom``: LPC_BOOTROM unless stderr says the LPC device is invalid.
* ``bhyve -s 0,fbuf,password=``: VNC_PASSWORD unless stderr says ``password`` is not
  an fbuf option.
* ``grub-bhyve --help``: ``--cons-dev`` means CONSDEV.
"""

from __future__ import annotations

import enum
import re

import attrs

from supervisor._record import Record

__all__ = [
    "DEFAULT",
    "LIBVIRT_CAPS",
    "PROBES",
    "BhyveCap",
    "Capabilities",
    "caps_from_probe",
    "parse_bhyve_help",
    "parse_bootrom_probe",
    "parse_device_list",
    "parse_fbuf_password_probe",
    "parse_grub_help",
]


class BhyveCap(enum.Flag):
    """One thing a bhyve binary may or may not support (libvirt's ``BHYVE_CAP_*`` and
    the newer ones libvirt 11.3 does not know)."""

    NONE = 0
    RTC_UTC = enum.auto()
    AHCI32SLOT = enum.auto()
    NET_E1000 = enum.auto()
    LPC_BOOTROM = enum.auto()
    FBUF = enum.auto()
    XHCI = enum.auto()
    CPUTOPOLOGY = enum.auto()
    SOUND_HDA = enum.auto()
    VNC_PASSWORD = enum.auto()
    VIRTIO_9P = enum.auto()
    VIRTIO_RND = enum.auto()
    NVME = enum.auto()
    VIRTIO_SCSI = enum.auto()
    VIRTIO_CONSOLE = enum.auto()
    SLIRP = enum.auto()
    #: UEFI variables in a file of their own: ``-l bootrom,CODE,VARS``.
    NVRAM = enum.auto()
    ACPI = enum.auto()
    NUMA = enum.auto()


#: The eleven flags of libvirt 11.3.0.
LIBVIRT_CAPS = (
    BhyveCap.RTC_UTC
    | BhyveCap.AHCI32SLOT
    | BhyveCap.NET_E1000
    | BhyveCap.LPC_BOOTROM
    | BhyveCap.FBUF
    | BhyveCap.XHCI
    | BhyveCap.CPUTOPOLOGY
    | BhyveCap.SOUND_HDA
    | BhyveCap.VNC_PASSWORD
    | BhyveCap.VIRTIO_9P
    | BhyveCap.VIRTIO_RND
)


@attrs.frozen(repr=False)
class Capabilities(Record):
    """What one bhyve (and grub-bhyve) can do.

    Args:
        bhyve: the supported :class:`BhyveCap` flags.
        grub_consdev: grub-bhyve takes ``--cons-dev``.
    """

    bhyve: BhyveCap = BhyveCap.NONE
    grub_consdev: bool = False

    def has(self, cap: BhyveCap) -> bool:
        """Whether every flag in *cap* is supported."""
        # On the flags' integers: Flag's own ``&`` builds a new member through the enum
        # machinery, which was most of the cost of building a guest's argv.
        want: int = cap._value_
        return self.bhyve._value_ & want == want

    def without(self, cap: BhyveCap) -> Capabilities:
        """These capabilities less *cap*."""
        return attrs.evolve(self, bhyve=self.bhyve & ~cap)

    def with_(self, cap: BhyveCap) -> Capabilities:
        """These capabilities plus *cap*."""
        return attrs.evolve(self, bhyve=self.bhyve | cap)


#: A current FreeBSD 14/15 bhyve with grub-bhyve from ports: everything on.
DEFAULT = Capabilities(bhyve=~BhyveCap.NONE, grub_consdev=True)

#: The probe commands, by the name of the :func:`caps_from_probe` argument they feed,
#: and which stream to capture.
PROBES: dict[str, tuple[tuple[str, ...], str]] = {
    "help_text": (("/usr/sbin/bhyve", "-h"), "stderr"),
    "s_help_text": (("/usr/sbin/bhyve", "-s", "help"), "stdout"),
    "bootrom_text": (("/usr/sbin/bhyve", "-l", "bootrom"), "stderr"),
    "fbuf_password_text": (("/usr/sbin/bhyve", "-s", "0,fbuf,password="), "stderr"),
    "grub_help_text": (("/usr/local/sbin/grub-bhyve", "--help"), "stdout"),
}

_DEVICE_CAPS: dict[str, BhyveCap] = {
    "ahci": BhyveCap.AHCI32SLOT,
    "e1000": BhyveCap.NET_E1000,
    "fbuf": BhyveCap.FBUF,
    "hda": BhyveCap.SOUND_HDA,
    "nvme": BhyveCap.NVME,
    "virtio-9p": BhyveCap.VIRTIO_9P,
    "virtio-rnd": BhyveCap.VIRTIO_RND,
    "xhci": BhyveCap.XHCI,
    "virtio-scsi": BhyveCap.VIRTIO_SCSI,
    "virtio-console": BhyveCap.VIRTIO_CONSOLE,
}


def parse_bhyve_help(text: str) -> BhyveCap:
    """The flags that ``bhyve -h``'s usage text (stderr) reveals."""
    caps = BhyveCap.NONE
    if re.search(r"-u:", text):
        caps |= BhyveCap.RTC_UTC
    # Before topology support the usage line read "-c vcpus"; its absence is the sign.
    if "-c vcpus" not in text:
        caps |= BhyveCap.CPUTOPOLOGY
    if re.search(r"-A:", text):
        caps |= BhyveCap.ACPI
    if re.search(r"-n:", text):
        caps |= BhyveCap.NUMA
    return caps


def parse_device_list(text: str) -> BhyveCap:
    """The flags that ``bhyve -s help`` (one emulation per line on stdout) reveals."""
    caps = BhyveCap.NONE
    for line in text.splitlines():
        cap = _DEVICE_CAPS.get(line.strip())
        if cap is not None:
            caps |= cap
    return caps


def parse_bootrom_probe(text: str) -> BhyveCap:
    """LPC_BOOTROM (and NVRAM, which came with it) unless ``bhyve -l bootrom``'s stderr
    says the LPC device is unknown."""
    if "invalid lpc device configuration 'bootrom'" in text:
        return BhyveCap.NONE
    return BhyveCap.LPC_BOOTROM | BhyveCap.NVRAM


def parse_fbuf_password_probe(text: str) -> BhyveCap:
    """VNC_PASSWORD unless ``bhyve -s 0,fbuf,password=``'s stderr rejects the option."""
    if 'Invalid fbuf emulation "password"' in text:
        return BhyveCap.NONE
    return BhyveCap.VNC_PASSWORD


def parse_grub_help(text: str) -> bool:
    """Whether ``grub-bhyve --help`` lists ``--cons-dev``."""
    return "--cons-dev" in text


def caps_from_probe(
    help_text: str,
    s_help_text: str,
    bootrom_text: str = "",
    fbuf_password_text: str = "",
    grub_help_text: str | None = None,
    *,
    slirp: bool = False,
) -> Capabilities:
    """The capabilities of a bhyve from the outputs of the :data:`PROBES`.

    Args:
        help_text: ``bhyve -h`` stderr.
        s_help_text: ``bhyve -s help`` stdout.
        bootrom_text: ``bhyve -l bootrom`` stderr.
        fbuf_password_text: ``bhyve -s 0,fbuf,password=`` stderr.
        grub_help_text: ``grub-bhyve --help`` output; ``None`` when grub-bhyve is not
            installed.
        slirp: whether bhyve has the slirp network backend (FreeBSD 15 with
            net/libslirp installed); no probe output reveals it.
    """
    bhyve = (
        parse_bhyve_help(help_text)
        | parse_device_list(s_help_text)
        | parse_bootrom_probe(bootrom_text)
        | parse_fbuf_password_probe(fbuf_password_text)
    )
    if slirp:
        bhyve |= BhyveCap.SLIRP
    grub = grub_help_text is not None and parse_grub_help(grub_help_text)
    return Capabilities(bhyve=bhyve, grub_consdev=grub)
