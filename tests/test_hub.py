"""Models by name (jax_refine.hub): download, verify, convert once, cache, clear errors.

A loopback HTTP server (127.0.0.1, port 0, a daemon thread) serves the published formats
made from the golden tiny generator (tests/lama_files.py) in place of the real download.
"""

import errno
import gzip
import hashlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jax_refine
from jax_refine import hub
from jax_refine import refine as refine_lib
from jax_refine import checkpoint
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
    with FileServer({"tiny-lama.zip": zip_bytes}) as served:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"), **change)
        with pytest.raises(hub.DownloadError, match=reason):
            hub.checkpoint("tiny-lama")
        assert cache_files(cache) == []
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        assert (hub.checkpoint("tiny-lama") / "jax_refine.json").is_file()


def test_names_work_in_inpaint_and_the_cli(zip_bytes, cache, tiny_entry, tmp_path):
    from PIL import Image

    from jax_refine.cli import main

    with FileServer({"tiny-lama.zip": zip_bytes}) as served:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        image, mask = load_golden_image("astronaut_251x317")
        filled = jax_refine.inpaint(image, mask, model="tiny-lama", method="plain")
        np.testing.assert_allclose(filled, np.load(GOLDEN / "predict_astronaut_251x317.npy"), rtol=0, atol=1e-5)
        Image.fromarray((image * 255).round().astype(np.uint8)).save(tmp_path / "a.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "a_mask.png")
        assert main(["inpaint", str(tmp_path / "a.png"), str(tmp_path / "a_mask.png"), "-o", str(tmp_path / "o.png"),
                     "--model", "tiny-lama", "--no-refine", "-q"]) == 0
        assert len(served.requests) == 1  # downloaded once, then the cached conversion


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
    with FileServer({"tiny-lama.zip": zip_bytes}) as served:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        assert hub.fetch(hub.known_model("tiny-lama")) == downloads / "tiny-lama.zip"
    assert not stale.exists() and all(p.exists() for p in others)


def test_load_none_is_the_bundled_model():
    model = jax_refine.load(None)
    assert model.config == jax_refine.default_model().config
    assert model is not jax_refine.default_model()  # load gives a new model, default_model the cached one


# ---------------------------------------------------------------- bounded downloads (issue 23)


def endless(headers):
    """A response of zeros without end (the client has to stop reading)."""
    return lambda: (headers, itertools.repeat(b"\0" * 65536))


def drip(seconds):
    """A response sending one byte every `seconds` without end, announcing no length."""
    def chunks():
        while True:
            yield b"\0"
            time.sleep(seconds)
    return lambda: ({}, chunks())


def gzip_bomb():
    """A gzip-encoded body of 1 MB that decodes to 256 MiB of zeros."""
    body = gzip.compress(b"\0" * (256 << 20), compresslevel=1)
    return lambda: ({"Content-Encoding": "gzip", "Content-Length": str(len(body))}, [body])


@pytest.mark.parametrize("response, reason", [
    (endless({}), "more than the expected"),
    (endless({"Content-Length": str(1 << 40)}), "announces 1099511627776 bytes"),
    (gzip_bomb(), "'gzip'-encoded body"),
    (drip(0.02), "the transfer stalled"),
], ids=["endless", "oversized", "gzip-bomb", "drip"])
def test_hostile_servers_are_stopped_at_once_and_leave_nothing(zip_bytes, cache, tiny_entry, monkeypatch, response,
                                                                reason):
    monkeypatch.setattr(hub, "_RATE_WINDOW", 0.5)
    monkeypatch.setattr(hub, "_MIN_RATE", 1000)  # bytes/s: a drip of 50 bytes/s is under it
    with FileServer({"tiny-lama.zip": response}) as served:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        start = time.monotonic()
        with pytest.raises(hub.DownloadError, match=reason) as err:
            hub.checkpoint("tiny-lama")
        assert time.monotonic() - start < 30
    assert served.url("tiny-lama.zip") in str(err.value)
    assert cache_files(cache) == []


def test_a_silent_server_ends_at_the_read_timeout(zip_bytes, cache, tiny_entry, monkeypatch):
    monkeypatch.setattr(hub, "_READ_TIMEOUT", 0.5)
    with FileServer({"tiny-lama.zip": lambda: ({"Content-Length": str(len(zip_bytes))}, [time.sleep(3) or b""])}) as served:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        with pytest.raises(hub.DownloadError, match="timed out"):
            hub.checkpoint("tiny-lama")
    assert cache_files(cache) == []


def test_too_little_free_space_is_one_clear_error_before_any_request(zip_bytes, cache, tiny_entry, monkeypatch):
    with FileServer({"tiny-lama.zip": zip_bytes}) as served:
        monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1000))
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        with pytest.raises(hub.DownloadError, match="the disk is full") as err:
            hub.checkpoint("tiny-lama")
    assert "MB needed, 0.0 MB free" in str(err.value) and served.requests == []
    assert cache_files(cache) == []


def test_a_disk_filling_during_the_download_is_one_clear_error_and_leaves_nothing(zip_bytes, cache, tiny_entry,
                                                                                  monkeypatch):
    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):  # the temporary file's writes fail as on a full disk
        f = real_open(path, mode, *args, **kwargs)
        if Path(path).suffix == ".part":
            def write(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            f.write = write
        return f

    monkeypatch.setattr(hub, "open", full_disk_open, raising=False)
    with FileServer({"tiny-lama.zip": zip_bytes}) as served:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        with pytest.raises(hub.DownloadError, match="the disk is full: No space left on device"):
            hub.checkpoint("tiny-lama")
    assert cache_files(cache) == []


# ---------------------------------------------------------------- mirrors


def test_mirrors_are_tried_in_order_each_verified(zip_bytes, cache, monkeypatch):
    bad = bytes(len(zip_bytes))  # the right size, the wrong bytes
    with FileServer({"second/tiny-lama.zip": bad, "third/lama.zip": zip_bytes}) as served:
        digest = hashlib.sha256(zip_bytes).hexdigest()
        mirrors = (hub.Mirror("tiny-lama.zip", served.url("first/tiny-lama.zip"), len(zip_bytes), digest),
                   hub.Mirror("tiny-lama.zip", served.url("second/tiny-lama.zip"), len(zip_bytes), digest),
                   hub.Mirror("lama.zip", served.url("third/lama.zip"), len(zip_bytes), digest))
        monkeypatch.setitem(hub.REGISTRY, "tiny-lama", hub.KnownModel("tiny-lama", mirrors, "test licence"))
        converted = hub.checkpoint("tiny-lama")
    assert served.requests == ["/first/tiny-lama.zip", "/second/tiny-lama.zip", "/third/lama.zip"]
    assert read_metadata(converted)["source"]["sha256"] == digest
    assert cache_files(cache)[0] == "downloads/lama.zip"
    assert read_metadata(cache / "models" / "tiny-lama")["source"]["file"] == "lama.zip"


def test_when_every_mirror_fails_the_error_lists_each_and_why(zip_bytes, cache, monkeypatch):
    with FileServer({"b.zip": bytes(len(zip_bytes)), "c.zip": zip_bytes[:100]}) as served:
        digest = hashlib.sha256(zip_bytes).hexdigest()
        mirrors = tuple(hub.Mirror(name, served.url(name), len(zip_bytes), digest) for name in ("a.zip", "b.zip", "c.zip"))
        monkeypatch.setitem(hub.REGISTRY, "tiny-lama", hub.KnownModel("tiny-lama", mirrors, "test licence"))
        with pytest.raises(hub.DownloadError) as err:
            hub.checkpoint("tiny-lama")
    lines = str(err.value).splitlines()
    assert lines[0] == "could not download tiny-lama from any of its 3 mirror(s):"
    assert lines[1] == f"  {served.url('a.zip')}: HTTPError: HTTP Error 404: Not Found"
    assert lines[2].startswith(f"  {served.url('b.zip')}: DownloadError: SHA-256 ") and digest in lines[2]
    assert lines[3] == (f"  {served.url('c.zip')}: DownloadError: the server announces 100 bytes, "
                        f"expected {len(zip_bytes):,}")
    assert cache_files(cache) == []


# ---------------------------------------------------------------- cached conversions are inputs


def damage_params(converted):
    """Overwrite the middle of every stored array file of `converted` with other bytes."""
    for path in (converted / "params").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            data = bytearray(path.read_bytes())
            data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
            path.write_bytes(bytes(data))


def replace_with_nan_weights(converted):
    """Rewrite the conversion with NaN weights and a matching digest (as a bad conversion would)."""
    from jax_refine import checkpoint as checkpoint_lib
    meta = read_metadata(converted)
    config = checkpoint.config_from_record(meta["config"], "test")
    flat = {k: np.full_like(v, np.nan) for k, v in checkpoint_lib.read_params(converted, config).items()}
    checkpoint_lib.save_flat(flat, config, converted, source=meta["source"], overwrite=True)


def truncate_params(converted):
    for path in (converted / "params").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:10])


@pytest.mark.parametrize("damage", [damage_params, replace_with_nan_weights, truncate_params])
def test_a_damaged_cached_conversion_is_converted_again_from_the_verified_download(zip_bytes, cache, tiny_entry,
                                                                                   damage, capfd):
    with FileServer({"tiny-lama.zip": zip_bytes}) as served:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        jax_refine.load("tiny-lama")
        damage(cache / "models" / "tiny-lama")
        capfd.readouterr()
        assert_golden_pixels(jax_refine.load("tiny-lama"))
    assert "the cached conversion of tiny-lama is damaged" in capfd.readouterr().err
    assert len(served.requests) == 1  # converted again from the download in the cache


def test_a_damaged_conversion_whose_download_is_gone_names_the_fix(zip_bytes, cache, tiny_entry):
    with FileServer({"tiny-lama.zip": zip_bytes}) as served:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        jax_refine.load("tiny-lama")
    damage_params(cache / "models" / "tiny-lama")
    (cache / "downloads" / "tiny-lama.zip").unlink()
    with pytest.raises(hub.DownloadError) as err:
        jax_refine.load("tiny-lama")
    assert "Download one of tiny-lama.zip" in str(err.value) and "jax-refine convert tiny-lama.zip" in str(err.value)


# ---------------------------------------------------------------- one cache, several processes

_LOAD_TINY = r"""
import sys, time
from pathlib import Path
import jax_refine
from jax_refine import checkpoint, hub
url, size, sha256, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
hub.REGISTRY["tiny-lama"] = hub.KnownModel("tiny-lama", (hub.Mirror("tiny-lama.zip", url, size, sha256),), "test")
if hold != "-":  # stop with the conversion written, before it is installed, until told to go on
    convert = sys.modules["jax_refine.convert"]
    install = convert.install
    def held(*args):
        Path(hold + ".ready").touch()
        while not Path(hold + ".go").exists():
            time.sleep(0.01)
        install(*args)
    convert.install = held
model = jax_refine.load("tiny-lama")
print(checkpoint.read_metadata(hub.cache_dir() / "models" / "tiny-lama")["params_sha256"], model.config.ngf)
"""


def test_two_processes_loading_into_an_empty_cache_wait_for_one_conversion(zip_bytes, cache, tmp_path):
    """The first process stops inside its conversion; the second is started then, must say it
    waits, and goes on only once the first installed a complete conversion: one download,
    one conversion, both loads succeed with the same parameters."""
    served = FileServer({"tiny-lama.zip": zip_bytes})
    args = [served.url("tiny-lama.zip"), str(len(zip_bytes)), hashlib.sha256(zip_bytes).hexdigest()]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), JAX_REFINE_HOME=str(cache))
    hold = tmp_path / "first"
    first = subprocess.Popen([sys.executable, "-c", _LOAD_TINY, *args, str(hold)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = None
    try:
        deadline = time.monotonic() + 300
        while not Path(f"{hold}.ready").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.Popen([sys.executable, "-c", _LOAD_TINY, *args, "-"], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = []
        for line in second.stderr:  # it blocks on the lock after saying so
            seen.append(line)
            if "jax-refine: waiting for another process using" in line:
                break
        else:
            pytest.fail(f"the second process did not wait: {''.join(seen)}")
        Path(f"{hold}.go").touch()
        outputs = [first.communicate(timeout=300), second.communicate(timeout=300)]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
        served.close()
    assert first.returncode == 0 and second.returncode == 0, outputs
    digest = read_metadata(cache / "models" / "tiny-lama")["params_sha256"]
    assert [out.split() for out, _ in outputs] == [[digest, "8"], [digest, "8"]]
    assert served.requests == ["/tiny-lama.zip"]
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["tiny-lama", "tiny-lama.lock"]


def test_a_conversion_is_not_replaced_while_it_is_being_read(zip_bytes, cache, tiny_entry, capfd):
    """A reader's shared lock (taken here, as another process would) keeps a rebuild of the
    damaged conversion waiting; the rebuild goes on once the reader lets go."""
    import threading

    with FileServer({"tiny-lama.zip": zip_bytes}) as served:
        tiny_entry(zip_bytes, served.url("tiny-lama.zip"))
        converted = cache / "models" / "tiny-lama"
        jax_refine.load("tiny-lama")
        damage_params(converted)
        before = (converted / "jax_refine.json").stat().st_ino
        results = []
        with hub._locked(converted, shared=True):
            loader = threading.Thread(target=lambda: results.append(jax_refine.load("tiny-lama")))
            loader.start()
            seen = ""
            while "jax-refine: waiting for another process using" not in seen:
                assert loader.is_alive(), seen
                seen += capfd.readouterr().err
                time.sleep(0.01)
            assert "the cached conversion of tiny-lama is damaged" not in seen  # said only once it may rebuild
            assert (converted / "jax_refine.json").stat().st_ino == before
        loader.join(timeout=300)
    assert len(results) == 1 and results[0].config.ngf == 8
    assert (converted / "jax_refine.json").stat().st_ino != before  # made again
    assert len(served.requests) == 1
