"""Shared test settings: small, fast training configs on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny import TINY

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "ffhq_alae"


@pytest.fixture
def tiny_overrides() -> dict:
    """A fresh copy of tests/tiny.py's TINY config (tests may change it freely)."""
    return dict(TINY)
