"""Scale: N simulated guests in one bhyvesupd versus supervisord running the same N
simulated bhyve processes (same argv, same environment, same light mode).

Figures, each for both supervisors where the peer has one:

- time from exec of the supervisor until all N are running;
- the supervisor's own CPU time (utime+stime, children excluded) until then;
- its RSS once the N are running and idle; the simulated bhyve's RSS/PSS;
- its idle CPU over a window (30 s; shorter with --quick);
- status of all N over the socket (``domain.list`` vs ``getAllProcessInfo``), p50/p99;
- one guest's ``domain.get_info`` round trip (vs ``getProcessInfo``);
- ``bhyvesupctl status`` wall time vs ``supervisorctl status``;
- the CPU to load the N definitions from the daemon's cache and by parsing them.

bhyvesupd starts as at a host's boot: it has run before and no definition changed
since, so its cache of parsed definitions is there (``--first-start``: it is not).
The start-up figures are the medians of ``--rounds`` starts of each (3 by default).

The two run one after the other in this one process tree, so the machine is the same,
each with its runtime files on tmpfs (see ``bench.common.memory_fs``); the cost of
creating a file there is printed for both runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    REPO,
    SUPERVISORCTL,
    SUPERVISORD,
    Daemon,
    SimHost,
    Supervisord,
    cpu_seconds,
    create_cost_us,
    median,
    memory_fs,
    percentile,
    pss_bytes,
    report,
    rss_bytes,
    temp_root,
    wait_booted,
    wait_for,
)

MB = 1 << 20


def _latencies(call: Any, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _cli_wall(argv: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, env=env, check=False)
        walls.append((time.perf_counter() - t0) * 1000)
        if r.returncode not in (0, 3):  # supervisorctl status exits 3 when some are not running
            raise RuntimeError(f"{argv[0]} failed: {r.stderr.decode()[-300:]}")
    return median(walls)


def run_bhyvesupd(
    n: int,
    idle_window: float,
    calls: int,
    cli_runs: int,
    *,
    first_start: bool = False,
    start_only: bool = False,
    log_level: str = "info",
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    with temp_root("bench-scale-", memory_fs()) as d:
        res["create_us"] = create_cost_us(d)
        sim = SimHost(d / "host")
        sim.define_files(n)
        res["argv"] = sim.bhyve_argv(sim.names[0])
        # A host's boot: the daemon has run before and no definition changed since, so
        # its cache of parsed definitions is there (unless --first-start).
        res["load_parsed"], res["load_cached"] = sim.load_definitions(keep_cache=not first_start)
        daemon = Daemon(sim, d / "daemon.out", log_level=log_level)
        try:
            daemon.wait_socket()
            with daemon.client() as c:
                # daemon.status counts guests by state: what a user waiting for "all
                # running" asks, and cheap enough not to tax the daemon being measured.
                def all_running() -> bool:
                    return bool(c.call("daemon.status")["states"].get("running") == n)

                t = wait_for("all guests running", all_running, 600, poll=0.25)
            res["start_wall"] = t - daemon.t_exec
            res["start_cpu"] = cpu_seconds(daemon.pid)
            if start_only:
                return res
            listing = daemon.call("domain.list")
            pids = [g["pid"] for g in listing]
            wait_booted(pids, [g["name"] for g in listing])
            res["rss"] = rss_bytes(daemon.pid)
            res["bhyve_rss"] = median([rss_bytes(p) for p in pids[:20]])
            res["bhyve_pss"] = median([pss_bytes(p) for p in pids[:20]])
            c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(idle_window)
            res["idle_cpu"] = (cpu_seconds(daemon.pid) - c0) / (time.monotonic() - t0) * 100
            with daemon.client() as c:
                c.call("domain.list")
                res["list_ms"] = _latencies(lambda: c.call("domain.list"), calls)
                res["info_ms"] = _latencies(lambda: c.call("domain.get_info", name="g000"), calls)

            def fresh_list() -> None:
                with daemon.client() as c2:
                    c2.call("domain.list")

            res["list_fresh_ms"] = _latencies(fresh_list, max(20, calls // 4))
            ctl = [str(Path(sys.executable).parent / "bhyvesupctl"), "-s", sim.socket, "status"]
            res["cli_ms"] = _cli_wall(ctl, cli_runs)
            res["rss_after"] = rss_bytes(daemon.pid)
        finally:
            daemon.stop()
            sim.teardown()
    return res


def run_supervisord(
    n: int,
    argv_env: tuple[list[str], dict[str, str]],
    idle_window: float,
    calls: int,
    cli_runs: int,
    *,
    start_only: bool = False,
    log_level: str = "info",
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    with temp_root("bench-scale-sd-", memory_fs()) as d:
        res["create_us"] = create_cost_us(d)
        sim = SimHost(d / "host")
        names = sim.define_files(n, autostart=False)
        programs = {}
        for name in names:
            argv, env = sim.bhyve_argv(name)
            programs[name] = (argv, env)
        sd = Supervisord(d, programs, loglevel=_SUPERVISORD_LEVEL[log_level])
        try:
            sd.wait_socket()
            rpc = sd.rpc()

            def all_running() -> bool:
                return all(p["statename"] == "RUNNING" for p in rpc.getAllProcessInfo())

            t = wait_for("all programs running", all_running, 600, poll=0.25)
            res["start_wall"] = t - sd.t_exec
            res["start_cpu"] = cpu_seconds(sd.pid)
            if start_only:
                return res
            procs = rpc.getAllProcessInfo()
            wait_booted([p["pid"] for p in procs], [p["name"] for p in procs])
            res["rss"] = rss_bytes(sd.pid)
            c0, t0 = cpu_seconds(sd.pid), time.monotonic()
            time.sleep(idle_window)
            res["idle_cpu"] = (cpu_seconds(sd.pid) - c0) / (time.monotonic() - t0) * 100
            res["list_ms"] = _latencies(rpc.getAllProcessInfo, calls)
            res["info_ms"] = _latencies(lambda: rpc.getProcessInfo(names[0]), calls)
            res["cli_ms"] = _cli_wall(
                [SUPERVISORCTL, "-c", str(sd.conf), "status"], cli_runs, env=_system_env()
            )
            running = sum(1 for p in rpc.getAllProcessInfo() if p["statename"] == "RUNNING")
            if running != n:
                raise RuntimeError(f"supervisord lost children: {running}/{n} running")
            rpc.stopAllProcesses()
        finally:
            sd.stop()
            sim.teardown()
    return res


# The same level for both: each logs every start at info (bhyvesupd guest_started,
# supervisord "spawned" and "success"), neither at warning.
_SUPERVISORD_LEVEL = {"info": "info", "warning": "warn"}


def _system_env() -> dict[str, str]:
    # supervisorctl runs under the system Python: keep our venv out of its way.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"
    return env


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts, under a minute")
    p.add_argument("-n", type=int, help="guests (default 500, 30 with --quick)")
    p.add_argument("--idle", type=float, help="idle window in s (default 30, 2 with --quick)")
    p.add_argument(
        "--first-start",
        action="store_true",
        help="the daemon's first start on the host: no cache of parsed definitions yet",
    )
    p.add_argument(
        "--rounds",
        type=int,
        help="start both supervisors this many times, one after the other, and give the "
        "start-up figures' medians (default 3, 1 with --quick)",
    )
    p.add_argument(
        "--log-level",
        choices=sorted(_SUPERVISORD_LEVEL),
        default="info",
        help="both supervisors' log level (default: info, the default of each)",
    )
    args = p.parse_args(argv)
    n = args.n or (30 if args.quick else 500)
    idle = args.idle or (2.0 if args.quick else 30.0)
    calls = 100 if args.quick else 200
    cli_runs = 3 if args.quick else 10
    if not os.path.exists(SUPERVISORD):
        print("scale: supervisord unavailable (apt-get install supervisor)")
        return []
    rounds = max(1, args.rounds or (1 if args.quick else 3))
    level = args.log_level
    ours = run_bhyvesupd(n, idle, calls, cli_runs, first_start=args.first_start, log_level=level)
    peer = run_supervisord(n, ours["argv"], idle, calls, cli_runs, log_level=level)
    # The machine's state drifts between runs (its page cache, the other side's leftovers
    # being reclaimed): each further round starts both again, one after the other.
    starts = [(ours["start_cpu"], peer["start_cpu"], ours["start_wall"], peer["start_wall"])]
    for _ in range(rounds - 1):
        o = run_bhyvesupd(
            n,
            idle,
            calls,
            cli_runs,
            first_start=args.first_start,
            start_only=True,
            log_level=level,
        )
        q = run_supervisord(
            n, ours["argv"], idle, calls, cli_runs, start_only=True, log_level=level
        )
        starts.append((o["start_cpu"], q["start_cpu"], o["start_wall"], q["start_wall"]))
    if rounds > 1:
        ratios = ", ".join(f"{a:.2f}/{b:.2f}" for a, b, _, _ in starts)
        print(f"scale.start_all_cpu_rounds[{n}]: {ratios} s (bhyvesupd/supervisord per round)")
        for key, i in (("start_cpu", 0), ("start_wall", 2)):
            ours[key] = median([r[i] for r in starts])
            peer[key] = median([r[i + 1] for r in starts])
    sd = "supervisord"
    return [
        report("scale.guests", n, "guests"),
        report("scale.bhyve_light_rss", ours["bhyve_rss"] / MB, "MB"),
        report("scale.bhyve_light_pss", ours["bhyve_pss"] / MB, "MB"),
        report(
            "scale.file_create_cost",
            ours["create_us"],
            "us",
            peer=peer["create_us"],
            peer_name=f"{sd}'s run",
        ),
        report(
            f"scale.start_all_wall[{n}]",
            ours["start_wall"],
            "s",
            peer=peer["start_wall"],
            peer_name=sd,
        ),
        report(
            f"scale.start_all_cpu[{n}]"
            + (" (first start)" if args.first_start else "")
            + (f" (both logging at {level})" if level != "info" else ""),
            ours["start_cpu"],
            "s",
            peer=peer["start_cpu"],
            peer_name=sd,
            target="<= 0.5x",
        ),
        report(
            f"scale.definitions_load[{n}]",
            ours["load_cached"] * 1000,
            "ms",
            peer=ours["load_parsed"] * 1000,
            peer_name="parsed, at a first start",
        ),
        report(
            f"scale.rss_idle[{n}]",
            ours["rss"] / MB,
            "MB",
            peer=peer["rss"] / MB,
            peer_name=sd,
            target="<= 1.5x",
        ),
        report(
            f"scale.idle_cpu[{n}]",
            ours["idle_cpu"],
            "%",
            peer=peer["idle_cpu"],
            peer_name=sd,
            target="<= 1x",
        ),
        report(
            f"scale.status_all_p50[{n}]",
            percentile(ours["list_ms"], 50),
            "ms",
            peer=percentile(peer["list_ms"], 50),
            peer_name=sd + " getAllProcessInfo",
            target="<= 0.05x",
        ),
        report(
            f"scale.status_all_p99[{n}]",
            percentile(ours["list_ms"], 99),
            "ms",
            peer=percentile(peer["list_ms"], 99),
            peer_name=sd + " getAllProcessInfo",
            target="< 15 ms",
        ),
        report(
            f"scale.status_all_fresh_conn_p50[{n}]",
            percentile(ours["list_fresh_ms"], 50),
            "ms",
            peer=percentile(peer["list_ms"], 50),
            peer_name=sd + " getAllProcessInfo",
        ),
        report(
            "scale.get_info_p50",
            percentile(ours["info_ms"], 50),
            "ms",
            peer=percentile(peer["info_ms"], 50),
            peer_name=sd + " getProcessInfo",
            target="< 1 ms",
        ),
        report(
            "scale.get_info_p99",
            percentile(ours["info_ms"], 99),
            "ms",
            peer=percentile(peer["info_ms"], 99),
            peer_name=sd + " getProcessInfo",
        ),
        report(
            f"scale.cli_status_wall[{n}]",
            ours["cli_ms"],
            "ms",
            peer=peer["cli_ms"],
            peer_name="supervisorctl status",
            target="<= 0.5x",
        ),
    ]


if __name__ == "__main__":
    os.chdir(REPO)
    main()
