"""The description of one host: where its tools, devices and state live.

All supervisor code names FreeBSD paths (``/dev/vmm/NAME``, ``/usr/sbin/bhyvectl``,
``/var/run/bhyvesupd``) and asks the :class:`Host` where that path is on *this*
machine. On a real FreeBSD host the answer is the path itself. A simulated host is the
same layout rooted at a directory: its system trees (``/dev``, ``/var``, ``/usr``,
``/etc``, ``/boot``) live under that directory, where the simulator has installed its
own ``bhyve``, ``bhyvectl`` and friends at the FreeBSD paths. Paths outside those trees
(a disk image in ``/tank/vm`` or a test's ``/tmp``) are shared with the machine, the way
a jail with nullfs mounts would see them.

That is the whole difference between the two: the supervisor runs the same argv (which
carries FreeBSD paths), parses the same output and reads guest memory with the same
``pread``; only :meth:`Host.path` maps a name to a place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from supervisor._record import Record

#: Where each host tool lives on FreeBSD 14/15 (base system or ports under /usr/local).
TOOL_PATHS: Mapping[str, str] = {
    "bhyve": "/usr/sbin/bhyve",
    "bhyvectl": "/usr/sbin/bhyvectl",
    "bhyveload": "/usr/sbin/bhyveload",
    "grub-bhyve": "/usr/local/sbin/grub-bhyve",
    "kldstat": "/sbin/kldstat",
    "sysctl": "/sbin/sysctl",
    "pciconf": "/usr/sbin/pciconf",
    "devctl": "/usr/sbin/devctl",
    "ifconfig": "/sbin/ifconfig",
    "pfctl": "/sbin/pfctl",
    "ipfw": "/sbin/ipfw",
    "zfs": "/sbin/zfs",
    "zpool": "/sbin/zpool",
    "dnsmasq": "/usr/local/sbin/dnsmasq",
    "procstat": "/usr/bin/procstat",
    "ps": "/bin/ps",
}

#: FreeBSD locations the supervisor uses (design brief, "Names and paths").
DEV_DIR = "/dev"
VMM_DIR = "/dev/vmm"
CONFIG_FILE = "/usr/local/etc/bhyvesupd.toml"
DOMAINS_DIR = "/usr/local/etc/bhyvesupd/domains"
NETWORKS_DIR = "/usr/local/etc/bhyvesupd/networks"
RUN_DIR = "/var/run/bhyvesupd"
SOCKET_PATH = "/var/run/bhyvesupd/bhyvesupd.sock"
LOG_DIR = "/var/log/bhyvesupd"
#: State kept across host reboots (DHCP leases, the cache of parsed definitions).
DB_DIR = "/var/db/bhyvesupd"
FIRMWARE_DIR = "/usr/local/share/uefi-firmware"

#: How many mapped paths a host remembers before it starts over.
_MAPPED_MAX = 4096

#: The system trees a simulated host keeps under its own root.
SYSTEM_TREES: tuple[str, ...] = ("/dev", "/var", "/usr", "/etc", "/boot", "/sbin", "/bin")


def _is_normal(path: str) -> bool:
    """Whether normpath would leave the absolute *path* as it is (a quick, safe test:
    False may still be normal)."""
    return "//" not in path and "/." not in path and not path.endswith("/")


@attrs.frozen(repr=False)
class Host(Record):
    """Where a host keeps things.

    Args:
        root: the directory that FreeBSD's system trees are rooted at: ``/`` for the
            real host, the simulator's directory for a simulated one.
        rooted: the system trees that live under ``root``; any other absolute path is
            used as it is.
        env: extra environment variables for every host tool this host runs.
    """

    root: str = "/"
    rooted: tuple[str, ...] = SYSTEM_TREES
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: Paths already mapped: a guest start maps a dozen, each a normpath and a scan
    #: of the trees. Not part of the host's identity.
    _mapped: dict[str, str] = attrs.field(factory=dict, init=False, eq=False, repr=False)
    _is_rooted: bool = attrs.field(init=False, eq=False, repr=False)
    #: ``root`` without a trailing slash, and each rooted tree with one.
    _root_base: str = attrs.field(init=False, eq=False, repr=False)
    _tree_prefixes: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_is_rooted", os.path.normpath(self.root) != "/")
        object.__setattr__(self, "_root_base", self.root.rstrip("/"))
        object.__setattr__(self, "_tree_prefixes", tuple(f"{t}/" for t in self.rooted))

    @property
    def is_rooted(self) -> bool:
        """Whether FreeBSD paths are mapped under a directory other than ``/``."""
        return self._is_rooted

    def path(self, freebsd_path: str) -> str:
        """The place on this machine of the FreeBSD path *freebsd_path*.

        Raises:
            ValueError: *freebsd_path* is not absolute.
        """
        mapped = self._mapped.get(freebsd_path)
        if mapped is not None:
            return mapped
        if not freebsd_path.startswith("/"):
            raise ValueError(f"host path must be absolute, got {freebsd_path!r}")
        mapped = self._map(freebsd_path)
        if len(self._mapped) >= _MAPPED_MAX:
            self._mapped.clear()
        self._mapped[freebsd_path] = mapped
        return mapped

    def _map(self, freebsd_path: str) -> str:
        if not self._is_rooted:
            return freebsd_path
        # A start maps each of its guest's paths for the first time: the common,
        # already normal path skips normpath (pure Python before 3.12).
        norm = freebsd_path if _is_normal(freebsd_path) else os.path.normpath(freebsd_path)
        if norm.startswith(self._tree_prefixes) or norm in self.rooted:
            return self._root_base + norm
        return freebsd_path

    def unpath(self, local_path: str) -> str:
        """The FreeBSD path of a place on this machine: the inverse of :meth:`path`."""
        if not self.is_rooted:
            return local_path
        root = os.path.normpath(self.root)
        norm = os.path.normpath(local_path)
        if norm.startswith(root + "/"):
            inner = norm[len(root) :]
            for tree in self.rooted:
                if inner == tree or inner.startswith(tree + "/"):
                    return inner
        return local_path

    def tool(self, name: str) -> str:
        """The executable to run for the host tool *name* (``bhyvectl``, ``zfs``...)."""
        try:
            return self.path(TOOL_PATHS[name])
        except KeyError:
            raise ValueError(f"unknown host tool {name!r}") from None

    def vmm_device(self, vm_name: str) -> str:
        """The local path of ``/dev/vmm/NAME``, the guest's memory device."""
        return self.path(f"{VMM_DIR}/{vm_name}")


#: The real FreeBSD host.
FREEBSD = Host()
