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


SOAK_ENV = "DIDMESH_SOAK"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``soak`` (full-size load and fuzzing runs whose bounded variant runs by
    default) are deselected, and counted as such in the summary, unless DIDMESH_SOAK=1."""
    import os

    if os.environ.get(SOAK_ENV) == "1":
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


# Hypothesis profiles for the fuzzers (tests/test_fuzz_*.py): "ci" is the bounded default;
# DIDMESH_FUZZ=long (or --hypothesis-profile=long) runs many more cases.
def _hypothesis_profiles() -> None:
    import os

    from hypothesis import HealthCheck, settings

    quiet = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=quiet)
    settings.register_profile(
        "long", max_examples=5000, deadline=None, suppress_health_check=quiet
    )
    settings.load_profile("long" if os.environ.get("DIDMESH_FUZZ") == "long" else "ci")


_hypothesis_profiles()
