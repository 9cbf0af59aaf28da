"""bhyvesupctl verbs for the seed's calls: CPU models, vCPUs, CPU stats, time, NMI, memory.

Each verb is one or a few JSON-RPC calls (:mod:`supervisor.api.guestops`) and a plain
rendering; ``--json`` prints the daemon's answer instead. ``memory-peek`` reads any
amount of guest memory in one raw stream and writes it to a file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, Final

from supervisor.cli import render
from supervisor.cli.control import EXIT_OK, EXIT_USAGE, connect, error, out, verb
from supervisor.errors import SupervisorError

__all__ = ["owns", "parse_size", "register"]


_SUFFIXES: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """argparse type: a byte count or address: decimal, ``0x`` hex, or with a ``K``/``M``/
    ``G``/``T`` suffix (powers of 1024)."""
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    suffix = s[-1:] if s[-1:] in ("k", "m", "g", "t") and not s.startswith("0x") else ""
    number = s[: len(s) - len(suffix)]
    try:
        value = int(number, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value * _SUFFIXES[suffix]


def _kv(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max((len(k) for k, _ in pairs), default=0) + 1
    return "\n".join(
        f"{(k + ':').ljust(width)} {'-' if v is None else v}".rstrip() for k, v in pairs
    )


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}s"


def _show(args: argparse.Namespace, result: Any, text: str) -> int:
    out(render.render_json(result) if args.json else text)
    return EXIT_OK


# --------------------------------------------------------------------------- verbs


def cmd_cpu_models(args: argparse.Namespace) -> int:
    with connect(args) as client:
        r = client.call("connect.get_cpu_model_names", arch=args.arch)
    lines = [f"{m} ({r['mode']})" for m in r["models"]]
    return _show(args, r, "\n".join(lines))


def cmd_maxvcpus(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.name is None:
            r = client.call("connect.get_max_vcpus")
            return _show(args, r, str(r["max_vcpus"]))
        r = client.call("domain.get_max_vcpus", name=args.name)
    text = _kv(
        [
            ("vCPUs", r["vcpus"]),
            ("maximum", r["max_vcpus"]),
            ("topology", f"sockets={r['sockets']} cores={r['cores']} threads={r['threads']}"),
            ("host limit", f"{r['host_max_vcpus']} ({r['host_limit_source']})"),
        ]
    )
    return _show(args, r, text)


def cmd_maxmem(args: argparse.Namespace) -> int:
    with connect(args) as client:
        r = client.call("domain.get_max_memory", name=args.name)
    return _show(args, r, f"{r['max_memory_kib']} KiB")


def cmd_vcpuinfo(args: argparse.Namespace) -> int:
    with connect(args) as client:
        rows = client.call("domain.get_vcpus", name=args.name)
    blocks = []
    for v in rows:
        affinity = v["affinity"]
        blocks.append(
            _kv(
                [
                    ("VCPU", v["vcpu"]),
                    ("State", v["state"]),
                    ("CPU time", _seconds(v["cpu_time"])),
                    ("Thread", v["thread_id"]),
                    ("CPU Affinity", "any" if affinity is None else ",".join(map(str, affinity))),
                ]
            )
        )
    return _show(args, rows, "\n\n".join(blocks))


def _times_line(entry: Mapping[str, Any]) -> str:
    return (
        f"cpu_time {_seconds(entry.get('cpu_time'))}  user_time {_seconds(entry.get('user_time'))}"
        f"  system_time {_seconds(entry.get('system_time'))}"
    )


def cmd_cpu_stats(args: argparse.Namespace) -> int:
    with connect(args) as client:
        r = client.call("domain.get_cpu_stats", name=args.name, vcpu=args.vcpu)
    lines = [f"Total: {_times_line(r['total'])}"]
    for v in r["vcpus"]:
        lines.append(f"vcpu {v['vcpu']}: {_times_line(v)}")
        for key, value in v.items():
            if key not in ("vcpu", "cpu_time", "user_time", "system_time"):
                lines.append(f"  {key:<36} {value}")
    return _show(args, r, "\n".join(lines))


def _utc(seconds: int) -> str:
    when = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_domtime(args: argparse.Namespace) -> int:
    if args.agent:
        return _agent_time(args)
    with connect(args) as client:
        if args.now:
            r = client.call("domain.set_time", name=args.name, seconds=int(time.time()))
        elif args.set is not None:
            r = client.call("domain.set_time", name=args.name, seconds=args.set)
        else:
            r = client.call("domain.get_time", name=args.name)
    text = _kv(
        [
            ("Time", f"{r['seconds']} ({_utc(r['seconds'])})"),
            ("Clock", r["clock"]),
            ("RTC", r["rtc"]),
        ]
    )
    return _show(args, r, text)


def _agent_time(args: argparse.Namespace) -> int:
    # The guest's own clock, through the QEMU guest agent; setting without a value lets
    # the guest take its time from its RTC (guest-set-time with no argument).
    with connect(args) as client:
        if args.now:
            client.call("domain.agent_set_time", name=args.name, seconds=None)
        elif args.set is not None:
            client.call("domain.agent_set_time", name=args.name, seconds=args.set)
        r = client.call("domain.agent_get_time", name=args.name)
    text = _kv([("Time", f"{r['seconds']} ({_utc(r['seconds'])})"), ("Source", "guest agent")])
    return _show(args, r, text)


def cmd_inject_nmi(args: argparse.Namespace) -> int:
    with connect(args) as client:
        r = client.call("domain.inject_nmi", name=args.name, vcpu=args.vcpu)
    return _show(args, r, f"{args.name}: NMI sent to vcpu {r['vcpu']}")


def cmd_dommemstat(args: argparse.Namespace) -> int:
    with connect(args) as client:
        r = client.call("domain.memory_stats", name=args.name)
    return _show(args, r, "\n".join(f"{k} {v}" for k, v in r.items()))


def _open_output(path: str) -> tuple[BinaryIO, str | None]:
    if path == "-":
        return sys.stdout.buffer, None
    tmp = f"{path}.part"
    try:
        return open(tmp, "wb"), tmp
    except OSError as exc:
        raise SupervisorError(f"{path}: {exc.strerror or exc}") from None


def cmd_memory_peek(args: argparse.Namespace) -> int:
    if args.size == 0:
        error("--size: must be > 0")
        return EXIT_USAGE
    f, tmp = _open_output(args.output)
    done = False
    try:
        with connect(args) as client:
            # One call: the daemon writes the raw bytes into our file itself (no base64,
            # no 1 MiB cap, no second copy through the socket); falling short (the VM
            # went away mid-way) raises, and the partial file is removed.
            client.read_into(
                "domain.memory_peek", f, name=args.name, start=args.start, size=args.size
            )
        f.flush()
        done = True
    finally:
        if tmp is not None:
            f.close()
            if done:
                os.replace(tmp, args.output)
            else:
                os.unlink(tmp)
    summary = {"start": args.start, "size": args.size, "file": args.output}
    if args.output == "-":
        return EXIT_OK
    return _show(
        args, summary, f"{args.size} bytes from {args.start:#x} of {args.name} -> {args.output}"
    )


# --------------------------------------------------------------------------- parser

_OWN: Final = "guestops_verb"


def owns(args: argparse.Namespace) -> bool:
    """Whether *args* is one of this module's verbs."""
    return bool(getattr(args, _OWN, False))


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")


def _vcpu(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a vCPU number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def register(sub: Any) -> None:
    """Add the verbs to *sub*, an argparse subparsers object."""

    def add(name: str, handler: Any, text: str) -> argparse.ArgumentParser:
        p = verb(sub, name, handler, text)
        p.set_defaults(**{_OWN: True})
        _json(p)
        return p

    p = add("cpu-models", cmd_cpu_models, "list the CPU models a guest can have (host CPU)")
    p.add_argument("arch", nargs="?", default="x86_64", help="architecture (default x86_64)")

    p = add("maxvcpus", cmd_maxvcpus, "the most vCPUs a guest (or NAME) may have")
    p.add_argument("name", nargs="?", metavar="NAME", help="a guest (default: the host limit)")

    p = add("maxmem", cmd_maxmem, "a guest's maximum memory (KiB)")
    p.add_argument("name", metavar="NAME")

    p = add("vcpuinfo", cmd_vcpuinfo, "a running guest's vCPUs: state, CPU time, affinity")
    p.add_argument("name", metavar="NAME")

    p = add("cpu-stats", cmd_cpu_stats, "a running guest's CPU time and VM-exit counters")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--vcpu", type=_vcpu, default=None, metavar="N", help="only vCPU N")

    p = add("domtime", cmd_domtime, "show or set a running guest's RTC time")
    p.add_argument("name", metavar="NAME")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--set", type=int, default=None, metavar="SECONDS", help="seconds since the epoch"
    )
    group.add_argument("--now", action="store_true", help="set it to the host's time")
    p.add_argument(
        "--agent",
        action="store_true",
        help="the guest OS clock through its guest agent instead of the RTC "
        "(with --now: the guest re-reads its RTC)",
    )

    p = add("inject-nmi", cmd_inject_nmi, "send a non-maskable interrupt to a running guest")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--vcpu", type=_vcpu, default=0, metavar="N", help="vCPU (default 0)")

    p = add("dommemstat", cmd_dommemstat, "a running guest's memory figures (KiB)")
    p.add_argument("name", metavar="NAME")

    p = add("memory-peek", cmd_memory_peek, "copy guest-physical memory to a file")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--start", type=parse_size, required=True, metavar="ADDR", help="address")
    p.add_argument("--size", type=parse_size, required=True, metavar="BYTES", help="bytes")
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="where to write ('-': stdout)"
    )
