"""``python -m didmesh.relay``: run a relay (same flags as ``didmesh relay serve``)."""

from __future__ import annotations

import sys

from .server import main

if __name__ == "__main__":
    sys.exit(main())
