"""A straightforward dense transcription of the authors' released drift_loss.py (lambertae/drifting).

Why it exists: it is the oracle that `dmf_ray.core.drift` and `drift_fast` must match to float32 round-off under the
``reference`` preset, and the in-process baseline the drift benchmarks compare against. It
materialises every B x N matrix, concatenates coefficient blocks and loops over temperatures,
exactly as the released code does; nothing in training uses it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def naive_reference_drift(
    gen: Tensor,
    pos: Tensor,
    neg: Tensor | None = None,
    temperatures: tuple[float, ...] = (0.02, 0.05, 0.2),
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Released-algorithm drift V (B, D) in input coordinates for gen (B, D), pos (M, D), neg (K, D),
    computed in ``dtype`` (float32 as released; float64 gives the tests a ground truth that
    float32 implementations are measured against)."""
    x = gen.detach().to(dtype)
    b, d = x.shape
    negatives = x.new_zeros(0, d) if neg is None else neg.detach().to(dtype)
    targets = torch.cat([x, negatives, pos.detach().to(dtype)], dim=0)  # [N, D]
    n_neg = b + negatives.shape[0]

    sq = x.square().sum(1)[:, None] + targets.square().sum(1)[None, :] - 2 * x @ targets.T
    dist = sq.clamp(min=1e-8).sqrt()  # [B, N]
    scale = dist.mean()
    coord_scale = (scale / d**0.5).clamp(min=1e-3)
    x_s, targets_s = x / coord_scale, targets / coord_scale
    self_mask = torch.nn.functional.pad(torch.eye(b, dtype=dtype), (0, targets.shape[0] - b))
    dist_n = dist / scale.clamp(min=1e-3) + 100.0 * self_mask

    total = torch.zeros_like(x_s)
    for temp in temperatures:
        logits = -dist_n / temp
        aff = (logits.softmax(dim=1) * logits.softmax(dim=0)).clamp(min=1e-6).sqrt()
        aff_neg, aff_pos = aff[:, :n_neg], aff[:, n_neg:]
        coeff = torch.cat(
            [-aff_neg * aff_pos.sum(1, keepdim=True), aff_pos * aff_neg.sum(1, keepdim=True)], dim=1
        )
        force = coeff @ targets_s - coeff.sum(1, keepdim=True) * x_s
        total = total + force / (force.square().mean()).clamp(min=1e-8).sqrt()
    return total * coord_scale
