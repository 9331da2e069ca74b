"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import ASSETS


@pytest.fixture
def assets() -> Path:
    if not ASSETS.is_dir():
        pytest.skip(f"shared assets not found at {ASSETS}")
    return ASSETS
