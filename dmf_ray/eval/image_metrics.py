"""Image-space scores for latent translators: CMMD (CLIP), FID and KID (Inception), plus a decoder hook.

Papers report image metrics, not latent FD. When a run names a decoder (``eval.decoder``,
latents -> images), :func:`build_image_scorer` decodes mapped and target latents batch by batch
and scores the images by CMMD (Jayasumana et al. 2024, arXiv 2401.09603) and by clean-fid's
"clean" FID with KID beside it, on the same Inception features (README.md, "Metrics"). Weights
are local files, never downloaded; a missing one is a one-line DataError.

Units, as returned: ``cmmd`` is CMMD x 1000 (the paper's and google-research/cmmd's convention,
``CMMD_SCALE``); ``fid_image`` is plain FID; ``kid_image`` is clean-fid's ``kernel_distance``,
the raw unbiased MMD^2 (not the x 1000 some KID tables print).

Images may be float ``(N, 3, H, W)`` in [0, 1] or uint8 ``(N, H, W, 3)``; both become uint8
first, exactly what a saved PNG holds -- the form in which the reference FID (clean-fid folders)
and CMMD (google-research/cmmd) numbers are computed, so the values are comparable.
"""

from __future__ import annotations

import importlib
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cleanfid.fid import get_batch_features
from cleanfid.resize import build_resizer
from PIL import Image

from dmf_ray.errors import ConfigError, DataError
from dmf_ray.core.geometry import sq_distances
from dmf_ray.eval.metrics import Features, _as_features, _as_pair, frechet_distance, kernel_inception_distance

ImageBatch = torch.Tensor | np.ndarray
Decoder = Callable[[torch.Tensor], ImageBatch]
FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]
#: (CLIP embeddings, FID features) of decoded latents; None where that score is not configured.
ImageFeatures = tuple[torch.Tensor | None, np.ndarray | None]

CMMD_SIGMA: float = 10.0  # the CMMD RBF bandwidth and x1000 reporting scale (paper and reference code)
CMMD_SCALE: float = 1000.0  # cmmd() returns CMMD_SCALE * MMD^2: divide by it for the raw MMD^2
# OpenAI's CMMD weights need QuickGELU; plain "ViT-L-14-336" would silently embed differently.
DEFAULT_CLIP_MODEL: str = "ViT-L-14-336-quickgelu"
INCEPTION_FILENAME: str = "inception-2015-12-05.pt"  # the name clean-fid's InceptionV3W opens
DECODE_BATCH: int = 32  # latents decoded (and images embedded) per batch


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def to_uint8_images(images: ImageBatch, name: str = "images") -> np.ndarray:
    """float (N, 3, H, W) in [0, 1] or uint8 (N, H, W, 3) -> uint8 numpy (N, H, W, 3).

    Rounded, as saving a [0, 1] image does. Floats more than 1e-3 outside [0, 1] are refused
    rather than clipped: the usual cause is a [-1, 1] decoder, which clipping would silently halve.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        arr = images.numpy() if images.dtype == torch.uint8 else images.to(torch.float32).numpy()
    else:
        arr = np.asarray(images)
    if arr.dtype == np.uint8:
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"{name}: uint8 images must have shape (N, H, W, 3), got {arr.shape}")
        return np.ascontiguousarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name}: expected float (N, 3, H, W) in [0, 1] or uint8 (N, H, W, 3), got dtype {arr.dtype}")
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"{name}: float images must have shape (N, 3, H, W), got {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf")
    if arr.size and (arr.min() < -1e-3 or arr.max() > 1 + 1e-3):
        raise ValueError(
            f"{name}: float images must lie in [0, 1], got values in [{arr.min():.3g}, {arr.max():.3g}] "
            "(a decoder returning [-1, 1] must rescale with (x + 1) / 2)"
        )
    arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1))


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


# ----------------------------------------------------------------------------------------------
# CMMD
# ----------------------------------------------------------------------------------------------


def _rbf_kernel_sum(a: torch.Tensor, b: torch.Tensor, gamma: float, block: int) -> float:
    """sum_ij exp(-gamma ||a_i - b_j||^2) in row blocks: memory O(block * M)."""
    total = 0.0
    for rows in _batches(a.shape[0], block):
        total += float(torch.exp(-gamma * sq_distances(a[rows], b)).sum())
    return total


def cmmd(
    x_embeddings: Features,
    y_embeddings: Features,
    *,
    unbiased: bool = True,
    sigma: float = CMMD_SIGMA,
    scale: float = CMMD_SCALE,
    block: int = 2048,
) -> float:
    """CMMD (Jayasumana et al. 2024): scale * MMD^2 with k(a, b) = exp(-||a - b||^2 / (2 sigma^2)).

    Units: with the default ``scale`` = 1000 this is CMMD x 1000, the number the CMMD paper's
    tables and google-research/cmmd (``_SCALE = 1000``) print; ``scale=1`` gives the raw MMD^2.

    x (N, E) and y (M, E): embeddings as :meth:`ClipEmbedder.embed` returns them (unit rows; not
    renormalised here). ``unbiased`` (the estimator the paper names) drops the i = j terms, so
    two samples of one distribution score about 0, possibly below; ``unbiased=False`` is the
    V-statistic google-research/cmmd ``distance.mmd`` computes, to reproduce published numbers.
    They differ by O(1/N). Computed in float64.
    """
    a, b = _as_pair(x_embeddings, y_embeddings, ("x_embeddings", "y_embeddings"))
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    x, y = torch.from_numpy(a), torch.from_numpy(b)
    n, m = x.shape[0], y.shape[0]
    gamma = 1.0 / (2.0 * sigma**2)
    k_xx = _rbf_kernel_sum(x, x, gamma, block)
    k_yy = _rbf_kernel_sum(y, y, gamma, block)
    k_xy = _rbf_kernel_sum(x, y, gamma, block)
    if unbiased:
        # k(a, a) = exp(0) = 1 exactly, so the diagonal contributes n (resp. m) to each sum.
        mmd2 = (k_xx - n) / (n * (n - 1)) + (k_yy - m) / (m * (m - 1)) - 2.0 * k_xy / (n * m)
    else:
        mmd2 = k_xx / n**2 + k_yy / m**2 - 2.0 * k_xy / (n * m)
    return float(scale * mmd2)


# ----------------------------------------------------------------------------------------------
# CLIP embeddings
# ----------------------------------------------------------------------------------------------


def _is_torchscript_archive(path: Path) -> bool:
    """A TorchScript zip has ``<name>/constants.pkl``; a torch.save zip has not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _check_architecture(model: torch.nn.Module, model_name: str, path: Path) -> None:
    """Refuse a TorchScript archive of another architecture than ``model_name`` (a state-dict
    file is loaded strictly into it, so only an archive can get here mismatched)."""
    import open_clip

    cfg = open_clip.get_model_config(model_name) or {}
    want = (cfg.get("embed_dim"), cfg.get("vision_cfg", {}).get("image_size"))
    size = getattr(model.visual, "image_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    projection = getattr(model, "text_projection", None)
    got = (projection.shape[1] if isinstance(projection, torch.Tensor) else want[0], size)
    if None not in want and got != want:
        raise DataError(
            path,
            f"holds a CLIP with embed_dim {got[0]} and image size {got[1]}, not {model_name} "
            f"(embed_dim {want[0]}, image size {want[1]})",
        )


class ClipEmbedder:
    """L2-normalised open_clip image embeddings, for CMMD.

    From an open_clip model name and a LOCAL weights file: for CMMD ``ViT-L-14-336-quickgelu``
    with OpenAI's TorchScript ``ViT-L-14-336px.pt`` or an open_clip state-dict file.
    Preprocessing is open_clip's validation transform on 8-bit PIL images, as the CMMD
    reference does on PNGs.
    """

    def __init__(
        self,
        model_name: str,
        weights_path: str | os.PathLike[str],
        *,
        device: torch.device | str | None = None,
        batch_size: int = 32,
    ) -> None:
        import open_clip

        if not isinstance(model_name, str) or model_name not in open_clip.list_models():
            raise ConfigError(
                "eval.clip_model",
                f"unknown open_clip model {model_name!r} (for CMMD use {DEFAULT_CLIP_MODEL!r})",
            )
        path = Path(weights_path)
        if not path.is_file():
            raise DataError(
                path, f"CLIP weights file not found (needed for CMMD with {model_name}; weights are never downloaded)"
            )
        try:
            if _is_torchscript_archive(path):
                # OpenAI's original ViT-L-14-336px.pt (what the CMMD reference uses) is a TorchScript
                # archive, which open_clip's state-dict loader refuses; load_openai_model rebuilds
                # the architecture (with QuickGELU) from it instead.
                model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
                preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=str(path), device="cpu", pretrained_image=False, pretrained_text=False
                )
        except Exception as exc:  # noqa: BLE001 -- any failure to read the file is a data problem
            raise DataError(path, f"cannot load as open_clip {model_name} weights ({_one_line(exc)})") from exc
        _check_architecture(model, model_name, path)
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, images: ImageBatch) -> torch.Tensor:
        """uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1] -> float32 CPU tensor (N, E), unit rows."""
        pixels = to_uint8_images(images)
        out = []
        for rows in _batches(pixels.shape[0], self.batch_size):
            batch = torch.stack([self.preprocess(Image.fromarray(img)) for img in pixels[rows]])
            emb = self.model.encode_image(batch.to(self.device), normalize=True)
            out.append(emb.float().cpu())
        if not out:
            return torch.empty(0, 0)
        return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# FID (clean-fid)
# ----------------------------------------------------------------------------------------------


def load_inception(path: str | os.PathLike[str], device: torch.device | str | None = None) -> FeatureExtractor:
    """clean-fid's Inception-v3 feature extractor (2048-d pool features) from a local file.

    ``path`` is ``inception-2015-12-05.pt`` or its folder (clean-fid opens the file by that fixed
    name, so a renamed one is refused). The extractor takes (B, 3, 299, 299) floats in [0, 255].
    """
    from cleanfid.inception_torchscript import InceptionV3W

    p = Path(path)
    if p.is_dir():
        folder, file = p, p / INCEPTION_FILENAME
    else:
        folder, file = p.parent, p
        if p.name != INCEPTION_FILENAME and p.exists():
            raise DataError(p, f"clean-fid loads Inception weights by the file name {INCEPTION_FILENAME}; rename it")
    if not file.is_file():
        raise DataError(file, "Inception weights file not found (needed for FID on images; weights are never downloaded)")
    try:
        model = InceptionV3W(str(folder), download=False, resize_inside=False)
    except Exception as exc:  # noqa: BLE001 -- a corrupt or foreign file is a data problem
        raise DataError(file, f"cannot load as clean-fid Inception torchscript ({_one_line(exc)})") from exc
    return model.to(_resolve_device(device)).eval()


def image_features(
    images: ImageBatch,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """clean-fid "clean"-mode features of in-memory images: (N, D) float numpy.

    The steps of clean-fid's folder pipeline without the files; ``extractor`` is
    :func:`load_inception`'s or any clean-fid ``custom_feat_extractor``-style callable.
    """
    pixels = to_uint8_images(images)
    dev = _resolve_device(device)
    resize = build_resizer("clean")
    feats = []
    for rows in _batches(pixels.shape[0], batch_size):
        batch = torch.stack([torch.from_numpy(resize(img).transpose(2, 0, 1).copy()) for img in pixels[rows]])
        feats.append(np.asarray(get_batch_features(batch, extractor, dev)))
    if not feats:
        return np.empty((0, 0))
    return np.concatenate(feats).reshape(pixels.shape[0], -1)


# ----------------------------------------------------------------------------------------------
# Decoder hook and the evaluation entry point
# ----------------------------------------------------------------------------------------------


def load_decoder(spec: str) -> Decoder:
    """Import ``"package.module:function"`` (or ``module:Object.method``) and return the callable.

    The callable maps latents (N, D) float32 -> images (module docstring), under no_grad. A
    string because the ALAE decoder lives outside this package; EvalConfig has checked its form.
    """
    field = "eval.decoder"
    module_name, attr_path = (part.strip() for part in spec.split(":"))
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 -- ImportError or an error raised while importing it
        raise ConfigError(field, f"cannot import module {module_name!r} ({_one_line(exc)})") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(field, f"module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(field, f"{spec!r} is not callable (it is a {type(obj).__name__})")
    return obj


def _decoded_features(
    latents: Features,
    decoder: Decoder,
    clip: ClipEmbedder | None,
    fid_extractor: FeatureExtractor | None,
    batch_size: int,
    device: torch.device | str | None,
    name: str,
) -> ImageFeatures:
    """Decode in batches and keep only the features: a whole eval set of 1024^2 images would not fit."""
    latents = torch.from_numpy(_as_features(latents, name)).to(torch.float32)
    clip_out, fid_out = [], []
    for rows in _batches(latents.shape[0], batch_size):
        with torch.no_grad():
            images = to_uint8_images(decoder(latents[rows]), f"{name} decoded by eval.decoder")
        if images.shape[0] != rows.stop - rows.start:
            raise ValueError(f"eval.decoder returned {images.shape[0]} images for {rows.stop - rows.start} latents")
        if clip is not None:
            clip_out.append(clip.embed(images))
        if fid_extractor is not None:
            fid_out.append(image_features(images, fid_extractor, batch_size=batch_size, device=device))
    return (
        torch.cat(clip_out) if clip is not None else None,
        np.concatenate(fid_out) if fid_extractor is not None else None,
    )


def _scores_of_features(mapped: ImageFeatures, target: ImageFeatures) -> dict[str, float]:
    (clip_m, fid_m), (clip_t, fid_t) = mapped, target
    scores: dict[str, float] = {}
    if clip_m is not None and clip_t is not None:
        scores["cmmd"] = cmmd(clip_m, clip_t)
    if fid_m is not None and fid_t is not None:
        scores["fid_image"] = frechet_distance(fid_m, fid_t)
        scores["kid_image"] = kernel_inception_distance(fid_m, fid_t)
    return scores


def build_image_scorer(
    cfg: Any, target_latents: Features, device: torch.device | str | None = None
) -> Callable[[Features], dict[str, float]] | None:
    """The run's image scorer from its ``eval`` section (a ``dmf_ray.trainer.config.EvalConfig``), or None.

    The WHOLE target set is decoded and embedded once, here, with the models loaded, so missing
    weights fail before any training step: FID is biased upwards at small N and its bias depends
    on N (Chong & Forsyth 2020, arXiv 1911.07023), so a capped target set would give numbers that
    compare with no published one. ``cfg.samples`` bounds only the mapped side (its first rows,
    decoded at every evaluation). Returns ``score(mapped_latents) -> {"cmmd", "fid_image",
    "kid_image"}``, each only when its weights are configured (units: module docstring).
    """
    if cfg.decoder is None:
        return None
    decoder = load_decoder(cfg.decoder)
    clip = ClipEmbedder(cfg.clip_model, cfg.clip_weights, device=device) if cfg.clip_weights else None
    extractor = load_inception(cfg.inception_weights, device=device) if cfg.inception_weights else None

    def features(latents: Features, name: str) -> ImageFeatures:
        return _decoded_features(latents, decoder, clip, extractor, DECODE_BATCH, device, name)

    target = features(target_latents, "target_latents")

    def score(mapped: Features) -> dict[str, float]:
        return _scores_of_features(features(mapped[: cfg.samples], "mapped_latents"), target)

    return score
