"""Models by name: `jax_refine.load("big-lama")` downloads, verifies, converts and caches.

The registry below records, for each known model, the file that is downloaded: its URL(s),
size and checksums. The first `load(name)` downloads it (progress bar), checks its size,
MD5 and SHA-256 before it is moved into the cache, converts it (`jax_refine.convert`) and
caches the conversion; later loads read the cached conversion and touch no network.

Cache (`cache_dir()`): `$JAX_REFINE_HOME`, else `$XDG_CACHE_HOME/jax_refine`, else
`~/.cache/jax_refine`, holding `downloads/<file>` (the verified published file) and
`models/<name>/` (its conversion).

Overrides, for mirrors and private copies (NAME is the name upper-cased, '-' -> '_'):
`JAX_REFINE_<NAME>_URL` replaces the URLs (the same file is expected: size and checksums are
still checked) and `JAX_REFINE_<NAME>_SHA256` the expected SHA-256 (for another file: then
only that hash is checked).

Downloads use pooch (fatiando/pooch): it streams to a temporary file in the cache folder,
checks the hash before moving the file into place and deletes the temporary file on any
failure; `_VerifyingDownloader` adds the size and MD5 checks. pooch was chosen over
huggingface_hub because the registry's file is a GitHub release asset, not a Hub repository,
and over hand-written urllib code because it already does the temporary-file, hash and
progress-bar handling, with requests underneath (redirects, timeouts, proxies).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import time
from pathlib import Path

from .checkpoint import CheckpointError
from .checkpoint import METADATA_FILE, read_metadata
from .convert import convert

_STALE_DOWNLOAD_SECONDS = 15 * 60  # pooch's temporary files are written to continuously while in use
_POOCH_TEMPORARY = re.compile(r"tmp[a-z0-9_]{8}")  # tempfile.NamedTemporaryFile's names


class DownloadError(OSError):
    """A known model could not be downloaded or verified; the message says how to place it by hand."""


@dataclasses.dataclass(frozen=True)
class KnownModel:
    """A downloadable model: the published file (name, URLs, size in bytes, checksums as hex)."""

    name: str
    filename: str
    urls: tuple[str, ...]
    size: int | None
    sha256: str
    md5: str | None
    licence: str


_BIG_LAMA_LICENCE = (
    "Big-LaMa's weights (advimman/lama, Samsung AI) carry no explicit licence and were trained on "
    "Places-Challenge images, whose terms allow non-commercial research and education only. "
    "jax-refine does not redistribute them; see weights/README.md before any commercial use.")

REGISTRY: dict[str, KnownModel] = {
    # IOPaint's / lama-cleaner's TorchScript export of Big-LaMa (LaMa's bin/to_jit.py); the MD5 is
    # the one IOPaint checks, the SHA-256 as pinned by third parties. LaMa's own big-lama.zip is not
    # listed: no checksum of it can be stated here (convert it from a local file instead).
    "big-lama": KnownModel(
        name="big-lama", filename="big-lama.pt",
        urls=("https://github.com/Sanster/models/releases/download/add_big_lama/big-lama.pt",),
        size=205_669_692, sha256="344c77bbcb158f17dd143070d1e789f38a66c04202311ae3a258ef66667a9ea9",
        md5="e3aa4aaa15225a33ec84f9f4bc47e500", licence=_BIG_LAMA_LICENCE),
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
    if url:
        entry = dataclasses.replace(entry, urls=(url,))
    if sha256:  # another file than the published one: its size and MD5 are unknown
        entry = dataclasses.replace(entry, sha256=sha256.lower(), size=None, md5=None)
    return entry


def checkpoint(name: str) -> Path:
    """The converted checkpoint directory of the known model `name`: the cached one if it was
    converted from the expected file, else downloaded (if needed), verified and converted."""
    entry = known_model(name)
    converted = cache_dir() / "models" / name
    if _converted_from(converted, entry.sha256):
        return converted
    download = fetch(entry)
    try:
        return convert(download, converted, overwrite=True)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: the verified download {download} does not convert: {e}") from None


def _converted_from(path: Path, sha256: str) -> bool:
    if not (path / METADATA_FILE).is_file():
        return False
    try:
        return read_metadata(path).get("source", {}).get("sha256") == sha256
    except CheckpointError:
        return False


def fetch(entry: KnownModel) -> Path:
    """The verified published file of `entry` in the cache, downloaded if it is not there (or
    does not match). Raises DownloadError naming the URL(s), the file and the manual route."""
    import pooch

    target = cache_dir() / "downloads" / entry.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_downloads(target.parent)
    if not target.exists():
        print(f"jax-refine: downloading {entry.name} ({entry.filename}) once into {target.parent}.\n"
              f"Licence: {entry.licence}", file=sys.stderr)
    failures = []
    for url in entry.urls:
        try:
            pooch.retrieve(url, known_hash=f"sha256:{entry.sha256}", fname=entry.filename, path=target.parent,
                           downloader=_VerifyingDownloader(entry), progressbar=True)
            return target
        except (OSError, ValueError) as e:  # requests' errors are OSErrors; pooch's hash mismatch a ValueError
            failures.append(f"{url}: {_reason(e)}")
    raise DownloadError(_manual_route(entry, target, failures))


class _VerifyingDownloader:
    """pooch's HTTP downloader, then the size and MD5 checks on the temporary file (pooch
    checks the SHA-256 and moves the file into place only if every check passed)."""

    def __init__(self, entry: KnownModel):
        import pooch

        self.entry = entry
        self.http = pooch.HTTPDownloader(progressbar=True, chunk_size=1 << 20, timeout=60)

    def __call__(self, url, output_file, pooch_instance, check_only=False):
        self.http(url, output_file, pooch_instance, check_only=check_only)
        size = os.path.getsize(output_file)
        if self.entry.size is not None and size != self.entry.size:
            raise DownloadError(f"received {size:,} of {self.entry.size:,} bytes (the transfer was cut?)")
        if self.entry.md5 is not None and _md5(output_file) != self.entry.md5:
            raise DownloadError(f"MD5 is not the expected {self.entry.md5}")


def _md5(path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(error: Exception, limit: int = 300) -> str:
    """The error's type and its first sentences, up to about `limit` characters."""
    lines = str(error).strip().splitlines()
    sentences, text = (lines[0] if lines else "").split(". "), ""
    for sentence in sentences:
        if text and len(text) + len(sentence) > limit:
            break
        text += (". " if text else "") + sentence
    return f"{type(error).__name__}: {text}"


def _manual_route(entry: KnownModel, target: Path, failures: list[str]) -> str:
    facts = f"{entry.filename}, sha256 {entry.sha256}" + (f", {entry.size:,} bytes" if entry.size else "")
    variable = "JAX_REFINE_" + entry.name.upper().replace("-", "_") + "_URL"
    return (f"could not download {entry.name} ({facts}):\n  " + "\n  ".join(failures) + "\n"
            f"No partial download was kept. Download {entry.filename} from that address yourself (or set {variable} "
            f"to a mirror), then either put it at {target} (it is verified on the next load), or convert it:\n"
            f"  jax-refine convert {entry.filename} {target.parent.parent / 'models' / entry.name}")


def remove_stale_downloads(directory: Path) -> list[Path]:
    """Remove pooch's temporary files left in `directory` by a killed download (unchanged for
    15 minutes; a live download writes to its file continuously); returns them."""
    removed, now = [], time.time()
    for entry in os.scandir(directory):
        if (_POOCH_TEMPORARY.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
                and now - entry.stat().st_mtime > _STALE_DOWNLOAD_SECONDS):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed
