"""JAX's persistent compilation cache: on by default, in `$JAX_REFINE_HOME/xla`.

Compiling a model's programs takes seconds for every padded image size; the persistent cache
keeps each compiled program on disk, so a later process at the same sizes loads it instead.

* `use_default_cache()` runs once per process, when a model is first resolved
  (`api.resolve_model`: every `inpaint*`, `estimate` and `inpaint_files` call, and the CLI).
  It points JAX's cache at `default_dir()` (`hub.cache_dir() / "xla"`, see `jax_refine.hub`),
  capped at `MAX_BYTES` (least recently used entries are evicted), caching every program
  that took at least `MIN_COMPILE_SECONDS` to compile. It leaves JAX alone when
  - `JAX_REFINE_COMPILATION_CACHE=0` is set, or `disable_compilation_cache()` was called
    (JAX's `jax_enable_compilation_cache` is False);
  - a cache directory is configured already (`enable_compilation_cache(dir)`, `jax.config`'s
    `jax_compilation_cache_dir`, or JAX's `JAX_COMPILATION_CACHE_DIR` variable): the user's
    directory and settings win;
  - the directory cannot be written (read-only home, a file in the way, less than
    `MIN_FREE_BYTES` free): one `CompilationCacheWarning`, then the process runs uncached.
* `enable_compilation_cache(dir)`: the cache in `dir`, without a size cap.

The cache holds compiled code that JAX loads and runs: it is trusted, so it must not be a
directory others can write. A disk that fills up during a run makes JAX warn once per program
it could not store (its own warnings); results are unaffected. JAX never stores a program that
calls back to Python: refinement with per-iteration progress (`progress=`, the CLI's bars on
a terminal) compiles its refined scales in every process.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from . import hub

ENV = "JAX_REFINE_COMPILATION_CACHE"  # "0": no default cache
MAX_BYTES = 2 * 2**30  # bounds growth over many sizes and versions (one entry: the bundled model at 1024x640, 0.17 MB)
MIN_COMPILE_SECONDS = 0.0  # every program, the small ones too (JAX's default keeps those compiling for >= 1 s)
MIN_FREE_BYTES = 256 * 2**20  # a fuller disk counts as full


class CompilationCacheWarning(UserWarning):
    """The default compilation cache could not be used; the run goes on without it."""


def default_dir() -> Path:
    """`$JAX_REFINE_HOME/xla` (see `hub.cache_dir`)."""
    return hub.cache_dir() / "xla"


def enable_compilation_cache(path: str | os.PathLike) -> Path:
    """Enable JAX's persistent compilation cache in directory `path` (created if needed).

    Every compiled program is stored (no minimum compile time, no size cap), so a later
    process running the same model at the same padded image sizes skips compilation. It
    replaces the default cache (module docstring), also after the first `inpaint`. The
    cache is trusted code: do not use a directory others can write.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    path = Path(path).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_compilation_cache_max_size", -1)
    compilation_cache.reset_cache()  # JAX opens its cache once; this reopens it in `path`
    return path


def disable_compilation_cache() -> None:
    """Run without JAX's persistent compilation cache, the default one included (the same as
    `jax.config.update("jax_enable_compilation_cache", False)`); call it before the first
    `inpaint` (JAX decides once per process whether it uses a cache)."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)


@functools.cache
def use_default_cache() -> Path | None:
    """Enable the default cache unless the module docstring's exceptions apply; the
    directory now used by JAX's cache, or None. Decided once per process."""
    import jax

    if os.environ.get(ENV, "1") == "0" or not jax.config.jax_enable_compilation_cache:
        return None
    if jax.config.jax_compilation_cache_dir:  # the user's own cache
        return Path(jax.config.jax_compilation_cache_dir)
    path = default_dir()
    problem = _unwritable(path)
    if problem is None and importlib.util.find_spec("filelock") is None:  # JAX's size cap needs it
        problem = "the filelock package that JAX needs for the size cap is not installed"
    if problem is not None:
        warnings.warn(f"compilation cache off: {problem} (JAX_REFINE_HOME chooses another place, "
                      f"{ENV}=0 silences this)", CompilationCacheWarning, stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)  # an option since JAX 0.4.30
    return path


def _unwritable(path: Path) -> str | None:
    """Why the cache cannot be written at `path` (created if needed), or None if it can."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
        free = shutil.disk_usage(path).free
    except OSError as e:
        return f"{path} cannot be written ({e.strerror or e})"
    if free < MIN_FREE_BYTES:
        return f"{path} has only {free / 2**20:.1f} MiB free"
    return None
