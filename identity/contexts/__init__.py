"""Bundled JSON-LD contexts (see README.md in this folder for their sources)."""
