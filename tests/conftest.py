"""Settings every test shares: models load from the packaged files only, never from a hub; tiers by marker."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that gets the session's Ray, directly or through another fixture, is a Ray test
    # whatever its module says, so `make test-fast` (-m "not ray ...") never starts Ray.
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
