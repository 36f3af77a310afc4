"""``python -m dmf_ray.data.ffhq_alae fetch`` (dmf_ray.data.ffhq_fetch) against a local HTTP server.

The server runs in a thread on 127.0.0.1 (an ephemeral port) and serves good and corrupted
copies; an autouse guard refuses every socket connection that is not to the loopback address,
so these tests cannot reach the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dmf_ray.data import ffhq_fetch
from dmf_ray.data.ffhq_fetch import PUBLISHED, FetchError, PublishedFile, fetch, main, source_urls

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ffhq_alae"
NAMES = ("age.npy", "gender.npy", "latents.npy")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"a test tried to reach {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


class Server:
    """Serves ``files`` (URL path -> bytes); paths in ``partial`` announce their full length and
    send only half of it, like a dropped connection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.partial: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- the http.server hook name
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.partial else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving (idempotent: a test may close it early to refuse connections)."""
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _small_set() -> tuple[dict[str, bytes], tuple[PublishedFile, ...]]:
    """A small stand-in for the published files: (name -> bytes, their specs)."""
    rng = np.random.default_rng(0)
    data = {
        "age.npy": _npy(rng.integers(-1, 70, size=(40, 1)).astype(np.float64)),
        "gender.npy": _npy(rng.choice(np.array(["male", "female", ""]), size=40)),
        "latents.npy": _npy(rng.standard_normal((40, 8)).astype(np.float32)),
    }
    specs = tuple(
        PublishedFile(spec.name, spec.drive_id, sha256=hashlib.sha256(data[spec.name]).hexdigest())
        if spec.sha256 is not None else PublishedFile(spec.name, spec.drive_id, shape=(40, 8), dtype="float32")
        for spec in PUBLISHED
    )
    return data, specs


def _serve(server: Server, data: dict[str, bytes]) -> dict[str, str]:
    server.files.update({f"/{name}": body for name, body in data.items()})
    return source_urls(PUBLISHED, server.url)


def _assert_nothing_written(folder: Path) -> None:
    assert not folder.exists()  # every test's --out is a fresh name: not even the folder is made


def test_good_download_is_verified_and_complete(server: Server, tmp_path: Path) -> None:
    data, specs = _small_set()
    out = tmp_path / "ffhq"
    paths = fetch(out, _serve(server, data), specs)
    assert [p.name for p in paths] == list(NAMES)
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)  # no staging folder left
    for name in NAMES:
        assert (out / name).read_bytes() == data[name]


def _latents_with_nan() -> bytes:
    latents = np.zeros((40, 8), dtype=np.float32)
    latents[17, 3] = np.nan
    return _npy(latents)


CORRUPTIONS = {
    "wrong sha": ("gender.npy", lambda good: good[:-4] + b"oops", "sha256"),
    "truncated label": ("age.npy", lambda good: good[: len(good) // 2], "sha256"),
    "truncated latents": ("latents.npy", lambda good: good[: len(good) // 2], "not a readable .npy array"),
    "NaN latents": ("latents.npy", lambda good: _latents_with_nan(), "contains NaN or inf (first in row 17)"),
    "wrong shape": ("latents.npy", lambda good: _npy(np.zeros((40, 9), np.float32)), "shape (40, 9), expected (40, 8)"),
    "wrong dtype": ("latents.npy", lambda good: _npy(np.zeros((40, 8), np.float64)), "dtype float64, expected float32"),
    "a web page": ("latents.npy", lambda good: b"<html>Google Drive - quota exceeded</html>", "not a readable .npy"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_each_corruption_is_one_error_and_writes_nothing(server: Server, tmp_path: Path, case: str) -> None:
    data, specs = _small_set()
    name, corrupt, reason = CORRUPTIONS[case]
    data[name] = corrupt(data[name])
    out = tmp_path / "ffhq"
    with pytest.raises(FetchError) as err:
        fetch(out, _serve(server, data), specs)
    message = str(err.value)
    assert message.startswith(f"{name} from {server.url}/{name}: ") and reason in message and "\n" not in message
    _assert_nothing_written(out)


def test_partial_transfer_and_missing_file_are_errors(server: Server, tmp_path: Path) -> None:
    data, specs = _small_set()
    urls = _serve(server, data)
    server.partial.add("/latents.npy")  # announces 100% and sends 50%
    with pytest.raises(FetchError, match=r"^latents\.npy: download from .* failed \(Download is incomplete"):
        fetch(tmp_path / "a", urls, specs)
    _assert_nothing_written(tmp_path / "a")
    del server.files["/gender.npy"]
    with pytest.raises(FetchError, match=r"^gender\.npy: download from .* failed \(404"):
        fetch(tmp_path / "b", urls, specs)
    _assert_nothing_written(tmp_path / "b")


def test_failed_fetch_keeps_the_files_already_there(server: Server, tmp_path: Path) -> None:
    """A replacing fetch that fails touches nothing: the old files stay, byte for byte."""
    data, specs = _small_set()
    out = tmp_path / "ffhq"
    fetch(out, _serve(server, data), specs)
    server.files["/latents.npy"] = _latents_with_nan()
    with pytest.raises(FetchError):
        fetch(out, source_urls(PUBLISHED, server.url), specs)
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)
    assert (out / "latents.npy").read_bytes() == data["latents.npy"]


# ------------------------------------------------------------------------------------ the command


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_command_reports_a_bad_download_in_one_line_exit_1(server: Server, tmp_path: Path, capsys) -> None:
    server.files["/age.npy"] = b"not the published age array"
    out = tmp_path / "ffhq"
    assert main(["fetch", "--out", str(out), "--base-url", server.url, "--quiet"]) == 1
    line = _one_line_error(capsys)
    assert "age.npy" in line and "sha256" in line
    _assert_nothing_written(out)
    server.close()  # nothing listens there any more: a refused connection is one line too
    assert main(["fetch", "--out", str(out), "--base-url", server.url, "--quiet", "--timeout", "5"]) == 1
    assert "age.npy: download from" in _one_line_error(capsys)
    _assert_nothing_written(out)


@pytest.mark.parametrize(
    "argv, field",
    [
        (["fetch"], "--out"),
        (["pull", "--out", "x"], "invalid choice"),
        (["fetch", "--out", "x", "--timeout", "0"], "--timeout"),
        (["fetch", "--out", "x", "--bogus"], "--bogus"),
    ],
)
def test_command_usage_errors_exit_2(argv: list[str], field: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert field in _one_line_error(capsys)
    _assert_nothing_written(tmp_path / "x")


def test_command_refuses_to_replace_files_without_force(tmp_path: Path, capsys) -> None:
    (tmp_path / "gender.npy").write_bytes(b"mine")
    assert main(["fetch", "--out", str(tmp_path)]) == 2
    assert "--out" in _one_line_error(capsys) and (tmp_path / "gender.npy").read_bytes() == b"mine"
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["fetch", "--out", str(blocker / "sub")]) == 2
    assert "a_file is a file" in _one_line_error(capsys)


def test_default_source_is_the_drive_ids_through_gdown(tmp_path: Path, monkeypatch, capsys) -> None:
    """Without --base-url every file comes from its Google-Drive id, and gdown fetches it."""
    import gdown

    requested: list[str] = []

    def fake_download(url: str, output: str, **kwargs: object) -> str:
        requested.append(url)
        Path(output).write_bytes(b"a stand-in that fails verification")
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    assert main(["fetch", "--out", str(tmp_path / "ffhq"), "--quiet"]) == 1
    assert requested == ["https://drive.google.com/uc?id=1Vi6NzxCsS23GBNq48E-97Z9UuIuNaxPJ"]  # age first, then stop
    assert "age.npy from https://drive.google.com/uc?id=" in _one_line_error(capsys)
    urls = source_urls(PUBLISHED, None)
    assert [urls[n].rsplit("=", 1)[1] for n in NAMES] == [
        "1Vi6NzxCsS23GBNq48E-97Z9UuIuNaxPJ", "1SEdsmQGL3mOok1CPTBEfc_O1750fGRtf", "1ENhiTRsHtSjIjoRu1xYprcpNd8M9aVu8"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/ffhq_alae (the published label arrays)")
def test_published_labels_pass_and_the_real_command_fetches_them(server: Server, tmp_path: Path) -> None:
    """The hard-coded sums are those of the published files; end to end through ``python -m``."""
    for spec in PUBLISHED[:2]:
        assert ffhq_fetch.problem_with(SHARED / spec.name, spec) is None
    latents = tmp_path / "served.npy"
    np.lib.format.open_memmap(latents, mode="w+", dtype=np.float32, shape=(70_000, 512)).flush()  # zeros, finite
    server.files.update({f"/{n}": (SHARED / n).read_bytes() for n in ("age.npy", "gender.npy")})
    server.files["/latents.npy"] = latents.read_bytes()
    out = tmp_path / "ffhq"
    run = subprocess.run(
        [sys.executable, "-m", "dmf_ray.data.ffhq_alae", "fetch", "--out", str(out), "--base-url", server.url, "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == "" and run.stdout.startswith("fetched and verified")
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)
    assert (out / "age.npy").read_bytes() == (SHARED / "age.npy").read_bytes()


def test_latents_are_checked_block_by_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The finiteness check reads FINITE_ROWS rows at a time and still finds a NaN in a later block."""
    monkeypatch.setattr(ffhq_fetch, "FINITE_ROWS", 5)
    path = tmp_path / "latents.npy"
    path.write_bytes(_latents_with_nan())
    spec = PublishedFile("latents.npy", "unused", shape=(40, 8), dtype="float32")
    assert ffhq_fetch.problem_with(path, spec) == "contains NaN or inf (first in row 17)"
    path.write_bytes(_npy(np.zeros((40, 8), np.float32)))
    assert ffhq_fetch.problem_with(path, spec) is None
