"""The part of ``Runtime.start()`` that MPyC's bridges over the mesh and over WireGuard share.

Both bridges (:mod:`.mpyc_bridge`, :mod:`didmesh.session.wireguard.bridge`) replace
MPyC's ``Runtime.start()``; a run of one party connects to no one, over either.
"""

from __future__ import annotations

import logging
import time
from typing import Any


def started_alone(rt: Any, start_line: str) -> bool:
    """True when MPyC's runtime ``rt`` has one party: then it has started (MPyC's start
    line logged, its start time set, as plain MPyC's ``start()`` does with no peers)."""
    if len(rt.parties) != 1:
        return False
    logging.info(start_line)
    rt.start_time = time.time()
    return True
