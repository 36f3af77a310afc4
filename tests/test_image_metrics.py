"""Image-space metrics: CMMD formula, CLIP embedder, clean-fid FID, decoder hook, the run's image scorer.

No weights are downloaded: CLIP is a tiny randomly initialised open_clip model registered from a
config file, FID uses a random torch module as clean-fid custom feature extractor (standing in
for the loaded Inception), and clean-fid's Inception loader is exercised with a fake TorchScript
file of the right name and interface.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from cleanfid.fid import frechet_distance as clean_frechet_distance
from cleanfid.fid import kernel_distance as clean_kernel_distance
from cleanfid.fid import get_folder_features
from PIL import Image
from scipy.spatial.distance import cdist
from torch import nn

from dmf_ray.errors import ConfigError, DataError
from dmf_ray.eval import image_metrics
from dmf_ray.eval.image_metrics import (
    INCEPTION_FILENAME,
    ClipEmbedder,
    build_image_scorer,
    cmmd,
    image_features,
    load_decoder,
    load_inception,
    to_uint8_images,
)
from dmf_ray.eval.metrics import frechet_distance, kernel_inception_distance
from dmf_ray.trainer.config import EvalConfig

TINY_CLIP = "dmf-tiny-clip-test"
# Widths of 64 because open_clip's OpenAI-state-dict rebuild assumes 64-wide heads.
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 64, "heads": 1, "layers": 1},
}
DECODER = "decoders_for_tests:latents_to_images"


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _images(seed: int, n: int = 12, size: int = 16, low: int = 0, high: int = 256) -> np.ndarray:
    return _rng(seed).integers(low, high, size=(n, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# CMMD
# ---------------------------------------------------------------------------------------------


def _cmmd_direct(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    """Textbook formula in float64 with explicit kernel matrices, sigma = 10, x1000."""
    k = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * 10.0**2))  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    if unbiased:
        xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    else:  # google-research/cmmd distance.mmd: means over all entries
        xx, yy = kxx.mean(), kyy.mean()
    return 1000.0 * (xx + yy - 2 * kxy.mean())


@pytest.mark.parametrize("unbiased", [True, False])
def test_cmmd_matches_direct_float64_formula(unbiased: bool) -> None:
    rng = _rng(1)
    x = _unit_rows(rng.standard_normal((37, 8)))
    y = _unit_rows(rng.standard_normal((23, 8)) + 0.5)
    expected = _cmmd_direct(x, y, unbiased)
    # block=7 makes the row-blocked sums cross block boundaries; float32 tensors are accepted.
    assert cmmd(x, y, unbiased=unbiased, block=7) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert cmmd(torch.from_numpy(x).float(), y, unbiased=unbiased) == pytest.approx(expected, rel=1e-5)


def test_cmmd_is_about_zero_for_one_distribution_and_positive_for_a_shift() -> None:
    rng = _rng(2)
    mean = rng.standard_normal(16)
    same_a = _unit_rows(rng.standard_normal((400, 16)) + mean)
    same_b = _unit_rows(rng.standard_normal((400, 16)) + mean)
    shifted = _unit_rows(rng.standard_normal((400, 16)) + mean + 1.0)
    null = cmmd(same_a, same_b)
    alt = cmmd(same_a, shifted)
    assert abs(null) < 0.2  # sampling noise; unbiased, so it may be slightly negative
    assert alt > 10 * max(abs(null), 0.05)
    # Identical sets: the unbiased estimate is (S - n^2) / (n^2 (n - 1)) * 2000 <= 0, the biased one 0.
    assert cmmd(same_a, same_a) <= 0 and cmmd(same_a, same_a, unbiased=False) == pytest.approx(0, abs=1e-9)


def test_cmmd_refuses_bad_embeddings() -> None:
    with pytest.raises(ValueError, match="different feature dimensions"):
        cmmd(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        cmmd(np.ones((1, 3)), np.ones((4, 3)))


# ---------------------------------------------------------------------------------------------
# CLIP embedder
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A registered tiny open_clip config, a random model of it and its weights on disk."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    cfg_file = folder / f"{TINY_CLIP}.json"
    cfg_file.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=None)
    model.eval()
    weights = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), weights)
    return {"model": model, "preprocess": preprocess, "weights": weights, "folder": folder}


@pytest.fixture(scope="module")
def embedder(tiny_clip: dict) -> ClipEmbedder:
    return ClipEmbedder(TINY_CLIP, tiny_clip["weights"], device="cpu", batch_size=5)


def test_clip_embedder_embeds_unit_vectors_deterministically(embedder: ClipEmbedder) -> None:
    images = _images(3, n=12, size=40)
    emb = embedder.embed(images)
    assert emb.shape == (12, 16) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(12), atol=1e-5)
    assert torch.equal(emb, embedder.embed(images))
    # float (N, 3, H, W) in [0, 1] is the same picture as its uint8 (N, H, W, 3) form.
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(embedder.embed(floats), emb, atol=1e-6)
    # Batching does not change the result.
    assert torch.allclose(embedder.embed(images[:5]), emb[:5], atol=1e-6)


def test_clip_embedder_from_local_weights_matches_the_model(tiny_clip: dict, embedder: ClipEmbedder) -> None:
    images = _images(4, n=6, size=32)
    with torch.no_grad():
        pixels = torch.stack([tiny_clip["preprocess"](Image.fromarray(img)) for img in images])
        expected = tiny_clip["model"].encode_image(pixels, normalize=True)
    assert torch.allclose(embedder.embed(images), expected, atol=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_clip_embedder_loads_an_openai_torchscript_archive(tiny_clip: dict, embedder: ClipEmbedder) -> None:
    # OpenAI's released CLIP files are TorchScript archives; build one from the tiny model.
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    model.load_state_dict(tiny_clip["model"].state_dict())
    del model._buffers["attn_mask"]  # OpenAI's archives do not store it as state
    example = torch.zeros(1, 3, 32, 32)
    archive = torch.jit.trace_module(model.eval(), {"encode_image": example})
    path = tiny_clip["folder"] / "tiny_openai_jit.pt"
    archive.save(str(path))
    loaded = ClipEmbedder(TINY_CLIP, path, device="cpu")
    images = _images(5, n=4, size=32)
    # The OpenAI rebuild rounds weights through float16, hence the tolerance.
    assert torch.allclose(loaded.embed(images), embedder.embed(images), atol=5e-3)
    with pytest.raises(DataError, match="not ViT-L-14-336-quickgelu") as err:
        ClipEmbedder("ViT-L-14-336-quickgelu", path, device="cpu")
    assert str(path) in str(err.value)


def test_clip_embedder_missing_weights_is_a_one_line_data_error(tmp_path: Path) -> None:
    missing = tmp_path / "ViT-L-14-336px.pt"
    with pytest.raises(DataError) as err:
        ClipEmbedder("ViT-L-14-336-quickgelu", missing)
    message = str(err.value)
    assert message.startswith(f"{missing}: ") and "not found" in message and "\n" not in message


def test_clip_embedder_bad_model_name_or_file(tiny_clip: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^eval\.clip_model: unknown open_clip model 'no-such-clip'"):
        ClipEmbedder("no-such-clip", tmp_path / "w.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError) as err:
        ClipEmbedder(TINY_CLIP, junk)
    assert str(err.value).startswith(f"{junk}: cannot load") and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# FID (clean-fid)
# ---------------------------------------------------------------------------------------------


class _RandomExtractor(nn.Module):
    """A clean-fid custom feature extractor: (B, 3, 299, 299) in [0, 255] -> (B, 6)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.proj = nn.Linear(48, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(self.pool(x / 255.0).flatten(1)))


@pytest.fixture(scope="module")
def extractor() -> nn.Module:
    return _RandomExtractor().eval()


@pytest.fixture
def fid_scorer(extractor: nn.Module, monkeypatch: pytest.MonkeyPatch):
    """``make(target, **eval_keys)``: build_image_scorer with ``extractor`` standing in for the loaded Inception."""
    loaded: list[str] = []
    monkeypatch.setattr(image_metrics, "load_inception", lambda path, device=None: (loaded.append(path), extractor)[1])

    def make(target: torch.Tensor, **keys: object):
        keys = {"decoder": DECODER, "inception_weights": "inception.pt", "samples": len(target), **keys}
        score = build_image_scorer(EvalConfig(**keys), target, device="cpu")
        assert loaded[-1] == keys["inception_weights"]
        return score

    return make


def _latents(seed: int, n: int = 16, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)) + shift


def test_fid_is_zero_for_identical_sets_and_positive_for_different(fid_scorer) -> None:
    target = _latents(10)
    score = fid_scorer(target)
    same, shifted = score(target), score(_latents(11, shift=2.0))
    assert set(same) == {"fid_image", "kid_image"}  # only what is configured is reported
    assert abs(same["fid_image"]) < 1e-6
    assert shifted["fid_image"] > 1e-3
    assert shifted["kid_image"] > 0 > same["kid_image"]  # unbiased: identical small sets score just below 0


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_fid_matches_clean_fid_frechet_distance_on_the_same_features(fid_scorer, extractor: nn.Module) -> None:
    target, mapped = _latents(12), _latents(13, shift=1.0)
    decoder = load_decoder(DECODER)
    fa = image_features(decoder(mapped), extractor, batch_size=7, device="cpu")
    fb = image_features(decoder(target), extractor, batch_size=7, device="cpu")
    assert fa.shape == (16, 6)
    expected = clean_frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    scores = fid_scorer(target)(mapped)
    assert scores["fid_image"] == pytest.approx(expected, rel=1e-6)
    np.random.seed(0)  # what kernel_inception_distance seeds clean-fid's subset draws with
    assert scores["kid_image"] == pytest.approx(clean_kernel_distance(fa.astype(np.float64), fb.astype(np.float64)), rel=1e-6)


def test_fid_and_kid_use_the_whole_target_set(fid_scorer, extractor: nn.Module) -> None:
    """eval.samples bounds the mapped side only: the target's 40 rows all enter FID and KID."""
    target, mapped = _latents(20, n=40), _latents(21, n=30, shift=0.5)
    scores = fid_scorer(target, samples=12)(mapped)
    decoder = load_decoder(DECODER)
    fa = image_features(decoder(mapped[:12]), extractor, device="cpu")
    fb = image_features(decoder(target), extractor, device="cpu")
    assert scores["fid_image"] == pytest.approx(frechet_distance(fa, fb), rel=1e-6)
    assert scores["kid_image"] == pytest.approx(kernel_inception_distance(fa, fb), rel=1e-6)
    capped = frechet_distance(fa, image_features(decoder(target[:12]), extractor, device="cpu"))
    assert abs(capped - scores["fid_image"]) > 0.1 * scores["fid_image"]  # the whole set differs from its head


def test_image_features_equal_clean_fid_folder_pipeline(extractor: nn.Module, tmp_path: Path) -> None:
    images = _images(14, n=6, size=20)
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i:03d}.png")
    theirs = get_folder_features(
        str(tmp_path), model=extractor, num_workers=0, batch_size=4, device=torch.device("cpu"), mode="clean", verbose=False
    )
    ours = image_features(images, extractor, batch_size=4, device="cpu")
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    # A float [0, 1] image is quantised like a saved PNG, so it gives the same features.
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255
    np.testing.assert_allclose(image_features(floats, extractor, device="cpu"), theirs, rtol=1e-6, atol=1e-7)


class _FakeInception(nn.Module):
    """The interface clean-fid's InceptionV3W uses: ``.layers`` maps normalised 299^2 images to 2048."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2048))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script / torch.jit.load deprecation
def test_inception_loads_through_clean_fid_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fake = _FakeInception().eval()
    path = tmp_path / INCEPTION_FILENAME
    torch.jit.script(fake).save(str(path))
    images = _images(15, n=3)
    resized = torch.from_numpy(image_features(images, lambda x: x.flatten(1), device="cpu")).reshape(3, 3, 299, 299)
    with torch.no_grad():
        expected = fake.layers((resized.float() - 128) / 128).numpy()
    for where in (path, tmp_path):  # the file or its folder
        inception = load_inception(where, device="cpu")
        feats = image_features(images, inception, device="cpu")
        assert feats.shape == (3, 2048)
        np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5)


def test_fid_without_weights_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / INCEPTION_FILENAME
    cfg = EvalConfig(decoder=DECODER, inception_weights=str(missing))
    with pytest.raises(DataError) as err:
        build_image_scorer(cfg, _latents(16), device="cpu")
    assert str(err.value).startswith(f"{missing}: Inception weights file not found") and "\n" not in str(err.value)
    with pytest.raises(DataError, match=f"^{tmp_path / INCEPTION_FILENAME}: "):
        load_inception(tmp_path)  # a folder without the file
    renamed = tmp_path / "inception.pt"
    renamed.write_bytes(b"x")
    with pytest.raises(DataError, match="by the file name inception-2015-12-05.pt"):
        load_inception(renamed)


# ---------------------------------------------------------------------------------------------
# Images, decoder hook, the run's image scorer
# ---------------------------------------------------------------------------------------------


def test_to_uint8_images_checks_layout_and_range() -> None:
    floats = torch.rand(2, 3, 5, 4)
    out = to_uint8_images(floats)
    assert out.shape == (2, 5, 4, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.rint(floats.permute(0, 2, 3, 1).numpy().astype(np.float64) * 255))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*\(x \+ 1\) / 2"):
        to_uint8_images(floats * 2 - 1)
    with pytest.raises(ValueError, match=r"float images must have shape \(N, 3, H, W\)"):
        to_uint8_images(floats.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"uint8 images must have shape \(N, H, W, 3\)"):
        to_uint8_images(np.zeros((2, 3, 4, 4), dtype=np.uint8))


def test_load_decoder_imports_module_function() -> None:
    decoder = load_decoder(DECODER)
    images = decoder(torch.randn(3, 8))
    assert images.shape == (3, 3, 16, 16) and 0 <= float(images.min()) and float(images.max()) <= 1


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("no_such_module_dmf:decode", "cannot import module 'no_such_module_dmf' (ModuleNotFoundError"),
        ("decoders_for_tests:no_such_function", "has no attribute 'no_such_function'"),
        ("decoders_for_tests:NOT_CALLABLE", "is not callable (it is a int)"),
    ],
)
def test_load_decoder_errors_name_the_field(spec: object, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_decoder(spec)  # type: ignore[arg-type]
    message = str(err.value)
    assert message.startswith("eval.decoder: ") and problem in message and "\n" not in message


def test_image_scorer_end_to_end(tiny_clip: dict, embedder: ClipEmbedder, fid_scorer, monkeypatch) -> None:
    monkeypatch.setattr(image_metrics, "DECODE_BATCH", 5)  # several decoder batches of 16 latents
    decoder = load_decoder(DECODER)
    target, mapped_bad = _latents(0), _latents(1, shift=2.0)
    clip = {"clip_model": TINY_CLIP, "clip_weights": str(tiny_clip["weights"])}

    score = fid_scorer(target, **clip)
    good, bad = score(target.clone()), score(mapped_bad)
    assert set(good) == set(bad) == {"cmmd", "fid_image", "kid_image"}
    assert abs(good["fid_image"]) < 1e-6 and -0.5 < good["cmmd"] <= 0  # identical image sets
    assert bad["fid_image"] > 1e-3 and bad["cmmd"] > good["cmmd"]

    # Same CMMD as the step-by-step computation (decode, embed, score).
    emb_m, emb_t = embedder.embed(decoder(mapped_bad)), embedder.embed(decoder(target))
    assert bad["cmmd"] == pytest.approx(cmmd(emb_m, emb_t), rel=1e-6)
    # A decoder returning uint8 (N, H, W, 3) pictures gives the same scores; numpy latents work.
    again = fid_scorer(target.numpy(), decoder="decoders_for_tests:latents_to_uint8", **clip)(mapped_bad.numpy())
    assert again == pytest.approx(bad, rel=1e-6)
    # Only what is configured is reported.
    only_clip = build_image_scorer(EvalConfig(decoder=DECODER, samples=16, **clip), target, device="cpu")
    assert set(only_clip(mapped_bad)) == {"cmmd"}


def test_image_scorer_decodes_the_target_once(tiny_clip: dict, embedder: ClipEmbedder, monkeypatch) -> None:
    import decoders_for_tests

    decoded: list[int] = []
    original = decoders_for_tests.latents_to_images
    monkeypatch.setattr(decoders_for_tests, "latents_to_images", lambda z: (decoded.append(len(z)), original(z))[1])
    cfg = EvalConfig(decoder=DECODER, clip_model=TINY_CLIP, clip_weights=str(tiny_clip["weights"]), samples=12)
    target, mapped = _latents(5, n=20), _latents(6, n=20, shift=1.0)
    score = build_image_scorer(cfg, target, device="cpu")
    assert sum(decoded) == 20  # the whole target set, at build time
    first, second = score(mapped), score(mapped)
    assert sum(decoded) == 20 + 2 * 12 and first == second  # eval.samples mapped rows per evaluation
    expected = cmmd(embedder.embed(original(mapped[:12])), embedder.embed(original(target)))
    assert first == pytest.approx({"cmmd": expected}, rel=1e-6)
    assert build_image_scorer(EvalConfig(), target) is None


def test_training_reports_image_scores_when_a_decoder_is_configured(tiny_clip: dict, tiny_overrides: dict) -> None:
    """The trainer's evaluation decodes mapped and target latents and logs CMMD next to latent FD."""
    from dmf_ray.trainer.config import load_train_config
    from dmf_ray.data import load_dataset
    from dmf_ray.trainer.run import run_training as train

    cfg = load_train_config(None, {
        **tiny_overrides, "data.name": "gaussian-ot", "data.dim": 4, "model.kind": "residual", "steps": 4, "eval_every": 2,
        "eval.decoder": DECODER, "eval.clip_model": TINY_CLIP,
        "eval.clip_weights": str(tiny_clip["weights"]), "eval.samples": 16,
    })
    state = train(cfg, load_dataset(cfg.data), progress=False)
    # Validation during training; the final evaluation adds the test split's scores.
    val, test = ["val_cmmd", "val_fd"], ["test_cmmd", "test_fd"]
    assert [sorted(k for k in h if k in val + test) for h in state.history] == [val, sorted(val + test)]
    assert all(math.isfinite(h["val_cmmd"]) for h in state.history) and math.isfinite(state.history[-1]["test_cmmd"])


def test_eval_section_is_validated_at_the_edge(tmp_path: Path) -> None:
    from dmf_ray.trainer.config import load_train_config

    with pytest.raises(ConfigError, match="eval.decoder: needs eval.clip_weights"):
        load_train_config(None, {"eval.decoder": DECODER})
    for spec in ("decoders_for_tests.latents_to_images", "a:b:c", ":latents_to_images", "decoders_for_tests:"):
        with pytest.raises(ConfigError, match="^eval.decoder: expected 'module:function'"):
            load_train_config(None, {"eval.decoder": spec, "eval.clip_weights": "w.safetensors"})
    with pytest.raises(ConfigError, match="eval.decoder: required when image weights"):
        load_train_config(None, {"eval.clip_weights": str(tmp_path / "w.safetensors")})
    missing = tmp_path / "nope.safetensors"
    cfg = load_train_config(None, {"eval.decoder": DECODER, "eval.clip_model": TINY_CLIP,
                                   "eval.clip_weights": str(missing), "steps": 2, "eval_every": 1})
    from dmf_ray.data import load_dataset
    from dmf_ray.trainer.run import run_training as train

    with pytest.raises(DataError, match="nope.safetensors"):
        train(cfg, load_dataset(cfg.data), progress=False)
