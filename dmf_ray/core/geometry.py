"""Pairwise squared Euclidean distances: the one routine the drift, the families, OFM and the
image metrics share."""

from __future__ import annotations

import torch
from torch import Tensor


def sq_distances(a: Tensor, b: Tensor, *, floor: float = 0.0, out: Tensor | None = None) -> Tensor:
    """|a_i - b_j|^2 as an [A, B] matrix, |a|^2 + |b|^2 - 2 a.b with one matrix product.

    The expansion can round below zero for (near-)coincident rows, so the result is clamped at
    ``floor`` (the drift passes a tiny positive floor so that a square root stays finite and
    differentiable). ``out`` ([A, B], contiguous) receives the result in place -- the drift's
    chunk workspace reuses one buffer; without it a fresh tensor is returned and the call is
    differentiable in both arguments.
    """
    # -2 a is exact, and mm writes the product straight into ``out``: addmm's broadcast copy of
    # a bias into ``out`` before the product cost as much as three elementwise passes
    sq = torch.mm(a * -2.0, b.T, out=out)  # [A, B]
    return sq.add_(a.square().sum(1, keepdim=True)).add_(b.square().sum(1)[None, :]).clamp_min_(floor)
