"""PCI passthrough: host PCI functions, ppt(4) checks, one guest per device."""
