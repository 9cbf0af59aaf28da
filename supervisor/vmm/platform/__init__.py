"""The two primitives that differ between a FreeBSD host and the simulated one.

- :mod:`supervisor.vmm.platform.consolepair`: a guest's console pair (nmdm(4) on
  FreeBSD, a relayed pty pair at the nmdm path on the simulated host);
- :mod:`supervisor.vmm.platform.procwatch`: waiting for a process that is not our child
  (kqueue ``EVFILT_PROC`` on FreeBSD, a pidfd and a status file on the simulated host).

Everything else in the supervisor runs the same code on both. Each module picks its
implementation once, from the host and the OS; nothing outside this package asks which
kind of host it is on.
"""
