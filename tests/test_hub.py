"""Models by name (jax_refine.hub): download, verify, convert once, cache, clear errors.

A loopback HTTP server (127.0.0.1, port 0, a daemon thread) serves the published formats
made from the golden tiny generator (tests/lama_files.py) in place of the real download.
"""

import hashlib
import os
import socket
import time

import numpy as np
import pytest

import jax_refine
from jax_refine import hub
from jax_refine import refine as refine_lib
from jax_refine.checkpoint import read_metadata

import lama_files
from conftest import GOLDEN, load_golden_image
from file_server import FileServer

FORMATS = {"torchscript": lama_files.torchscript, "zip": lama_files.lama_zip, "safetensors": lama_files.safetensors}


@pytest.fixture(scope="session", params=list(FORMATS))
def published(request, tmp_path_factory):
    """(format, bytes) of Big-LaMa's stand-in in each published format."""
    if request.param == "torchscript":
        pytest.importorskip("torch")
    path = FORMATS[request.param](tmp_path_factory.mktemp(request.param) / "big-lama.file")
    return request.param, path.read_bytes()


@pytest.fixture
def server(published):
    server = FileServer({"big-lama.pt": published[1]})
    yield server
    server.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("JAX_REFINE_HOME", str(cache))
    return cache


def serve_as_big_lama(monkeypatch, url, data):
    monkeypatch.setenv("JAX_REFINE_BIG_LAMA_URL", url)
    monkeypatch.setenv("JAX_REFINE_BIG_LAMA_SHA256", hashlib.sha256(data).hexdigest())


def assert_golden_pixels(model):
    """Plain prediction equals the original LaMa's within the parity bound (1e-5)."""
    image, mask = load_golden_image("astronaut_251x317")
    out, _ = refine_lib.predict(model, image[None], (mask > 0).astype(np.float32)[None, ..., None])
    np.testing.assert_allclose(out[0], np.load(GOLDEN / "predict_astronaut_251x317.npy"), rtol=0, atol=1e-5)


def cache_files(cache):
    """The cache's files but its (empty, lasting) lock files."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock"
                  ) if cache.exists() else []


def test_download_verify_convert_cache_and_no_second_request(server, published, cache, monkeypatch, capfd):
    serve_as_big_lama(monkeypatch, server.url("big-lama.pt"), published[1])
    model = jax_refine.load("big-lama")
    assert server.requests == ["/big-lama.pt"]
    assert "Licence" in capfd.readouterr().err  # shown on the first download
    assert_golden_pixels(model)
    assert (cache / "downloads" / "big-lama.pt").read_bytes() == published[1]
    meta = read_metadata(cache / "models" / "big-lama")
    assert meta["source"]["sha256"] == hashlib.sha256(published[1]).hexdigest()
    server.close()  # a second load needs no server at all
    assert_golden_pixels(jax_refine.load("big-lama"))
    assert server.requests == ["/big-lama.pt"]
    assert "Licence" not in capfd.readouterr().err


def test_wrong_checksum_is_a_clear_error_and_nothing_is_cached(server, published, cache, monkeypatch):
    monkeypatch.setenv("JAX_REFINE_BIG_LAMA_URL", server.url("big-lama.pt"))
    monkeypatch.setenv("JAX_REFINE_BIG_LAMA_SHA256", "0" * 64)
    with pytest.raises(hub.DownloadError) as err:
        jax_refine.load("big-lama")
    message = str(err.value)
    assert server.url("big-lama.pt") in message and "0" * 64 in message and "does not match" in message
    assert "jax-refine convert big-lama.pt" in message and str(cache / "downloads" / "big-lama.pt") in message
    assert cache_files(cache) == []


def test_cut_download_leaves_nothing_and_a_retry_succeeds(server, published, cache, monkeypatch):
    serve_as_big_lama(monkeypatch, server.url("big-lama.pt"), published[1])
    server.cut = True
    with pytest.raises(hub.DownloadError) as err:
        jax_refine.load("big-lama")
    assert server.url("big-lama.pt") in str(err.value)
    assert cache_files(cache) == []
    server.cut = False
    assert_golden_pixels(jax_refine.load("big-lama"))
    assert len(server.requests) == 2


def test_no_server_is_a_clear_error_naming_the_url(published, cache, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/big-lama.pt"
    serve_as_big_lama(monkeypatch, url, published[1])
    with pytest.raises(hub.DownloadError, match="could not download big-lama") as err:
        jax_refine.load("big-lama")
    assert url in str(err.value) and "Connection refused" in str(err.value)
    assert cache_files(cache) == []


# ---------------------------------------------------------------- the registry's own checks


@pytest.fixture
def tiny_entry(monkeypatch):
    """A registry entry 'tiny-lama' for LaMa's zip layout, with its size, MD5 and SHA-256."""
    def register(data, url, **changes):
        mirror = hub.Mirror("tiny-lama.zip", url, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                            md5=hashlib.md5(data).hexdigest())
        entry = hub.KnownModel("tiny-lama", (hub.dataclasses.replace(mirror, **changes),), licence="test licence")
        monkeypatch.setitem(hub.REGISTRY, "tiny-lama", entry)
    return register


@pytest.fixture(scope="module")
def zip_bytes(tmp_path_factory):
    return lama_files.lama_zip(tmp_path_factory.mktemp("zip") / "z.zip").read_bytes()


@pytest.mark.parametrize("change, reason", [(dict(size=123), "expected 123"), (dict(md5="0" * 32), "MD5")])
def test_registry_size_and_md5_are_checked_before_the_file_is_kept(zip_bytes, cache, tiny_entry, change, reason):
    served = FileServer({"tiny-lama.zip": zip_bytes})
    try:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"), **change)
        with pytest.raises(hub.DownloadError, match=reason):
            hub.checkpoint("tiny-lama")
        assert cache_files(cache) == []
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        assert (hub.checkpoint("tiny-lama") / "jax_refine.json").is_file()
    finally:
        served.close()


def test_names_work_in_inpaint_and_the_cli(zip_bytes, cache, tiny_entry, tmp_path):
    from PIL import Image

    from jax_refine.cli import main

    served = FileServer({"tiny-lama.zip": zip_bytes})
    try:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        image, mask = load_golden_image("astronaut_251x317")
        filled = jax_refine.inpaint(image, mask, model="tiny-lama", method="plain")
        np.testing.assert_allclose(filled, np.load(GOLDEN / "predict_astronaut_251x317.npy"), rtol=0, atol=1e-5)
        Image.fromarray((image * 255).round().astype(np.uint8)).save(tmp_path / "a.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "a_mask.png")
        assert main(["inpaint", str(tmp_path / "a.png"), str(tmp_path / "a_mask.png"), "-o", str(tmp_path / "o.png"),
                     "--model", "tiny-lama", "--no-refine", "-q"]) == 0
        assert len(served.requests) == 1  # downloaded once, then the cached conversion
    finally:
        served.close()


def test_environment_overrides_and_cache_location(monkeypatch, tmp_path):
    for name in ("JAX_REFINE_HOME", "XDG_CACHE_HOME", "JAX_REFINE_BIG_LAMA_URL", "JAX_REFINE_BIG_LAMA_SHA256"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "jax_refine"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "jax_refine"
    monkeypatch.setenv("JAX_REFINE_HOME", str(tmp_path / "home2"))
    assert hub.cache_dir() == tmp_path / "home2"
    published = hub.known_model("big-lama").mirrors
    assert [(m.filename, m.size) for m in published] == [
        ("big-lama.pt", 205_669_692), ("big-lama.zip", 381_428_720), ("lama.ckpt", 410_046_389)]
    assert published[0].md5 == "e3aa4aaa15225a33ec84f9f4bc47e500"
    assert published[0].url == "https://github.com/Sanster/models/releases/download/add_big_lama/big-lama.pt"
    assert published[1].url == "https://huggingface.co/smartywu/big-lama/resolve/main/big-lama.zip"
    assert published[2].url == "https://huggingface.co/lllyasviel/Annotators/resolve/main/lama.ckpt"
    monkeypatch.setenv("JAX_REFINE_BIG_LAMA_URL", "https://mirror.example/big-lama.pt")
    [mirror] = hub.known_model("big-lama").mirrors
    assert mirror == hub.dataclasses.replace(published[0], url="https://mirror.example/big-lama.pt")
    monkeypatch.setenv("JAX_REFINE_BIG_LAMA_URL", "https://mirror.example/files/lama.ckpt?download=1")
    [mirror] = hub.known_model("big-lama").mirrors  # the registered file of that name is expected
    assert mirror.sha256 == published[2].sha256 and mirror.size == published[2].size
    monkeypatch.setenv("JAX_REFINE_BIG_LAMA_SHA256", "AB" * 32)
    [private] = hub.known_model("big-lama").mirrors
    assert private.sha256 == "ab" * 32 and private.size is None and private.md5 is None


def test_temporaries_of_killed_downloads_are_removed_by_the_next_download(zip_bytes, cache, tiny_entry):
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    stale = downloads / f".tiny-lama.zip.{'ab' * 8}.part"
    others = [downloads / ".tiny-lama.zip.part", downloads / f".other.zip.{'ab' * 8}.part", downloads / "notes.txt"]
    for path in [stale, *others]:
        path.write_bytes(b"x")
    served = FileServer({"tiny-lama.zip": zip_bytes})
    try:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        assert hub.fetch(hub.known_model("tiny-lama")) == downloads / "tiny-lama.zip"
    finally:
        served.close()
    assert not stale.exists() and all(p.exists() for p in others)


def test_load_none_is_the_bundled_model():
    model = jax_refine.load(None)
    assert model.config == jax_refine.default_model().config
    assert model is not jax_refine.default_model()  # load gives a new model, default_model the cached one
