"""A pytest plugin for tests/test_adv_threat_model.py: with ``--collect-only`` it prints
``DIDMESH-NODE <nodeid> <xfail|run>`` for every collected item."""

from __future__ import annotations

from typing import Any


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    for item in items:
        kind = "xfail" if item.get_closest_marker("xfail") is not None else "run"
        print(f"DIDMESH-NODE {item.nodeid} {kind}")
