"""The drift benchmark's JAX baseline computes the released algorithm (else its speed says nothing)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from jax_reference_drift import reference_drift  # noqa: E402

from dmf_ray.core.drift_fast import compute_drift  # noqa: E402
from dmf_ray.core.drift_naive import naive_reference_drift  # noqa: E402


@pytest.mark.parametrize("temperatures", [(0.02, 0.05, 0.2), (0.1,)])
def test_jax_baseline_matches_the_naive_transcription_and_ours(temperatures: tuple[float, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    gen, pos = torch.randn(300, 64, generator=g), torch.randn(250, 64, generator=g) + 0.5
    jax_out = torch.from_numpy(np.asarray(reference_drift(temperatures)(gen.numpy(), pos.numpy())))
    naive = naive_reference_drift(gen, pos, temperatures=temperatures)
    ours = compute_drift(gen, pos, preset="reference", temperatures=temperatures)
    for other in (naive, ours):
        assert torch.allclose(jax_out, other, atol=5e-6 * other.abs().max(), rtol=1e-5), (jax_out - other).abs().max()
    assert not torch.allclose(jax_out, naive_reference_drift(gen, pos + 0.01, temperatures=temperatures))  # inputs matter
