"""``python -m supervisor``: bhyvesupd, the daemon (the ``bhyvesupd`` command runs
:func:`bhyvesupd` too).

The cyclic collector is turned off before the daemon's modules are imported, not only
once it runs: importing trio, structlog, attrs and the daemon's own modules creates
about as many long-lived objects as start-up does, and the collector's passes over them
cost a fifteenth of that import. The daemon turns it on again once its guests are
started (``supervisor.daemon._settle_heap``), after freezing that heap.
"""

from __future__ import annotations

import gc
import sys


def bhyvesupd(argv: list[str] | None = None) -> int:
    """Run the daemon with *argv* (the command line when None); returns its exit status."""
    gc.disable()
    from supervisor.daemon import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(bhyvesupd())
