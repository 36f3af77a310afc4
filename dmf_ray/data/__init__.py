"""Datasets behind one interface: `load_dataset(DataConfig(...)) -> TranslationData`.

Builders live in `toy`, `gaussian_ot` and `ffhq_alae`; `synthetic` writes a stand-in FFHQ folder.
"""

from dmf_ray.data.base import (
    DATASET_NAMES,
    DIRECTIONS,
    DataConfig,
    TranslationData,
    builders,
    load_dataset,
    stream_generator,
)

__all__ = [
    "DATASET_NAMES",
    "DIRECTIONS",
    "DataConfig",
    "TranslationData",
    "builders",
    "load_dataset",
    "stream_generator",
]
