"""Shared test settings: small, fast training configs on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "ffhq_alae"


@pytest.fixture
def tiny_overrides() -> dict:
    """The one tiny training config of the tests: a toy run that takes about a second.

    Tests change what they need with ``{**tiny_overrides, "data.name": "gaussian-ot", ...}``.
    """
    return {
        "steps": 20,
        "eval_every": 10,
        "batch_size": 64,
        "eval_samples": 500,
        "data.n_train": 2000,
        "data.n_test": 500,
        "model.width": 32,
        "model.depth": 2,
    }
