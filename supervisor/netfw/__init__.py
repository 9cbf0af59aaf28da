"""Guest networking: bridges and taps, NAT networks (pf or ipfw), DHCP by dnsmasq.

Pure cores: :mod:`.network` (libvirt network XML ↔ model), :mod:`.rules` (pf and ipfw
rule generation), :mod:`.dhcp` (dnsmasq configuration and lease files),
:mod:`.ifparse` (ifconfig output). I/O glue: :mod:`.taps` (the launch hook that gives
each guest its taps) and :mod:`.manager` (network start/stop, dnsmasq supervision).
"""
