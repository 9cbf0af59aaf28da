"""bhyvesupctl: the command-line client.

:mod:`supervisor.cli.main` is the entry point: an argparse front whose verbs come from
verb groups (:mod:`supervisor.cli.offline` works without a daemon,
:mod:`supervisor.cli.control` talks to bhyvesupd); with no verb it runs the shell.
"""
