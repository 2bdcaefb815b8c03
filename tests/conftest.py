from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).parent / "vectors"


def load_json(rel: str) -> Any:
    return json.loads((VECTORS / rel).read_text())


def load_text(rel: str) -> str:
    return (VECTORS / rel).read_text()


@pytest.fixture
def vectors() -> Path:
    return VECTORS
