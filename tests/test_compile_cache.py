"""The default compilation cache ($JAX_REFINE_HOME/xla) and the explicit CPU flag call.

JAX decides once per process which cache it uses, so every case runs in a fresh subprocess.
An unwritable cache is a JAX_REFINE_HOME below a regular file: creating a directory there
fails with ENOTDIR for every user, root included (file permissions would not stop root).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jax_refine import _platform, compile_cache

from conftest import GOLDEN

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, warnings
if os.environ.get("HIDE_FILELOCK"):
    sys.modules["filelock"] = None  # as if it were not installed
import jax, jax.numpy as jnp
from jax_refine import compile_cache
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    used = [compile_cache.use_default_cache(), compile_cache.use_default_cache()]
    y = jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.arange(4.0))
print(json.dumps(dict(used=[None if u is None else str(u) for u in used], y=[float(v) for v in y],
                      warnings=[f"{w.category.__name__}: {w.message}" for w in caught])))
"""


def child_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (compile_cache.ENV, "JAX_COMPILATION_CACHE_DIR")}
    return dict(env, PYTHONPATH=str(REPO), JAX_REFINE_HOME=str(home), **extra)


def run_child(home: Path, **extra) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD], env=child_env(home, **extra), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def entries(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*-cache")} if folder.is_dir() else set()


EXPECTED_Y = np.sin(np.arange(4.0, dtype=np.float32)) * 2 + 1


def test_default_cache_is_written_then_reused(tmp_path):
    first = run_child(tmp_path / "home")
    stored = entries(tmp_path / "home" / "xla")
    assert first["used"] == [str(tmp_path / "home" / "xla")] * 2 and first["warnings"] == []
    assert any(name.startswith("jit_") for name in stored)
    second = run_child(tmp_path / "home")  # every program found: nothing new is written
    assert second == first and entries(tmp_path / "home" / "xla") == stored
    np.testing.assert_allclose(first["y"], EXPECTED_Y, rtol=1e-6)


@pytest.mark.slow
def test_opt_out_and_the_users_own_jax_cache_win(tmp_path):
    off = run_child(tmp_path / "home", **{compile_cache.ENV: "0"})
    assert off["used"] == [None, None] and not (tmp_path / "home" / "xla").exists()
    own = run_child(tmp_path / "home", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # JAX's default, 1 s, would store nothing
    assert own["used"] == [str(tmp_path / "mine")] * 2
    assert entries(tmp_path / "mine") and not (tmp_path / "home" / "xla").exists()


def test_unwritable_cache_gives_one_warning_and_the_same_result(tmp_path):
    (tmp_path / "file").write_text("in the way")
    blocked = run_child(tmp_path / "file" / "home")
    assert blocked["used"] == [None, None]
    np.testing.assert_allclose(blocked["y"], EXPECTED_Y, rtol=1e-6)
    assert len(blocked["warnings"]) == 1, blocked["warnings"]
    assert blocked["warnings"][0].startswith("CompilationCacheWarning: compilation cache off: ")
    assert "cannot be written" in blocked["warnings"][0]


@pytest.mark.slow
def test_without_filelock_the_cache_is_off_with_one_warning(tmp_path):
    result = run_child(tmp_path / "home", HIDE_FILELOCK="1")  # JAX's size cap would fail on every program
    assert result["used"] == [None, None] and len(result["warnings"]) == 1
    assert "filelock" in result["warnings"][0]
    np.testing.assert_allclose(result["y"], EXPECTED_Y, rtol=1e-6)


def test_a_nearly_full_disk_counts_as_unwritable(tmp_path, monkeypatch):
    """The free-space branch, which a real full disk would need a small mount for (a private
    helper: the public path, use_default_cache, runs once per process)."""
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 2**20, 2**20))
    assert compile_cache._unwritable(tmp_path / "xla") == f"{tmp_path / 'xla'} has only 1.0 MiB free"
    monkeypatch.undo()
    assert compile_cache._unwritable(tmp_path / "xla") is None


def test_import_changes_no_environment_variable_and_configure_cpu_sets_the_flag(tmp_path):
    script = ("import json, os, jax; before = dict(os.environ); import jax_refine, jax_refine.cli; "
              "after = dict(os.environ); set_ = jax_refine.configure_cpu(); "
              "print(json.dumps([before == after, set_, os.environ.get('XLA_FLAGS')]))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_REFINE_XLA_FLAGS")}
    done = subprocess.run([sys.executable, "-c", script], env=dict(env, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    unchanged, set_, flags = json.loads(done.stdout.strip().splitlines()[-1])
    assert unchanged
    tested = importlib.metadata.version("jaxlib") in _platform.TESTED_JAXLIB
    assert set_ == tested and flags == (_platform.YNN_FLAG if tested else None)


@pytest.mark.parametrize("flags, off, expected, after", [
    ("--xla_force_host_platform_device_count=2", None, True,
     "--xla_force_host_platform_device_count=2 " + _platform.YNN_FLAG),
    ("--xla_cpu_experimental_ynn_fusion_type=ynn_fusion", None, False,
     "--xla_cpu_experimental_ynn_fusion_type=ynn_fusion"),  # the user's choice wins
    ("", "0", False, ""),
])
def test_configure_cpu_rules(monkeypatch, flags, off, expected, after):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: _platform.TESTED_JAXLIB[0])
    monkeypatch.setenv("XLA_FLAGS", flags)
    if off is None:
        monkeypatch.delenv("JAX_REFINE_XLA_FLAGS", raising=False)
    else:
        monkeypatch.setenv("JAX_REFINE_XLA_FLAGS", off)
    assert _platform.configure_cpu() is expected
    assert os.environ["XLA_FLAGS"] == after


def test_untested_jaxlib_gets_no_flag(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.1")
    monkeypatch.setenv("XLA_FLAGS", "")
    assert _platform.configure_cpu() is False and os.environ["XLA_FLAGS"] == ""


def on_a_terminal(command, env) -> str:
    """Run `command` with its stderr on a pseudo-terminal (so it shows progress bars); what it
    wrote there, once it exited with 0 after drawing iteration bars ("it/s" or "s/it")."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # tqdm draws nothing in 0 columns
    seen = bytearray()

    def drain():  # a full terminal buffer would block the child
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        done = subprocess.run([str(a) for a in command], env=env, stdout=subprocess.DEVNULL, stderr=follower,
                              timeout=600)
    finally:
        os.close(follower)
        reader.join(timeout=10)
        os.close(leader)
    text = seen.decode(errors="replace")
    assert done.returncode == 0, text[-3000:]
    assert "it/s" in text or "s/it" in text, text[-3000:]
    return text


@pytest.mark.slow
def test_cli_reuses_the_default_cache_and_runs_without_one(tmp_path, tiny_checkpoint):
    """The command with refinement (3 scales): a second run finds every program in the cache
    and writes the same pixels, also on a terminal (progress bars report every iteration: the
    same programs, nothing compiled and stored anew); an unwritable cache and
    --no-compilation-cache write the same pixels too."""
    Image.open(GOLDEN / "coffee_300x400.png").save(tmp_path / "photo.png")
    Image.open(GOLDEN / "coffee_300x400_mask.png").save(tmp_path / "photo_mask.png")
    (tmp_path / "file").write_text("in the way")

    def inpaint(home, out, *extra, terminal=False):
        command = [sys.executable, "-m", "jax_refine.cli", "inpaint", tmp_path / "photo.png",
                   tmp_path / "photo_mask.png", "-o", tmp_path / out, "--model", tiny_checkpoint,
                   "--min-side", "100", "--n-iters", "2", *(() if terminal else ("-q",)), *extra]
        if terminal:  # JAX then logs every program it did not find in the persistent cache
            log = on_a_terminal(command, dict(child_env(home), JAX_EXPLAIN_CACHE_MISSES="1"))
            return np.asarray(Image.open(tmp_path / out)), log
        done = subprocess.run([str(a) for a in command], env=child_env(home), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return np.asarray(Image.open(tmp_path / out)), done.stderr

    first, log = inpaint(tmp_path / "home", "first.png")
    stored = entries(tmp_path / "home" / "xla")
    assert "warn" not in log.lower() and any(name.startswith("jit__refine_steps") for name in stored)
    second, _ = inpaint(tmp_path / "home", "second.png")
    assert entries(tmp_path / "home" / "xla") == stored and np.array_equal(second, first)
    with_bars, log = inpaint(tmp_path / "home", "bars.png", terminal=True)
    assert "PERSISTENT COMPILATION CACHE MISS" not in log, log[-3000:]  # nothing compiled
    assert entries(tmp_path / "home" / "xla") == stored and np.array_equal(with_bars, first)
    blocked, log = inpaint(tmp_path / "file" / "home", "blocked.png")
    assert np.array_equal(blocked, first)
    assert log.count("CompilationCacheWarning") == 1 and "persistent compilation cache" not in log, log
    off, _ = inpaint(tmp_path / "off", "off.png", "--no-compilation-cache")
    assert np.array_equal(off, first) and not (tmp_path / "off" / "xla").exists()
