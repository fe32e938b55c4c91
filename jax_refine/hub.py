"""Models by name: `jax_refine.load("big-lama")` downloads, verifies, converts and caches.

The registry below lists, for each known model, its published copies (`Mirror`s): the file,
its URL, size and checksums. The first `load(name)` takes the first mirror whose file is
already in the cache and verifies, else downloads them in order until one verifies; the
final error lists every mirror and why it failed. The verified file is converted
(`jax_refine.convert`, which reads each published format by its content) and the
conversion cached; later loads read the cached conversion and touch no network.

Cache (`cache_dir()`): `$JAX_REFINE_HOME`, else `$XDG_CACHE_HOME/jax_refine`, else
`~/.cache/jax_refine`, holding `downloads/<file>` (verified published files) and
`models/<name>/` (a conversion, see `jax_refine.checkpoint`), each beside an empty
`<name>.lock` file that stays (removing a lock file would race with its waiters).

Shared caches (workers of a pod or a cluster): a download or a conversion holds the
exclusive lock of its target, so other processes wait and then use the finished file;
reading a cached conversion holds the shared lock, so it is never replaced while read.
A cached conversion is verified on every load (`checkpoint.load`: bounds, shapes, the
parameters' digest recorded at conversion, finite values); a damaged one is converted
again from the verified download (which is downloaded again if it is gone).

Overrides, for mirrors and private copies (NAME is the name upper-cased, '-' -> '_'):
`JAX_REFINE_<NAME>_URL` replaces the mirrors by that URL, expected to serve the registered
file of the same name (the last part of the URL's path), else the first mirror's file
(size and checksums are still checked); `JAX_REFINE_<NAME>_SHA256` expects another file
with that SHA-256 (its size, at most 4 GiB, and MD5 are then unknown).

Downloads are streamed with the standard library's urllib rather than pooch (used before),
because pooch (requests underneath) gives none of these bounds: it decodes gzip and
deflate bodies without limit, applies its timeout to each read and not to the transfer,
and checks the size only once the whole body is on disk. Here identity encoding is asked
for and any other refused (never decoded); an announced Content-Length must be the
expected size; the transfer stops as soon as the body exceeds it; it must average at
least `_MIN_RATE` bytes/s over every `_RATE_WINDOW` seconds, and no read may wait more
than `_READ_TIMEOUT` s; free space is checked first and a full disk is one clear error.
What pooch did is kept: the body goes to a temporary `.<file>.<hex>.part` beside the
target and is renamed into place only after its size, SHA-256 and MD5 matched; it is
removed on any failure, SIGINT and SIGTERM included (temporaries of a killed process are
removed by the next download of that file, under its lock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import hashlib
import http.client
import os
import re
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from . import __version__
from . import checkpoint as checkpoint_lib
from .checkpoint import CheckpointError, read_metadata, signals_deferred, sigterm_as_exit
from .convert import convert

try:
    import fcntl
except ImportError:  # Windows: no locks
    fcntl = None

_READ_TIMEOUT = 60  # seconds a read may wait for its first byte
_MIN_RATE, _RATE_WINDOW = 16_384, 60  # bytes/s that each window of seconds must average
_MAX_UNSIZED = 4 << 30  # bytes accepted of a file whose size is unknown (JAX_REFINE_<NAME>_SHA256)
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A known model could not be downloaded or verified; the message says how to place it by hand."""


@dataclasses.dataclass(frozen=True)
class Mirror:
    """One published copy of a model: the file's name (in downloads/), URL, size in bytes
    (None: unknown) and checksums as hex (MD5 None: not checked)."""

    filename: str
    url: str
    size: int | None
    sha256: str
    md5: str | None = None


@dataclasses.dataclass(frozen=True)
class KnownModel:
    """A downloadable model: its published copies, tried in order, and their licence."""

    name: str
    mirrors: tuple[Mirror, ...]
    licence: str


_BIG_LAMA_LICENCE = (
    "Big-LaMa's weights (advimman/lama, Samsung AI) carry no explicit licence and were trained on "
    "Places-Challenge images, whose terms allow non-commercial research and education only. "
    "jax-refine does not redistribute them; see weights/README.md before any commercial use.")

REGISTRY: dict[str, KnownModel] = {
    # Three published copies of the same generator, each read by `convert`:
    # - IOPaint's / lama-cleaner's TorchScript export (LaMa's bin/to_jit.py); the MD5 is the one
    #   IOPaint checks, the SHA-256 as pinned by third parties;
    # - LaMa's own big-lama.zip (the folder its README links), re-hosted on the Hugging Face Hub;
    # - LaMa's best.ckpt, re-hosted as lama.ckpt by ControlNet's annotators.
    # The two Hub entries' sizes and SHA-256 are those of the Hub's file pointers (Git LFS), and
    # other projects record the same after downloading big-lama.zip (smartywu/big-lama at revision
    # 05cb2be7) and the best.ckpt inside it; they were not verified by a download here.
    "big-lama": KnownModel(name="big-lama", licence=_BIG_LAMA_LICENCE, mirrors=(
        Mirror("big-lama.pt", "https://github.com/Sanster/models/releases/download/add_big_lama/big-lama.pt",
               205_669_692, "344c77bbcb158f17dd143070d1e789f38a66c04202311ae3a258ef66667a9ea9",
               "e3aa4aaa15225a33ec84f9f4bc47e500"),
        Mirror("big-lama.zip", "https://huggingface.co/smartywu/big-lama/resolve/main/big-lama.zip",
               381_428_720, "f1b358ca24093b93a106183b98a3dea6e8ed09f3b43ea7251eb2c81e7b4575f6"),
        Mirror("lama.ckpt", "https://huggingface.co/lllyasviel/Annotators/resolve/main/lama.ckpt",
               410_046_389, "fccb7adffd53ec0974ee5503c3731c2c2f1e7e07856fd9228cdcc0b46fd5d423"),
    )),
}


def cache_dir() -> Path:
    """Where downloads and conversions are kept (see the module docstring)."""
    if os.environ.get("JAX_REFINE_HOME"):
        return Path(os.environ["JAX_REFINE_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "jax_refine"
    return Path.home() / ".cache" / "jax_refine"


def is_known(name: str) -> bool:
    return name in REGISTRY


def known_model(name: str) -> KnownModel:
    """The registry entry of `name` with the environment's overrides applied."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(REGISTRY)})")
    entry = REGISTRY[name]
    variable = "JAX_REFINE_" + name.upper().replace("-", "_")
    url, sha256 = os.environ.get(variable + "_URL"), os.environ.get(variable + "_SHA256")
    if not (url or sha256):
        return entry
    mirror = entry.mirrors[0]
    if url:
        named = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        mirror = next((m for m in entry.mirrors if m.filename == named), mirror)
        mirror = dataclasses.replace(mirror, url=url)
    if sha256:  # another file than the published one: its size and MD5 are unknown
        mirror = dataclasses.replace(mirror, sha256=sha256.lower(), size=None, md5=None)
    return dataclasses.replace(entry, mirrors=(mirror,))


def load(name: str):
    """The known model `name` as a Lama, from its verified cached conversion (made first if
    needed; made again from the verified download if the cached one is damaged)."""
    entry = known_model(name)
    converted = cache_dir() / "models" / name
    with _locked(converted, shared=True):
        model, damage = _read_conversion(converted, entry)
    if model is not None:
        return model
    with _locked(converted):
        model, damage = _read_conversion(converted, entry)  # another process may have made it meanwhile
        if model is not None:
            return model
        if damage is not None:
            print(f"jax-refine: the cached conversion of {name} is damaged ({damage}); converting it again",
                  file=sys.stderr)
        _build(entry, converted)
        return checkpoint_lib.load(converted)


def checkpoint(name: str) -> Path:
    """The converted checkpoint directory of the known model `name`: the cached one if it was
    converted from one of its mirrors' files, else downloaded (if needed), verified and
    converted (under the lock of the conversion). `load` verifies its parameters."""
    entry = known_model(name)
    converted = cache_dir() / "models" / name
    if _converted_from(converted, entry):
        return converted
    with _locked(converted):
        if not _converted_from(converted, entry):
            _build(entry, converted)
    return converted


def _read_conversion(path: Path, entry: KnownModel):
    """(model, None) from a cached conversion of `entry`, (None, the CheckpointError) for a
    damaged one, (None, None) when there is none."""
    if not _converted_from(path, entry):
        return None, None
    try:
        return checkpoint_lib.load(path), None
    except CheckpointError as e:
        return None, e


def _converted_from(path: Path, entry: KnownModel) -> bool:
    """`path` holds a conversion (with a parameter digest) of one of `entry`'s files."""
    if not (path / checkpoint_lib.METADATA_FILE).is_file():
        return False
    try:
        meta = read_metadata(path)
    except CheckpointError:
        return False
    source = meta.get("source")
    return (isinstance(source, dict) and source.get("sha256") in {m.sha256 for m in entry.mirrors}
            and "params_sha256" in meta)


def _build(entry: KnownModel, converted: Path) -> None:
    """Convert `entry`'s verified download into `converted` (the caller holds its lock)."""
    if os.path.lexists(converted) and checkpoint_lib._not_a_checkpoint(converted):
        shutil.rmtree(converted)  # a damaged cache entry that `install` would refuse to replace
    download = fetch(entry)
    try:
        convert(download, converted, overwrite=True)
    except CheckpointError as e:
        raise CheckpointError(f"{entry.name}: the verified download {download} does not convert: {e}") from None


def fetch(entry: KnownModel) -> Path:
    """The verified file of one of `entry`'s mirrors in the cache: the first already there,
    else the first that downloads and verifies. Raises DownloadError listing every mirror
    and why it failed, and the manual route."""
    directory = cache_dir() / "downloads"
    for mirror in entry.mirrors:
        target = directory / mirror.filename
        if target.is_file() and (mirror.size is None or target.stat().st_size == mirror.size):
            with _locked(target):
                if _matches(target, mirror):
                    return target
    print(f"jax-refine: downloading {entry.name} once into {directory}.\nLicence: {entry.licence}", file=sys.stderr)
    failures = []
    for mirror in entry.mirrors:
        target = directory / mirror.filename
        try:
            with _locked(target):
                _download(mirror, target)
            return target
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise DownloadError(f"could not download {entry.name} ({mirror.url}): the disk is full: "
                                    f"{e.strerror}; free some space in {directory} (or set JAX_REFINE_HOME to "
                                    "another disk) and try again. No partial download was kept.") from None
            failures.append(f"{mirror.url}: {_reason(e)}")
    raise DownloadError(_manual_route(entry, directory, failures))


def _matches(path: Path, mirror: Mirror) -> bool:
    """The file `path` (of `mirror`'s size) has `mirror`'s checksums."""
    return (checkpoint_lib.file_digest(path) == mirror.sha256
            and (mirror.md5 is None or checkpoint_lib.file_digest(path, "md5") == mirror.md5))


def _download(mirror: Mirror, target: Path) -> None:
    """Download `mirror` into `target` through a verified temporary file (see the module
    docstring for the bounds); the caller holds the lock of `target`."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.part"):  # left by killed downloads
        if re.fullmatch(re.escape(f".{target.name}.") + r"[0-9a-f]{16}\.part", stale.name):
            stale.unlink(missing_ok=True)
    limit = mirror.size if mirror.size is not None else _MAX_UNSIZED
    if mirror.size is not None:
        checkpoint_lib.check_free_space(target.parent, mirror.size)
    request = urllib.request.Request(mirror.url, headers={"Accept-Encoding": "identity",
                                                          "User-Agent": f"jax-refine/{__version__}"})
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.part"
    with sigterm_as_exit():
        try:
            with urllib.request.urlopen(request, timeout=_READ_TIMEOUT) as response:
                _check_headers(response, mirror)
                with open(tmp, "xb") as out:
                    sha256, md5, size = _stream(response, out, limit, mirror.size)
                    out.flush()
                    os.fsync(out.fileno())
            if mirror.size is not None and size != mirror.size:
                raise DownloadError(f"received {size:,} of {mirror.size:,} bytes (the transfer was cut?)")
            if sha256 != mirror.sha256:
                raise DownloadError(f"SHA-256 {sha256} does not match the expected {mirror.sha256}")
            if mirror.md5 is not None and md5 != mirror.md5:
                raise DownloadError(f"MD5 {md5} is not the expected {mirror.md5}")
            with signals_deferred():
                os.replace(tmp, target)
        except BaseException:
            with signals_deferred():
                tmp.unlink(missing_ok=True)
            raise


def _check_headers(response, mirror: Mirror) -> None:
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise DownloadError(f"the server sent a {encoding!r}-encoded body although identity was asked for "
                            "(not decoded: it could expand without bound)")
    announced = response.headers.get("Content-Length")
    if mirror.size is not None and announced is not None and announced.strip() != str(mirror.size):
        raise DownloadError(f"the server announces {announced.strip()[:20]} bytes, expected {mirror.size:,}")


def _stream(response, out, limit: int, size: int | None) -> tuple[str, str, int]:
    """Copy the body of `response` into `out`: (SHA-256 hex, MD5 hex, bytes). Stops when it
    exceeds `limit` bytes or averages under _MIN_RATE over a _RATE_WINDOW."""
    from tqdm.auto import tqdm

    sha256, md5, received = hashlib.sha256(), hashlib.md5(), 0
    window_start, window_bytes = time.monotonic(), 0
    with tqdm(total=size, unit="B", unit_scale=True, file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        while chunk := response.read1(_CHUNK):
            received += len(chunk)
            if received > limit:
                raise DownloadError(f"the server sent more than the expected {limit:,} bytes (stopped there)")
            out.write(chunk)
            sha256.update(chunk)
            md5.update(chunk)
            bar.update(len(chunk))
            window_bytes += len(chunk)
            elapsed = time.monotonic() - window_start
            if elapsed >= _RATE_WINDOW:
                if window_bytes < _MIN_RATE * elapsed:
                    raise DownloadError(f"the transfer stalled: {window_bytes:,} bytes in {elapsed:.0f} s, under the "
                                        f"minimum of {_MIN_RATE:,} bytes/s")
                window_start, window_bytes = time.monotonic(), 0
    return sha256.hexdigest(), md5.hexdigest(), received


@contextlib.contextmanager
def _locked(target: Path, shared: bool = False) -> Iterator[None]:
    """Hold the exclusive (or shared) lock of `target`: an flock on `<target>.lock` beside it,
    waiting as long as another process holds it (it ends with that process, however it
    dies). Without file locks (Windows) nothing is locked."""
    if fcntl is None:
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.parent / f"{target.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"jax-refine: waiting for another process using {target}", file=sys.stderr)
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def _reason(error: Exception, limit: int = 300) -> str:
    """The error's type and its first sentences, up to about `limit` characters."""
    lines = str(error).strip().splitlines()
    sentences, text = (lines[0] if lines else "").split(". "), ""
    for sentence in sentences:
        if text and len(text) + len(sentence) > limit:
            break
        text += (". " if text else "") + sentence
    return f"{type(error).__name__}: {text}"


def _manual_route(entry: KnownModel, directory: Path, failures: list[str]) -> str:
    files = "; ".join(f"{m.filename} (sha256 {m.sha256}" + (f", {m.size:,} bytes)" if m.size else ")")
                      for m in entry.mirrors)
    variable = "JAX_REFINE_" + entry.name.upper().replace("-", "_") + "_URL"
    first = entry.mirrors[0].filename
    return (f"could not download {entry.name} from any of its {len(entry.mirrors)} mirror(s):\n  "
            + "\n  ".join(failures) + "\n"
            f"No partial download was kept. Download one of {files} yourself (or set {variable} to another "
            f"mirror), then either put it into {directory} under that name, e.g. {directory / first} "
            f"(it is verified on the next load), "
            f"or convert it:\n  jax-refine convert {first} {directory.parent / 'models' / entry.name}")
