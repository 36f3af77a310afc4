"""The released drift algorithm (lambertae/drifting, drift_loss.py) transcribed to JAX and jit-compiled.

Why it exists: the drift benchmark's outside baseline. dmf_ray's own naive transcription
(dmf_ray.core.drift_naive) is eager torch, so beating it says little; this is the algorithm
as its authors run it -- one XLA program that fuses every elementwise step -- on the same
inputs and cores. Benchmark-only: jax comes from the ``bench`` extra
(``pip install -e '.[bench]'``), never from the runtime dependencies.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_platforms", "cpu")


def reference_drift(temperatures: tuple[float, ...]) -> Callable[[np.ndarray, np.ndarray], jax.Array]:
    """A jit-compiled ``drift(gen [B, D], pos [M, D]) -> V [B, D]`` (float32, input coordinates)
    of the released algorithm: self-negatives, distance and force normalisation, affinity
    sqrt(row-softmax x column-softmax) floored at 1e-6 before the root, self-distance + 100."""

    @jax.jit
    def drift(gen: jax.Array, pos: jax.Array) -> jax.Array:
        b, d = gen.shape
        targets = jnp.concatenate([gen, pos], axis=0)  # [N, D] = [gen | pos]
        sq = (gen * gen).sum(1)[:, None] + (targets * targets).sum(1)[None, :] - 2.0 * gen @ targets.T
        dist = jnp.sqrt(jnp.maximum(sq, 1e-8))  # [B, N]
        scale = dist.mean()
        coord_scale = jnp.maximum(scale / d**0.5, 1e-3)
        gen_s, targets_s = gen / coord_scale, targets / coord_scale
        self_mask = jnp.pad(jnp.eye(b, dtype=dist.dtype), ((0, 0), (0, targets.shape[0] - b)))
        dist_n = dist / jnp.maximum(scale, 1e-3) + 100.0 * self_mask
        total = jnp.zeros_like(gen_s)
        for temp in temperatures:
            logits = -dist_n / temp
            aff = jnp.sqrt(jnp.maximum(jax.nn.softmax(logits, axis=1) * jax.nn.softmax(logits, axis=0), 1e-6))
            aff_neg, aff_pos = aff[:, :b], aff[:, b:]
            coeff = jnp.concatenate([-aff_neg * aff_pos.sum(1, keepdims=True), aff_pos * aff_neg.sum(1, keepdims=True)], 1)
            force = coeff @ targets_s - coeff.sum(1, keepdims=True) * gen_s
            total = total + force / jnp.sqrt(jnp.maximum((force * force).mean(), 1e-8))
        return total * coord_scale

    return drift
