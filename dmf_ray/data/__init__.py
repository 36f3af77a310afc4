"""Datasets behind one interface: ``load_dataset(DataConfig(...)) -> TranslationData``.

The registry lives here, above the builders (``toy``, ``gaussian_ot``, ``ffhq_alae``), which
import the interface from :mod:`dmf_ray.data.base`; ``synthetic`` writes a stand-in FFHQ folder.
"""

from __future__ import annotations

from typing import Callable

from dmf_ray.data import ffhq_alae, gaussian_ot, toy
from dmf_ray.data.base import DATASET_NAMES, DIRECTIONS, DataConfig, TranslationData, stream_generator

Builder = Callable[[DataConfig], TranslationData]

BUILDERS: dict[str, Builder] = {
    "toy": toy.build_toy,
    "gaussian-ot": gaussian_ot.build_gaussian_ot,
    "ffhq-alae": ffhq_alae.build_ffhq_alae,
}


def load_dataset(cfg: DataConfig) -> TranslationData:
    """Build the dataset ``cfg`` names (DataError naming the file on bad input files)."""
    return BUILDERS[cfg.name](cfg)


__all__ = [
    "BUILDERS",
    "DATASET_NAMES",
    "DIRECTIONS",
    "DataConfig",
    "TranslationData",
    "load_dataset",
    "stream_generator",
]
