"""Datasets behind one interface: ``load_dataset(DataConfig(...)) -> TranslationData``.

The registry lives here, above the builders (``toy``, ``gaussian_ot``, ``ffhq_alae``), which
import the interface from :mod:`dmf_ray.data.base`; ``synthetic`` writes a stand-in FFHQ folder.
"""

from __future__ import annotations

from typing import Callable

from dmf_ray.data import gaussian_ot, toy
from dmf_ray.data.base import DATASET_NAMES, DIRECTIONS, DataConfig, TranslationData, stream_generator

Builder = Callable[[DataConfig], TranslationData]


def _build_ffhq_alae(cfg: DataConfig) -> TranslationData:
    # Imported on use: a package that imports ffhq_alae makes `python -m dmf_ray.data.ffhq_alae
    # fetch` print runpy's "found in sys.modules" warning before its one-line result.
    from dmf_ray.data.ffhq_alae import build_ffhq_alae

    return build_ffhq_alae(cfg)


BUILDERS: dict[str, Builder] = {
    "toy": toy.build_toy,
    "gaussian-ot": gaussian_ot.build_gaussian_ot,
    "ffhq-alae": _build_ffhq_alae,
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
