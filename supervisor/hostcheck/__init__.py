"""Host validation: is this FreeBSD host ready to run bhyve guests (virt-host-validate)?

:mod:`~supervisor.hostcheck.checks` turns probed facts into verdicts (pure);
:mod:`~supervisor.hostcheck.probe` gathers the facts from the host's tools.
"""
