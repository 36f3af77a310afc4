"""``python -m dmf_ray.data.ffhq_alae fetch --out DIR``: download the FFHQ ALAE arrays, verified.

The three files are the ones the ALAE-latent translation papers download with gdown from
Google Drive (Light Schrodinger Bridge, Korotin et al. 2024, arXiv 2310.01174; Optimal Flow
Matching, Kornilov et al. 2024, whose protocol DMF follows): ``latents.npy``, ``age.npy``,
``gender.npy`` (format and split: :mod:`dmf_ray.data.ffhq_alae`).

Why verify: a Drive link can serve a quota or virus-scan page instead of the file, and a
dropped connection leaves a short file; either would otherwise surface much later as a loader
error, or not at all. The label arrays must match the sha256 of the published files; the
latents (about 143 MB, no published sum) must be a (70000, 512) float32 array of finite values.

Why atomic: everything is downloaded into a hidden staging folder inside DIR and verified there,
and only then renamed into place (a rename within one file system is atomic, as in
:mod:`dmf_ray.files`); on any failure the staging folder is removed and DIR is as it was.
A failed or corrupt download is one line and exit code 1; bad usage is one line and exit 2.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import gdown
import numpy as np
import requests
from gdown.exceptions import DownloadError

from dmf_ray.cli import ArgumentParser, check_output_folder, run_cli
from dmf_ray.data.npy import open_npy
from dmf_ray.errors import ConfigError, DataError

HASH_BLOCK = 1 << 20  # bytes read per sha256 update
FINITE_ROWS = 8192  # latent rows checked at a time: memory stays small for any file size
DEFAULT_TIMEOUT_S = 60.0  # connect and per-read bound: a stalled server fails instead of hanging


@dataclass(frozen=True)
class PublishedFile:
    """One published array: its Google-Drive id and what a good copy must satisfy.

    ``sha256`` for files whose published bytes are known; otherwise (the latents) ``shape``
    and ``dtype`` of a finite floating-point array.
    """

    name: str
    drive_id: str
    sha256: str | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None


# Names and Drive ids as in the LightSB / OFM notebooks (the names ffhq_alae.py reads); the sums
# are of the published label files.
PUBLISHED: tuple[PublishedFile, ...] = (
    PublishedFile("age.npy", "1Vi6NzxCsS23GBNq48E-97Z9UuIuNaxPJ",
                  sha256="0662e232785ca5674bd8c1cf9699bb570ec7b6265191ee62c2d05688994bfe25"),
    PublishedFile("gender.npy", "1SEdsmQGL3mOok1CPTBEfc_O1750fGRtf",
                  sha256="cd1aabbe5b0cfaa917ec94c9b6a675376ceac69b3a430644b016f36da1421538"),
    PublishedFile("latents.npy", "1ENhiTRsHtSjIjoRu1xYprcpNd8M9aVu8", shape=(70_000, 512), dtype="float32"),
)  # small files first: a broken link fails before the large download


class FetchError(RuntimeError):
    """A download failed or its file is not the published one (one line: the file and why)."""


def source_urls(files: Sequence[PublishedFile], base_url: str | None) -> dict[str, str]:
    """file name -> URL: Google Drive by id, or ``base_url/<name>`` (a mirror, or a test server)."""
    if base_url is None:
        return {f.name: f"https://drive.google.com/uc?id={f.drive_id}" for f in files}
    return {f.name: f"{base_url.rstrip('/')}/{f.name}" for f in files}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def problem_with(path: Path, spec: PublishedFile) -> str | None:
    """Why ``path`` is not a good copy of ``spec``, or None. Latents are memory-mapped, not read whole."""
    if spec.sha256 is not None:
        got = _sha256(path)
        if got != spec.sha256:
            return f"sha256 {got[:16]}... differs from the published file's {spec.sha256[:16]}... ({path.stat().st_size} bytes)"
        return None
    try:
        array = open_npy(path)  # memory-mapped, never unpickled
    except DataError as error:
        return str(error).removeprefix(f"{error.path}: ")
    if spec.shape is not None and array.shape != spec.shape:
        return f"has shape {array.shape}, expected {spec.shape}"
    if spec.dtype is not None and array.dtype != np.dtype(spec.dtype):
        return f"has dtype {array.dtype}, expected {spec.dtype}"
    if not np.issubdtype(array.dtype, np.floating) or array.ndim == 0:
        return f"expected a floating-point array, got dtype {array.dtype} and shape {array.shape}"
    for start in range(0, len(array), FINITE_ROWS):
        block = array[start : start + FINITE_ROWS]
        finite_rows = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if not finite_rows.all():
            return f"contains NaN or inf (first in row {start + int(np.argmin(finite_rows))})"
    return None


def _download(url: str, dest: Path, timeout_s: float, quiet: bool) -> None:
    """gdown.download to ``dest`` (Drive links with their confirmation pages; plain URLs as they are)."""
    try:
        gdown.download(url, str(dest), quiet=quiet, use_cookies=False, timeout=timeout_s)
    except (DownloadError, requests.RequestException, OSError) as error:
        first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise FetchError(f"{dest.name}: download from {url} failed ({first_line})") from None


def fetch(
    out_dir: Path,
    urls: Mapping[str, str],
    files: Sequence[PublishedFile] = PUBLISHED,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    quiet: bool = True,
) -> list[Path]:
    """Download ``files`` from ``urls`` (name -> URL) into ``out_dir``, verified; their paths.

    All or nothing: any failure raises FetchError and leaves ``out_dir`` as it was (a folder
    made for the fetch is removed again). Existing files of those names are replaced (the CLI
    refuses that without ``--force``).
    """
    made = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".ffhq-fetch-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        for spec in files:
            staged = staging / spec.name
            _download(urls[spec.name], staged, timeout_s, quiet)
            problem = problem_with(staged, spec)
            if problem is not None:
                raise FetchError(f"{spec.name} from {urls[spec.name]}: {problem}")
    except FetchError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if made:
            out_dir.rmdir()
        raise FetchError(f"{error}; nothing was written to {out_dir}") from None
    else:
        for spec in files:
            os.replace(staging / spec.name, out_dir / spec.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / spec.name for spec in files]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``fetch`` command of ``python -m dmf_ray.data.ffhq_alae``: 0 fetched, 1 failed download, 2 bad usage."""
    parser = ArgumentParser(prog="python -m dmf_ray.data.ffhq_alae", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch"], help="download latents.npy, age.npy, gender.npy")
    parser.add_argument("--out", type=Path, required=True, help="folder to put the three files in")
    parser.add_argument("--base-url", default=None,
                        help="fetch BASE_URL/<file name> instead of the Google-Drive files (a mirror)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds to wait for a connection or for the next bytes")
    parser.add_argument("--force", action="store_true", help="replace files of those names already in --out")
    parser.add_argument("--quiet", action="store_true", help="no download progress")

    def command() -> int:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        if not args.timeout > 0:
            raise ConfigError("--timeout", f"must be > 0 seconds, got {args.timeout}")
        check_output_folder(args.out, "--out")
        present = [f.name for f in PUBLISHED if (args.out / f.name).exists()]
        if present and not args.force:
            raise ConfigError("--out", f"{args.out} already holds {', '.join(present)}; pass --force to replace")
        try:
            paths = fetch(args.out, source_urls(PUBLISHED, args.base_url), timeout_s=args.timeout, quiet=args.quiet)
        except FetchError as error:
            print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
            return 1
        print(f"fetched and verified {', '.join(p.name for p in paths)} in {args.out}")
        return 0

    return run_cli(command)
