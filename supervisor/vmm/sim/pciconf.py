"""The simulated ``pciconf(8)`` (see :mod:`supervisor.vmm.sim.pci`)."""

from supervisor.vmm.sim.pci import main_pciconf as main

__all__ = ["main"]
