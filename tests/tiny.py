"""The one tiny training config of the tests: a toy run that takes about a second.

Tests change what they need with ``{**TINY, "steps": 200, ...}``; the ``tiny_overrides`` fixture
(tests/conftest.py) hands out a fresh copy.
"""

TINY: dict = {
    "steps": 20,
    "eval_every": 10,
    "batch_size": 64,
    "eval_samples": 500,
    "data.n_train": 2000,
    "data.n_test": 500,
    "model.width": 32,
    "model.depth": 2,
}
