"""bhyve-supervisor: a trio-based supervisor for FreeBSD's bhyve hypervisor.

Each guest is an actor that owns its bhyve process, its console pair and an exit-code
state machine; a JSON-RPC 2.0 bus on a Unix socket carries control messages from the
``bhyvesupctl`` CLI, the rc.d service and any other client.
"""

__version__ = "0.1.0"
