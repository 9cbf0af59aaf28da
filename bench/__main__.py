"""Run every benchmark: ``bench/run`` (full) or ``bench/run --quick`` (under a minute).

Each prints ``name: value unit`` lines with the peer's figure and the ratio. One
benchmark failing is reported and the others still run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from bench import common, console, peek, reboot, scale

BENCHES = (
    ("scale", scale.main),
    ("reboot", reboot.main),
    ("console", console.main),
    ("peek", peek.main),
)


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller counts: under a minute")
    p.add_argument("only", nargs="*", help="run only these (scale reboot console peek)")
    args = p.parse_args()
    os.chdir(common.REPO)
    failed = 0
    t0 = time.monotonic()
    for name, run in BENCHES:
        if args.only and name not in args.only:
            continue
        print(f"# {name}", flush=True)
        try:
            run(["--quick"] if args.quick else [])
        except Exception:
            failed += 1
            print(f"{name}: failed", flush=True)
            traceback.print_exc()
    print(f"# done in {time.monotonic() - t0:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
