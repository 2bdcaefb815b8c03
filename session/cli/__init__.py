"""The didmesh command line: one module per command group."""
