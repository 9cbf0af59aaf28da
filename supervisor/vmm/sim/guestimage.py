"""The real guest's boot image, built from Debian packages into a cache.

The QEMU guest engine (:mod:`supervisor.vmm.sim.qemu`) boots a real Linux: Debian's
cloud kernel and a small busybox initramfs. Nothing of it is committed; this module
builds it on the machine that runs the tests or the demo:

- the kernel comes from ``linux-image-cloud-amd64`` (``apt-get download`` of the
  versioned package it depends on, unpacked with ``dpkg-deb -x``: nothing is
  installed on this machine);
- the initramfs holds the static busybox of ``busybox-static`` (downloaded and unpacked
  the same way, so it does not matter that the host may have the conflicting dynamic
  ``busybox`` package installed), the virtio, ACPI
  button and evdev modules of that kernel (loaded in dependency order), and
  ``qemu-ga`` of ``qemu-guest-agent`` with the shared libraries it links;
- busybox ``init`` runs ``/etc/rc`` (mounts, modules, ``/dev/virtio-ports`` links,
  ``acpid`` for the power button, the first disk on ``/mnt`` when it has a filesystem,
  ``qemu-ga``, then the banner) and keeps a shell on
  ``ttyS0``. The power button runs ``poweroff -f``: the kernel's own ACPI power-off.

The image lives in ``$BHYVESUP_GUEST_CACHE`` (default ``~/.cache/bhyvesup/guest-image``)
as ``vmlinuz``, ``initrd.img`` and ``image.json``, keyed by the versions of the three
packages, so a new kernel in the archive builds a new image and an unchanged one is
reused. A missing package or tool is a :class:`GuestImageError` that names it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import attrs

from supervisor._record import Record
from supervisor.errors import SupervisorError

KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
AGENT_PACKAGE = "qemu-guest-agent"
#: Where the packages put the programs the initramfs copies (busybox: inside its .deb).
BUSYBOX_PATH = "bin/busybox"
AGENT_PATH = "/usr/sbin/qemu-ga"
#: Host tools the build runs, and the Debian package that has each.
TOOLS: dict[str, str] = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "depmod": "kmod",
    "cpio": "cpio",
    "gzip": "gzip",
    "ldd": "libc-bin",
}
#: Kernel modules the guest loads (with what they depend on): the virtio transport and
#: devices, the ACPI power button and the event device busybox acpid reads it from.
MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "button",
    "evdev",
)
#: Printed on ttyS0 once the guest is up; tests and users wait for it.
BANNER = "bhyvesup real guest ready"
#: Bumped whenever the initramfs layout changes, so cached images are rebuilt.
FORMAT = 2
CMDLINE = "console=ttyS0,115200 quiet panic=-1 no_timer_check"
_ENV_CACHE = "BHYVESUP_GUEST_CACHE"


class GuestImageError(SupervisorError):
    """The guest image cannot be built (the message names the missing part)."""


@attrs.frozen(repr=False)
class GuestImage(Record):
    """A built image: what QEMU's ``-kernel``, ``-initrd`` and ``-append`` take."""

    kernel: str
    initrd: str
    release: str
    cmdline: str
    key: str

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> GuestImage:
        return cls(**json.loads(text))


def cache_dir() -> Path:
    """Where the image is kept: ``$BHYVESUP_GUEST_CACHE`` or the user's cache."""
    env = os.environ.get(_ENV_CACHE)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bhyvesup" / "guest-image"


# -- pure parts ----------------------------------------------------------------------


def module_order(modules_dep: str, wanted: Iterable[str]) -> list[str]:
    """The module files to load for *wanted*, each after what it depends on.

    *modules_dep* is depmod's ``modules.dep`` (``path: dep dep...``, deps listed
    nearest first); module names match file names with ``-`` and ``_`` equal.

    Raises:
        GuestImageError: a wanted module is not in the kernel package.
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        path, sep, rest = line.partition(":")
        if not sep:
            continue
        deps[path] = rest.split()
        by_name[_module_name(path)] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        # modules.dep lists a module's full closure; load the farthest first.
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        found = by_name.get(name.replace("-", "_"))
        if found is None:
            raise GuestImageError(f"kernel module {name!r} is not in {KERNEL_PACKAGE}")
        visit(found)
    return order


def _module_name(path: str) -> str:
    base = os.path.basename(path)
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def parse_ldd(text: str) -> list[str]:
    """The absolute paths of the shared objects in ``ldd`` output (loader included).

    Raises:
        GuestImageError: a library is "not found" (named in the message).
    """
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if "=> not found" in line:
            raise GuestImageError(f"qemu-ga needs {line.split()[0]}, which is not installed")
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)", line)
        if match:
            out.append(match.group(1))
    return out


def kernel_package_name(depends: str) -> str:
    """The versioned kernel package ``apt-cache depends linux-image-cloud-amd64`` names."""
    for line in depends.splitlines():
        match = re.match(r"\s*\|?Depends:\s*(linux-image-\d\S*)", line)
        if match:
            return match.group(1)
    raise GuestImageError(f"{KERNEL_PACKAGE}: no linux-image package among its dependencies")


def inittab() -> str:
    """busybox init's table: rc at boot, a shell on ttyS0, the shutdown steps."""
    return (
        "::sysinit:/etc/rc\n"
        "ttyS0::respawn:-/bin/sh\n"
        "::ctrlaltdel:/bin/reboot\n"
        "::shutdown:/bin/echo bhyvesup real guest: going down\n"
    )


def rc_script(modules: Sequence[str]) -> str:
    """``/etc/rc``: mount, load *modules* in order, start acpid and qemu-ga, banner."""
    loads = "".join(f"insmod /lib/modules/{m} 2>/dev/null\n" for m in modules)
    return f"""#!/bin/sh
PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp /var/run /var/log /dev/virtio-ports
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
hostname bhyvesup-guest
{loads}# udev would link the virtio-serial ports by name; there is no udev here.
for port in /sys/class/virtio-ports/vport*; do
    [ -r "$port/name" ] || continue
    ln -sf "/dev/${{port##*/}}" "/dev/virtio-ports/$(cat "$port/name")"
done
# The ACPI power button arrives as KEY_POWER on an event device; busybox acpid runs
# /etc/acpi/PWRF/00000080 for it.
acpid -c /etc/acpi -l /dev/null
# The first disk, when it holds a filesystem, is the guest's data (for fs_freeze to find).
mkdir -p /mnt
mount /dev/vda /mnt 2>/dev/null
if [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ]; then
    qemu-ga -d -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 \\
        -f /run/qemu-ga.pid -l /var/log/qemu-ga.log
fi
echo "{BANNER}: Linux $(uname -r)"
"""


def power_button_script() -> str:
    """What acpid runs for the power button: the kernel's own ACPI power-off."""
    return (
        "#!/bin/sh\n"
        "echo 'bhyvesup real guest: power button: powering off' >/dev/console\n"
        "poweroff\n"
    )


# -- building ------------------------------------------------------------------------


def _run(argv: Sequence[str], *, cwd: str | Path | None = None) -> str:
    try:
        proc = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, check=False, timeout=600
        )
    except FileNotFoundError:
        tool = argv[0]
        raise GuestImageError(
            f"{tool} is not installed (Debian package {TOOLS.get(tool, tool)})"
        ) from None
    if proc.returncode != 0:
        raise GuestImageError(
            f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}"
        )
    return proc.stdout


def _have_tool(tool: str) -> bool:
    # depmod lives in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(tool) is not None or os.path.exists(f"/usr/sbin/{tool}")


def _installed_version(package: str, path: str) -> str:
    try:
        version = _run(["dpkg-query", "-W", "-f", "${Version}", package]).strip()
    except GuestImageError:
        version = ""
    if not version or not os.path.exists(path):
        raise GuestImageError(
            f"{package} is not installed (needed for {path}): apt-get install {package}"
        )
    return version


def _candidate_version(package: str) -> str:
    text = _run(["apt-cache", "show", "--no-all-versions", package])
    for line in text.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise GuestImageError(f"{package}: apt knows no version of it (run apt-get update)")


def load(cache: Path | None = None) -> GuestImage | None:
    """The image already in *cache*, if one is there and complete."""
    cache = cache or cache_dir()
    try:
        image = GuestImage.from_json((cache / "image.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    if not (os.path.exists(image.kernel) and os.path.exists(image.initrd)):
        return None
    return image


def build(
    cache: Path | None = None, *, force: bool = False, log: Callable[[str], None] | None = None
) -> GuestImage:
    """Build the image into *cache* (or reuse it when the packages have not changed).

    Raises:
        GuestImageError: a package or tool is missing, or a step failed.
    """
    cache = cache or cache_dir()
    say = log or (lambda _msg: None)
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "dpkg-query", "depmod", "cpio", "gzip"):
        if not _have_tool(tool):
            raise GuestImageError(f"{tool} is not installed (Debian package {TOOLS[tool]})")
    busybox_version = _candidate_version(BUSYBOX_PACKAGE)
    agent_version = _installed_version(AGENT_PACKAGE, AGENT_PATH)
    kernel_pkg = kernel_package_name(_run(["apt-cache", "depends", KERNEL_PACKAGE]))
    kernel_version = _candidate_version(kernel_pkg)
    key = re.sub(
        r"[^A-Za-z0-9._+-]",
        "_",
        f"{kernel_pkg}_{kernel_version}+busybox_{busybox_version}+qemu-ga_{agent_version}+f{FORMAT}",
    )
    existing = load(cache)
    if existing is not None and existing.key == key and not force:
        say(f"guest image up to date in {cache}")
        return existing
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build.", dir=cache) as tmp:
        work = Path(tmp)
        say(f"downloading {kernel_pkg} {kernel_version}")
        _run(["apt-get", "download", "-q", f"{kernel_pkg}={kernel_version}"], cwd=work)
        debs = sorted(work.glob(f"{kernel_pkg}_*.deb"))
        if not debs:
            raise GuestImageError(f"apt-get download {kernel_pkg} left no .deb")
        kroot = work / "kernel"
        _run(["dpkg-deb", "-x", str(debs[0]), str(kroot)])
        say(f"downloading {BUSYBOX_PACKAGE} {busybox_version}")
        _run(["apt-get", "download", "-q", f"{BUSYBOX_PACKAGE}={busybox_version}"], cwd=work)
        bdebs = sorted(work.glob(f"{BUSYBOX_PACKAGE}_*.deb"))
        if not bdebs:
            raise GuestImageError(f"apt-get download {BUSYBOX_PACKAGE} left no .deb")
        broot = work / "busybox"
        _run(["dpkg-deb", "-x", str(bdebs[0]), str(broot)])
        busybox = broot / BUSYBOX_PATH
        if not busybox.exists():
            busybox = broot / "usr" / BUSYBOX_PATH
        if not busybox.exists():
            raise GuestImageError(f"{BUSYBOX_PACKAGE}: no {BUSYBOX_PATH} in the package")
        releases = sorted(p.name for p in (kroot / "lib" / "modules").iterdir())
        if len(releases) != 1:
            raise GuestImageError(f"{kernel_pkg}: expected one kernel release, found {releases}")
        release = releases[0]
        _run(["depmod", "-b", str(kroot), release])
        moddir = kroot / "lib" / "modules" / release
        order = module_order((moddir / "modules.dep").read_text(encoding="utf-8"), MODULES)
        say(f"initramfs for Linux {release}: {len(order)} modules, busybox, qemu-ga")
        initrd = _make_initramfs(work, moddir, order, busybox)
        out = work / "out"
        out.mkdir()
        shutil.copy2(kroot / "boot" / f"vmlinuz-{release}", out / "vmlinuz")
        shutil.copy2(initrd, out / "initrd.img")
        final = cache / key
        image = GuestImage(
            kernel=str(final / "vmlinuz"),
            initrd=str(final / "initrd.img"),
            release=release,
            cmdline=CMDLINE,
            key=key,
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)
    _prune(cache, keep=key)
    tmp_json = cache / f"image.json.{os.getpid()}.tmp"
    tmp_json.write_text(image.to_json(), encoding="utf-8")
    os.replace(tmp_json, cache / "image.json")
    say(f"guest image ready: {image.kernel} {image.initrd}")
    return image


def _prune(cache: Path, *, keep: str) -> None:
    """Remove images of older package versions."""
    for entry in cache.iterdir():
        if entry.is_dir() and entry.name != keep and "+f" in entry.name:
            shutil.rmtree(entry, ignore_errors=True)


def _make_initramfs(work: Path, moddir: Path, modules: Sequence[str], busybox: Path) -> Path:
    stage = work / "initramfs"
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/acpi/PWRF", "lib/modules", "proc"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    for d in ("sys", "dev", "run", "tmp", "var/run", "var/log", "root"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, stage / "bin" / "busybox")
    for applet in _run([str(busybox), "--list"]).split():
        if applet != "busybox":
            link = stage / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
    (stage / "init").symlink_to("bin/busybox")
    (stage / "sbin" / "init").symlink_to("../bin/busybox")
    for rel in modules:
        dest = stage / "lib" / "modules" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / rel, dest)
    shutil.copy2(AGENT_PATH, stage / "usr" / "sbin" / "qemu-ga")
    for lib in parse_ldd(_run(["ldd", AGENT_PATH])):
        dest = stage / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)
    _write(stage / "etc" / "inittab", inittab(), 0o644)
    _write(stage / "etc" / "rc", rc_script(modules), 0o755)
    _write(stage / "etc" / "acpi" / "PWRF" / "00000080", power_button_script(), 0o755)
    _write(stage / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
    _write(stage / "etc" / "group", "root:x:0:\n", 0o644)
    _write(stage / "etc" / "profile", "export PS1='guest# '\n", 0o644)
    out = work / "initrd.img"
    names = sorted(
        os.path.relpath(os.path.join(d, n), stage)
        for d, dirs, files in os.walk(stage)
        for n in (*dirs, *files)
    )
    listing = "".join(f"{n}\n" for n in [".", *names]).encode()
    with open(out, "wb") as f:
        cpio = subprocess.Popen(
            ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
            cwd=stage,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        gz = subprocess.Popen(["gzip", "-1", "-n"], stdin=cpio.stdout, stdout=f)
        assert cpio.stdin is not None
        assert cpio.stdout is not None
        cpio.stdout.close()
        cpio.stdin.write(listing)
        cpio.stdin.close()
        if cpio.wait() != 0 or gz.wait() != 0:
            raise GuestImageError("cpio/gzip failed writing the initramfs")
    return out


def _write(path: Path, text: str, mode: int) -> None:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)


def main(argv: Sequence[str] | None = None) -> int:
    """``build-guest-image.sh [--force] [--cache DIR]``: build or reuse the image."""
    import argparse

    p = argparse.ArgumentParser(
        prog="build-guest-image", description="build the real guest's kernel and initramfs"
    )
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--cache", help=f"cache directory (default ${_ENV_CACHE} or ~/.cache/...)")
    args = p.parse_args(argv)
    try:
        image = build(
            Path(args.cache) if args.cache else None,
            force=args.force,
            log=lambda m: print(m, file=sys.stderr),
        )
    except GuestImageError as e:
        print(f"build-guest-image: {e}", file=sys.stderr)
        return 1
    print(image.to_json(), end="")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
