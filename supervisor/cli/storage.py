"""bhyvesupctl verbs for disks, disk snapshots, jobs and the guest agent.

Names follow virsh where it has one (``domblkinfo``, ``domblkstat``, ``blockcopy``,
``blockpull``, ``blockcommit``, ``domfsfreeze``, ``domfsthaw``, ``domtime``).
``blockpeek`` streams any length to a file in one raw stream. Job verbs with ``--wait``
print progress until the job ends (events subscribed before the job starts, so none is
missed).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, BinaryIO

from supervisor.cli import render
from supervisor.cli.control import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    connect,
    error,
    out,
    verb,
)
from supervisor.rpc.client import Client


def _json(args: argparse.Namespace, value: Any) -> bool:
    if getattr(args, "json", False):
        out(render.render_json(value))
        return True
    return False


def _kv(pairs: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}" for k, v in pairs)


def cmd_domblkinfo(args: argparse.Namespace) -> int:
    with connect(args) as c:
        info = c.call("domain.get_block_info", name=args.name, disk=args.disk)
    if not _json(args, info):
        out(
            _kv(
                [
                    ("Capacity", info["capacity"]),
                    ("Allocation", info["allocation"]),
                    ("Physical", info["physical"]),
                ]
            )
        )
    return EXIT_OK


def cmd_domblkstat(args: argparse.Namespace) -> int:
    with connect(args) as c:
        stats = c.call("domain.block_stats", name=args.name, disk=args.disk)
    if not _json(args, stats):
        keys = [k for k in ("rd_req", "rd_bytes", "wr_req", "wr_bytes") if k in stats]
        out("\n".join(f"{args.disk} {k} {stats[k]}" for k in keys))
    return EXIT_OK


def _output(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdout.buffer
    return open(path, "wb")  # closed by the caller


def cmd_blockpeek(args: argparse.Namespace) -> int:
    if args.offset < 0 or args.size <= 0:
        error("OFFSET must be >= 0 and SIZE > 0")
        return EXIT_USAGE
    dest = _output(args.output)
    try:
        with connect(args) as c:
            # One call: the daemon writes the raw bytes into our file itself, no base64,
            # no 1 MiB cap.
            c.read_into(
                "domain.block_peek",
                dest,
                name=args.name,
                disk=args.disk,
                offset=args.offset,
                size=args.size,
            )
        dest.flush()
    finally:
        if dest is not sys.stdout.buffer:
            dest.close()
    return EXIT_OK


def _progress_line(job: dict[str, Any]) -> str:
    total = job.get("total") or 0
    pct = f"{100 * job['done'] / total:5.1f}%" if total else "  ?  "
    return f"job {job['id']} {job['kind']} {pct} {job['done']}/{total} {job.get('unit', 'bytes')}"


def _run_job(args: argparse.Namespace, method: str, **params: Any) -> int:
    with connect(args, timeout=None if args.wait else 60.0) as c:
        if args.wait:
            c.call("events.subscribe")
        job = c.call(method, name=args.name, **params)
        if not args.wait:
            out(render.render_json(job) if args.json else f"job {job['id']} started")
            return EXIT_OK
        return _follow(c, args, int(job["id"]))


def _follow(c: Client, args: argparse.Namespace, job_id: int) -> int:
    for note in c.notifications(timeout=None):
        ev = note.params
        if note.method != "event" or not isinstance(ev, dict) or ev.get("id") != job_id:
            continue
        if ev["type"] == "job.progress":
            if not args.json:
                out(_progress_line(ev))
            continue
        if ev["type"].startswith("job."):
            if args.json:
                out(render.render_json({k: v for k, v in ev.items() if k != "time"}))
            elif ev["type"] == "job.completed":
                out(f"job {job_id} completed: {render.render_json_line(ev.get('result', {}))}")
            else:
                error(f"job {job_id} {ev['state']}: {ev.get('error') or ''}".rstrip(": "))
            return EXIT_OK if ev["type"] == "job.completed" else EXIT_FAILURE
    return EXIT_FAILURE


def cmd_blockcopy(args: argparse.Namespace) -> int:
    return _run_job(
        args,
        "domain.block_copy",
        disk=args.disk,
        dest=args.dest,
        pivot_to_copy=args.pivot,
        bandwidth=args.bandwidth,
        sync=args.sync,
    )


def cmd_blockpull(args: argparse.Namespace) -> int:
    return _run_job(args, "domain.block_pull", disk=args.disk)


def cmd_blockcommit(args: argparse.Namespace) -> int:
    return _run_job(args, "domain.block_commit", disk=args.disk, base=args.base)


def cmd_job_list(args: argparse.Namespace) -> int:
    with connect(args) as c:
        jobs = c.call("job.list")
    if not _json(args, jobs):
        for j in jobs:
            out(f"{_progress_line(j)} {j['guest']} {j['disk']} {j['state']}")
    return EXIT_OK


def cmd_job_cancel(args: argparse.Namespace) -> int:
    with connect(args, timeout=60.0) as c:
        job = c.call("job.cancel", id=args.id)
    out(f"job {job['id']} {job['state']}")
    return EXIT_OK


def cmd_snapshot_create(args: argparse.Namespace) -> int:
    with connect(args) as c:
        r = c.call("domain.snapshot_create", name=args.name, snapshot=args.snapshot)
    if not _json(args, r):
        how = "consistent (frozen by the guest agent)" if r["consistent"] else "crash-consistent"
        out(f"snapshot {args.snapshot} of {', '.join(r['datasets'])}: {how}")
    return EXIT_OK


def cmd_snapshot_list(args: argparse.Namespace) -> int:
    with connect(args) as c:
        snaps = c.call("domain.snapshot_list", name=args.name)
    if not _json(args, snaps):
        cols = ("name", "dataset", "used", "referenced", "creation")
        rows = [[str(s.get(k, "-")) for k in cols] for s in snaps]
        if not args.scripted:
            rows.insert(0, [k.upper() for k in cols])
        if args.scripted:
            out("\n".join("\t".join(r) for r in rows))
        else:
            widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
            out(
                "\n".join(
                    "  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()
                    for r in rows
                )
            )
    return EXIT_OK


def _snapshot_simple(method: str, done: str) -> Any:
    def handler(args: argparse.Namespace) -> int:
        with connect(args) as c:
            r = c.call(method, name=args.name, snapshot=args.snapshot)
        out(f"snapshot {args.snapshot} {done} on {', '.join(r['datasets'])}")
        return EXIT_OK

    return handler


def cmd_fsfreeze(args: argparse.Namespace) -> int:
    with connect(args, timeout=120.0) as c:
        r = c.call("domain.fs_freeze", name=args.name, mountpoints=args.mountpoint or None)
    out(f"Froze {r['frozen']} filesystem(s)")
    return EXIT_OK


def cmd_fsthaw(args: argparse.Namespace) -> int:
    with connect(args, timeout=120.0) as c:
        r = c.call("domain.fs_thaw", name=args.name)
    out(f"Thawed {r['thawed']} filesystem(s)")
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    with connect(args) as c:
        if args.what == "ping":
            c.call("domain.agent_ping", name=args.name)
            out(f"{args.name}: guest agent is alive")
            return EXIT_OK
        if args.what == "fsstatus":
            out(c.call("domain.fs_status", name=args.name)["status"])
            return EXIT_OK
        info = c.call("domain.agent_info", name=args.name)
    if not _json(args, info):
        out(f"version: {info['version']}\ncommands: {' '.join(info['commands'])}")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add the storage and agent verbs to *sub*."""

    def guest_disk(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME")
        p.add_argument("disk", metavar="DISK", help="target (vda) or source path")

    def jsonflag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")

    def waitflag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wait", action="store_true", help="print progress until the job ends")
        jsonflag(p)

    p = verb(sub, "domblkinfo", cmd_domblkinfo, "a disk's capacity, allocation, physical size")
    guest_disk(p)
    jsonflag(p)
    p = verb(sub, "domblkstat", cmd_domblkstat, "a running guest's disk I/O counters")
    guest_disk(p)
    jsonflag(p)
    p = verb(sub, "blockpeek", cmd_blockpeek, "copy bytes of a disk to a file")
    guest_disk(p)
    p.add_argument("offset", type=int, metavar="OFFSET")
    p.add_argument("size", type=int, metavar="SIZE")
    p.add_argument("-o", dest="output", default="-", metavar="FILE", help="'-' is stdout")
    p = verb(sub, "blockcopy", cmd_blockcopy, "copy a disk (a job)")
    guest_disk(p)
    p.add_argument("dest", metavar="DEST", help="a new file, or /dev/zvol/POOL/NAME for a zvol")
    p.add_argument("--pivot", action="store_true", help="then make the definition use the copy")
    p.add_argument("--bandwidth", type=int, metavar="MIB", help="at most MIB MiB/s")
    p.add_argument(
        "--sync",
        action="store_true",
        help="a durable copy: on disk when the job completes (always so with --pivot)",
    )
    waitflag(p)
    p = verb(sub, "blockpull", cmd_blockpull, "make a cloned zvol/dataset independent (a job)")
    guest_disk(p)
    waitflag(p)
    p = verb(sub, "blockcommit", cmd_blockcommit, "fold a disk's changes into its base (a job)")
    guest_disk(p)
    p.add_argument(
        "--base",
        metavar="SNAP",
        help="keep the changes since SNAP (default: fold a clone into its origin)",
    )
    waitflag(p)
    p = verb(sub, "job-list", cmd_job_list, "list block jobs")
    jsonflag(p)
    p = verb(sub, "job-cancel", cmd_job_cancel, "cancel a block job")
    p.add_argument("id", type=int, metavar="ID")
    p = verb(sub, "snapshot-create", cmd_snapshot_create, "snapshot a guest's disks (ZFS)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("snapshot", metavar="SNAP")
    jsonflag(p)
    p = verb(sub, "snapshot-list", cmd_snapshot_list, "list a guest's disk snapshots")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-H", dest="scripted", action="store_true", help="no header, tab-separated")
    jsonflag(p)
    for name, method, done, text in (
        ("snapshot-revert", "domain.snapshot_revert", "reverted", "roll disks back (stopped)"),
        ("snapshot-delete", "domain.snapshot_delete", "deleted", "destroy a disk snapshot"),
    ):
        p = verb(sub, name, _snapshot_simple(method, done), text)
        p.add_argument("name", metavar="NAME")
        p.add_argument("snapshot", metavar="SNAP")
    p = verb(sub, "domfsfreeze", cmd_fsfreeze, "freeze the guest's filesystems (agent)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--mountpoint", action="append", metavar="PATH", help="only these")
    p = verb(sub, "domfsthaw", cmd_fsthaw, "thaw the guest's filesystems (agent)")
    p.add_argument("name", metavar="NAME")
    p = verb(sub, "agent", cmd_agent, "ask the guest agent: ping, info, fsstatus")
    p.add_argument("name", metavar="NAME")
    p.add_argument("what", choices=("ping", "info", "fsstatus"))
    jsonflag(p)
