"""The simulated ``zfs(8)`` of a simulated host: zvols as FreeBSD's OpenZFS shows them.

Linux test machines have no zvols (zfs-fuse has none), so the simulated host keeps its
volumes itself: each volume is a sparse file at ``/dev/zvol/POOL/NAME`` under the host's
root (bhyve and ``pread`` open it as they open the character device on FreeBSD), each
snapshot a sparse copy kept under ``/var/db/bhyvesim/zfs``. Sizes are real: ``used`` and
``referenced`` are the blocks the files occupy.

Supported, with OpenZFS's scripted output shapes, messages and exit statuses::

    create [-p] [-s] -V SIZE [-b BS] [-o PROP=VAL]... NAME      create NAME (filesystem)
    get [-r] -H [-p] -o name,property,value PROPS NAME...        list -H -o name [-t T] [-r] [NAME]
    snapshot NAME@SNAP...    rollback [-r] SNAP    destroy [-r] NAME    clone SNAP NAME
    promote NAME    rename OLD NEW    send SNAP    receive [-F] NAME

Pools are made by :func:`create_pool` (the simulated host's ``zpools``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from supervisor.host import Host
from supervisor.storage.copy import data_regions, sparse_copy
from supervisor.vmm.sim.host import ROOTED

STATE_DIR = "/var/db/bhyvesim/zfs"
_STREAM_MAGIC = b"BHYVESIM-ZFS-STREAM 1\n"
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class _Fail(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)B?", text.upper())
    if not m:
        raise _Fail(f"bad numeric value '{text}'", 2)
    return int(m.group(1)) * _SUFFIX[m.group(2)]


class _Pool:
    """The state of every dataset of the simulated host, in one locked JSON file."""

    def __init__(self, root: str) -> None:
        self.host = Host(root=root, rooted=ROOTED)
        self.dir = self.host.path(STATE_DIR)
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "state.json")
        self.data: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(os.path.join(self.dir, "lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.path) as f:
                    self.data = json.load(f)
            except FileNotFoundError:
                self.data = {}
            yield
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f)
            os.replace(tmp, self.path)

    # -- files ---------------------------------------------------------------------

    def dev(self, name: str) -> str:
        return self.host.path(f"/dev/zvol/{name}")

    def snapfile(self, name: str) -> str:
        return os.path.join(self.dir, "snap", name.replace("/", "%"))

    def file_of(self, name: str) -> str:
        return self.snapfile(name) if "@" in name else self.dev(name)

    def blocks(self, name: str) -> int:
        try:
            return os.stat(self.file_of(name)).st_blocks * 512
        except FileNotFoundError:
            return 0

    # -- lookups -------------------------------------------------------------------

    def get(self, name: str) -> dict[str, Any]:
        ds = self.data.get(name)
        if ds is None:
            raise _Fail(f"cannot open '{name}': dataset does not exist")
        return ds

    def children(self, name: str) -> list[str]:
        return sorted(n for n in self.data if n.startswith((name + "/", name + "@")))

    def props(self, name: str) -> dict[str, str]:
        ds = self.get(name)
        kind = ds["type"]
        refer = self.blocks(name) if kind != "filesystem" else 128 * 1024
        used = refer
        if kind != "snapshot":
            used += sum(self.blocks(c) for c in self.children(name) if "@" in c)
            if kind == "filesystem":
                used += sum(int(self.props(c)["used"]) for c in self.children(name) if "@" not in c)
        out = {
            "type": kind,
            "creation": str(ds["creation"]),
            "used": str(used),
            "referenced": str(refer),
            "origin": ds.get("origin") or "-",
            "volsize": str(ds["volsize"])
            if kind in ("volume", "snapshot") and ds.get("volsize")
            else "-",
            "volblocksize": str(ds.get("volblocksize", 16384)) if kind == "volume" else "-",
            "volmode": ds.get("volmode", "default") if kind == "volume" else "-",
            "mountpoint": "-" if kind != "filesystem" else "/" + name,
            "available": str(64 << 30),
        }
        out.update(ds.get("user", {}))
        return out

    def add(self, name: str, kind: str, **extra: Any) -> None:
        if name in self.data:
            raise _Fail(f"cannot create '{name}': dataset already exists")
        parent = name.rsplit("@", 1)[0] if "@" in name else name.rsplit("/", 1)[0]
        if "/" not in name and "@" not in name:
            raise _Fail(f"cannot create '{name}': missing dataset name", 2)
        if parent not in self.data:
            raise _Fail(f"cannot create '{name}': parent does not exist")
        if self.data[parent]["type"] == "volume" and "@" not in name:
            raise _Fail(f"cannot create '{name}': parent is not a filesystem")
        self.data[name] = {"type": kind, "creation": int(time.time()), **extra}


def create_pool(root: str, pool: str) -> None:
    """Make the simulated pool *pool* (its root filesystem) if missing."""
    p = _Pool(root)
    with p.locked():
        p.data.setdefault(pool, {"type": "filesystem", "creation": int(time.time())})
    os.makedirs(p.host.path(f"/dev/zvol/{pool}"), exist_ok=True)


def _copy(src: str, dst: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    sparse_copy(src, dst)


def _overwrite(src: str, dst: str) -> None:
    """Put *src*'s contents into the existing *dst* in place (bhyve may hold it open),
    keeping holes."""
    with open(src, "rb") as s, open(dst, "r+b") as d:
        size = os.fstat(s.fileno()).st_size
        d.truncate(0)
        d.truncate(size)
        for start, length in data_regions(s.fileno(), size):
            d.seek(start)
            d.write(os.pread(s.fileno(), length, start))


def _opts(argv: list[str], flags: str, valued: str) -> tuple[dict[str, list[str]], list[str]]:
    opts: dict[str, list[str]] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i][1:]
        for j, ch in enumerate(arg):
            if ch in valued:
                value = arg[j + 1 :] or (argv[i + 1] if i + 1 < len(argv) else None)
                if value is None:
                    raise _Fail(f"missing argument for '{ch}' option", 2)
                if not arg[j + 1 :]:
                    i += 1
                opts.setdefault(ch, []).append(value)
                break
            if ch not in flags:
                raise _Fail(f"invalid option '{ch}'", 2)
            opts.setdefault(ch, []).append("")
        i += 1
    return opts, argv[i:]


def _cmd_create(p: _Pool, argv: list[str]) -> str:
    opts, args = _opts(argv, "ps", "Vbo")
    if len(args) != 1:
        raise _Fail("missing dataset name" if not args else "too many arguments", 2)
    name = args[0]
    props = dict(o.split("=", 1) for o in opts.get("o", []) if "=" in o)
    if "V" not in opts:
        p.add(name, "filesystem")
        return ""
    volsize = _size(opts["V"][0])
    bs = _size(opts.get("b", [props.pop("volblocksize", "16K")])[0])
    if volsize % bs:
        raise _Fail(f"cannot create '{name}': volume size must be a multiple of volume block size")
    p.add(name, "volume", volsize=volsize, volblocksize=bs, volmode=props.pop("volmode", "default"))
    dev = p.dev(name)
    os.makedirs(os.path.dirname(dev), exist_ok=True)
    with open(dev, "wb") as f:
        f.truncate(volsize)
    return ""


def _cmd_get(p: _Pool, argv: list[str]) -> str:
    opts, args = _opts(argv, "rHp", "od")
    if len(args) < 1:
        raise _Fail("missing property argument", 2)
    fields = opts.get("o", ["name,property,value,source"])[0].split(",")
    props = args[0].split(",")
    names = args[1:] or sorted(p.data)
    if "r" in opts:
        names = [m for n in names for m in [n, *p.children(n)]]
    lines = []
    for name in names:
        values = p.props(name)
        for prop in props:
            row = {
                "name": name,
                "property": prop,
                "value": values.get(prop, "-"),
                "source": "-",
            }
            lines.append("\t".join(row[f] for f in fields))
    return "".join(line + "\n" for line in lines)


def _cmd_list(p: _Pool, argv: list[str]) -> str:
    opts, args = _opts(argv, "rHp", "otsd")
    types = set(opts.get("t", ["filesystem,volume"])[0].split(","))
    if "all" in types:
        types = {"filesystem", "volume", "snapshot"}
    names = args or sorted(n for n in p.data if "/" not in n and "@" not in n)
    out = []
    for name in names:
        p.get(name)
        for n in [name, *p.children(name)] if "r" in opts or not args else [name]:
            if p.data[n]["type"] in types:
                out.append(n)
    return "".join(n + "\n" for n in sorted(set(out), key=out.index))


def _cmd_snapshot(p: _Pool, argv: list[str]) -> str:
    _, args = _opts(argv, "r", "o")
    for snap in args:
        base, _, _ = snap.partition("@")
        ds = p.get(base)
        p.add(snap, "snapshot", volsize=ds.get("volsize"))
        if ds["type"] == "volume":
            _copy(p.dev(base), p.snapfile(snap))
    return ""


def _cmd_rollback(p: _Pool, argv: list[str]) -> str:
    opts, args = _opts(argv, "rRf", "")
    snap = args[0]
    p.get(snap)
    base = snap.split("@")[0]
    snaps = [c for c in p.children(base) if "@" in c and c.split("@")[0] == base]
    newer = [
        s
        for s in snaps
        if p.data[s]["creation"] > p.data[snap]["creation"]
        or (
            p.data[s]["creation"] == p.data[snap]["creation"] and snaps.index(s) > snaps.index(snap)
        )
    ]
    if newer and "r" not in opts:
        raise _Fail(
            f"cannot rollback to '{snap}': more recent snapshots or bookmarks exist\n"
            "use '-r' to force deletion of the following snapshots and bookmarks:\n"
            + "\n".join(newer)
        )
    for s in newer:
        _destroy_one(p, s)
    if p.data[base]["type"] == "volume":
        _overwrite(p.snapfile(snap), p.dev(base))
    return ""


def _destroy_one(p: _Pool, name: str) -> None:
    clones = [n for n, d in p.data.items() if d.get("origin") == name]
    if clones:
        raise _Fail(
            f"cannot destroy '{name}': snapshot has dependent clones\n"
            "use '-R' to destroy the following datasets:\n" + "\n".join(clones)
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p.file_of(name))
    del p.data[name]


def _cmd_destroy(p: _Pool, argv: list[str]) -> str:
    opts, args = _opts(argv, "rRfnpv", "")
    name = args[0]
    p.get(name)
    kids = p.children(name) if "@" not in name else []
    if kids and "r" not in opts:
        kind = p.data[name]["type"]
        raise _Fail(
            f"cannot destroy '{name}': {kind} has children\n"
            "use '-r' to destroy the following datasets:\n" + "\n".join(kids)
        )
    for n in sorted(kids, key=lambda n: -n.count("/") - ("@" in n)):
        _destroy_one(p, n)
    _destroy_one(p, name)
    return ""


def _cmd_clone(p: _Pool, argv: list[str]) -> str:
    _, args = _opts(argv, "p", "o")
    snap, target = args
    s = p.get(snap)
    if "@" not in snap:
        raise _Fail(f"cannot clone '{snap}': not a snapshot", 2)
    kind = p.data[snap.split("@")[0]]["type"]
    p.add(target, kind, volsize=s.get("volsize"), origin=snap)
    if kind == "volume":
        _copy(p.snapfile(snap), p.dev(target))
    return ""


def _cmd_promote(p: _Pool, argv: list[str]) -> str:
    name = argv[-1]
    origin = p.get(name).get("origin")
    if not origin:
        raise _Fail(f"cannot promote '{name}': not a cloned filesystem")
    base, _, _ = origin.partition("@")
    created = p.data[origin]["creation"]
    moving = [
        s
        for s in p.children(base)
        if "@" in s and s.split("@")[0] == base and p.data[s]["creation"] <= created
    ]
    for s in moving:
        new = f"{name}@{s.split('@')[1]}"
        p.data[new] = p.data.pop(s)
        if os.path.exists(p.snapfile(s)):
            os.replace(p.snapfile(s), p.snapfile(new))
        for d in p.data.values():
            if d.get("origin") == s:
                d["origin"] = new
    p.data[name].pop("origin", None)
    p.data[base]["origin"] = f"{name}@{origin.split('@')[1]}"
    return ""


def _cmd_rename(p: _Pool, argv: list[str]) -> str:
    _, args = _opts(argv, "fpu", "")
    old, new = args
    p.get(old)
    for n in [old, *p.children(old)]:
        m = new + n[len(old) :]
        p.data[m] = p.data.pop(n)
        if os.path.exists(p.file_of(n)):
            os.makedirs(os.path.dirname(p.file_of(m)), exist_ok=True)
            os.replace(p.file_of(n), p.file_of(m))
    return ""


def _send_source(p: _Pool, argv: list[str]) -> tuple[bytes, str]:
    _, args = _opts(argv, "RDpvceLw", "iI")
    snap = args[0]
    s = p.get(snap)
    if "@" not in snap:
        raise _Fail(f"cannot send '{snap}': not a snapshot", 1)
    if os.isatty(1):
        raise _Fail(
            "Error: Stream can not be written to a terminal.\nYou must redirect standard output."
        )
    head = json.dumps({"snapshot": snap, "volsize": s.get("volsize")}).encode() + b"\n"
    return _STREAM_MAGIC + head, p.file_of(snap)


def _send(pool: _Pool, argv: list[str]) -> None:
    # The stream is written outside the lock: a receive on this host needs it. Like a
    # real send stream it carries the written blocks only: "OFFSET LENGTH" then data.
    with pool.locked():
        head, path = _send_source(pool, argv)
        fd = os.open(path, os.O_RDONLY)  # the snapshot stays readable once open
    out = sys.stdout.buffer
    out.write(head)
    try:
        for start, length in data_regions(fd, os.fstat(fd).st_size):
            for off in range(start, start + length, 1 << 20):
                data = os.pread(fd, min(1 << 20, start + length - off), off)
                out.write(f"{off} {len(data)}\n".encode() + data)
    finally:
        os.close(fd)
    out.write(b"end\n")
    out.flush()


def _receive(pool: _Pool, argv: list[str]) -> None:
    _, args = _opts(argv, "vnFsud", "o")
    target = args[0]
    inp = sys.stdin.buffer
    if inp.readline() != _STREAM_MAGIC:
        raise _Fail("cannot receive: invalid stream (bad magic number)")
    head = json.loads(inp.readline())
    snapname = head["snapshot"].split("@")[1]
    # Read the stream first, outside the lock, into a file beside the state.
    tmp = os.path.join(pool.dir, f"recv.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            while (record := inp.readline()) != b"end\n":
                try:
                    offset, length = (int(x) for x in record.split())
                except ValueError:
                    raise _Fail("cannot receive: invalid stream (bad record)") from None
                data = inp.read(length)
                if len(data) != length:
                    raise _Fail("cannot receive: stream ended early")
                f.seek(offset)
                f.write(data)
            f.truncate(head["volsize"])
        with pool.locked():
            pool.add(target, "volume", volsize=head["volsize"])
            pool.add(f"{target}@{snapname}", "snapshot", volsize=head["volsize"])
            dev = pool.dev(target)
            os.makedirs(os.path.dirname(dev), exist_ok=True)
            _copy(tmp, pool.snapfile(f"{target}@{snapname}"))
            os.replace(tmp, dev)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


_COMMANDS = {
    "create": _cmd_create,
    "get": _cmd_get,
    "list": _cmd_list,
    "snapshot": _cmd_snapshot,
    "snap": _cmd_snapshot,
    "rollback": _cmd_rollback,
    "destroy": _cmd_destroy,
    "clone": _cmd_clone,
    "promote": _cmd_promote,
    "rename": _cmd_rename,
}


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the simulated ``/sbin/zfs`` of the host at *root*."""
    args = list(argv[1:])
    if not args or args[0] not in (*_COMMANDS, "send", "receive", "recv"):
        sys.stderr.write(f"unrecognized command '{args[0]}'\n" if args else "missing command\n")
        return 2
    pool = _Pool(root)
    try:
        if args[0] == "send":
            _send(pool, args[1:])
            return 0
        if args[0] in ("receive", "recv"):
            _receive(pool, args[1:])
            return 0
        with pool.locked():
            out = _COMMANDS[args[0]](pool, args[1:])
    except _Fail as e:
        sys.stderr.write(e.message + "\n")
        return e.status
    except (IndexError, ValueError):
        sys.stderr.write(f"missing argument\nusage: zfs {args[0]} ...\n")
        return 2
    sys.stdout.write(out)
    return 0
