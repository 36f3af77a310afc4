"""Reproduce DMF Table 1: DM vs DMF (linear friction) vs OFM on the 2-D toy, 2-D Frechet distance.

A preset of :mod:`dmf_ray.experiments.compare` (its ``toy`` task holds the paper's figures); any
of its flags may be added.

    python -m dmf_ray.experiments.toy_table1 [--seeds 0 1 2] [--taus 0.05 0.2 0.5] [--steps 1000]
"""

from __future__ import annotations

import sys
from typing import Sequence

from dmf_ray.experiments import compare

TABLE1_ARGS = ("--task", "toy", "--methods", "dm", "dmf", "ofm", "--out", "outputs/toy_table1")


def main(argv: Sequence[str] | None = None) -> int:
    """Run compare with the Table 1 methods; later flags (e.g. --out) override the preset's."""
    return compare.main([*TABLE1_ARGS, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
