"""Everything that speaks bhyve: command lines, capabilities, host tools."""
