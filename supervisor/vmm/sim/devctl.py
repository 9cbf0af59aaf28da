"""The simulated ``devctl(8)`` (see :mod:`supervisor.vmm.sim.pci`)."""

from supervisor.vmm.sim.pci import main_devctl as main

__all__ = ["main"]
