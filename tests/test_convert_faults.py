"""Faults during `jax-refine convert` and cached conversions (issue 23): a full disk and
SIGINT / SIGTERM at each instant after the staging directory exists leave nothing behind."""

import errno
import os
import shutil
import signal
import subprocess
import sys

import pytest

import jax_refine
from jax_refine import checkpoint
from jax_refine.checkpoint import read_metadata
from jax_refine.cli import main

from conftest import GOLDEN

CONVERT = sys.modules["jax_refine.convert"]  # jax_refine.convert is also the function
SRC = GOLDEN / "tinylama.ckpt"


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


# ---------------------------------------------------------------- full disks


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """mount(size) -> a directory on a file system of `size` bytes: a tmpfs where this process
    may mount one (root), else a directory whose orbax writes fail as on a full disk."""
    mounted = []

    def mount(size):
        directory = tmp_path / f"disk{len(mounted)}"
        directory.mkdir()
        if os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                capture_output=True).returncode == 0:
            mounted.append(directory)
            return directory
        import orbax.checkpoint as ocp

        def full(self, path, *args, **kwargs):  # the error orbax raises there, after its thread logged it
            if str(path).startswith(str(directory)):
                raise ValueError("RESOURCE_EXHAUSTED: Error writing ... No space left on device [os_error_code='28']")
            return real_save(self, path, *args, **kwargs)
        real_save = ocp.Checkpointer.save
        monkeypatch.setattr(ocp.Checkpointer, "save", full)
        return directory

    yield mount
    for directory in mounted:
        subprocess.run(["umount", str(directory)], check=True)


@pytest.mark.parametrize("free_space_known", [True, False], ids=["checked-first", "filling-during-the-write"])
def test_convert_to_a_full_disk_is_one_error_line_and_exit_status_2(small_disk, monkeypatch, capfd, free_space_known):
    disk = small_disk("300k")  # the tiny model's parameters take 542 kB
    if not free_space_known:  # the disk fills while orbax writes: the check before could not see it coming
        monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, 0, 1 << 40))
    assert main(["convert", str(SRC), str(disk / "out")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "No space left on device" in err, err
    assert "Traceback" not in err and os.listdir(disk) == []


def test_a_cache_filling_during_the_conversion_is_one_error_line(small_disk, monkeypatch, tmp_path, capfd):
    import hashlib

    import lama_files
    from file_server import FileServer
    from jax_refine import hub

    data = lama_files.lama_zip(tmp_path / "tiny.zip").read_bytes()
    cache = small_disk(str(len(data) + (256 << 10)))  # room for the download, not for its conversion
    monkeypatch.setenv("JAX_REFINE_HOME", str(cache))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, 0, 1 << 40))
    served = FileServer({"tiny.zip": data})
    mirror = hub.Mirror("tiny.zip", served.url("tiny.zip"), len(data), hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(hub.REGISTRY, "tiny-lama", hub.KnownModel("tiny-lama", (mirror,), "test licence"))
    image, mask = GOLDEN / "astronaut_251x317.png", GOLDEN / "astronaut_251x317_mask.png"
    try:
        status = main(["inpaint", str(image), str(mask), "-o", str(tmp_path / "o.png"), "--model", "tiny-lama", "-q"])
    finally:
        served.close()
    assert status == 2
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert "Traceback" not in capfd.readouterr().err
    files = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock")
    assert files == ["downloads/tiny.zip"] and leftovers(cache / "models") == []


# ---------------------------------------------------------------- signals


def raise_signal_after(monkeypatch, signum, namespace, name, when=lambda *args: True):
    """Wrap namespace.name so that the call (when `when(*args)`) is followed by `signum`,
    delivered to this process; SIGTERM only where a handler turns it into an exception."""
    real = getattr(namespace, name)

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        if when(*args):
            monkeypatch.setattr(namespace, name, real)
            if signum == signal.SIGTERM:
                assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL, "SIGTERM would kill the test process"
            signal.raise_signal(signum)
        return result
    monkeypatch.setattr(namespace, name, wrapped)


INSTANTS = {  # name: (namespace, function, condition on its arguments)
    "staging-made": (os, "mkdir", lambda path, *a: str(path).endswith(".partial")),
    "staging-locked": (checkpoint, "_try_lock", lambda *a: True),
    "source-read": (CONVERT, "open_source", lambda *a: True),
    "params-written": (CONVERT, "write_into", lambda *a: True),
    "old-moved-aside": (os, "rename", lambda src, dst: str(dst).endswith(".partial")),
}
EXPECTED = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: SystemExit}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("instant", list(INSTANTS))
def test_a_signal_at_any_instant_of_a_conversion_leaves_nothing_behind(tmp_path, monkeypatch, signum, instant):
    dst = tmp_path / "out"
    replacing = instant == "old-moved-aside"
    if replacing:
        jax_refine.convert(SRC, dst)
        before = read_metadata(dst)["params_sha256"]
    raise_signal_after(monkeypatch, signum, *INSTANTS[instant])
    with pytest.raises(EXPECTED[signum]) as err:
        jax_refine.convert(SRC, dst, overwrite=True)
    if signum == signal.SIGTERM:
        assert err.value.code == 143
    assert leftovers(tmp_path) == []
    if replacing:  # the signal waited for the replacement: the new conversion is complete
        assert read_metadata(dst)["params_sha256"] == before and jax_refine.load(dst).config.ngf == 8
    else:
        assert not dst.exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler lives only as long as the staging


@pytest.mark.parametrize("signum, status, line", [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_signal_right_after_the_cli_creates_its_staging_folder(tmp_path, monkeypatch, capsys, signum, status, line):
    raise_signal_after(monkeypatch, signum, *INSTANTS["staging-made"])
    before = signal.getsignal(signal.SIGTERM)
    assert main(["convert", str(SRC), str(tmp_path / "out")]) == status
    assert capsys.readouterr().err.strip().splitlines()[-1] == line
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_enospc_from_the_metadata_write_leaves_nothing(tmp_path, monkeypatch):
    real = checkpoint.Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "jax_refine.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(checkpoint.Path, "write_text", full)
    with pytest.raises(OSError, match="No space left on device"):
        jax_refine.convert(SRC, tmp_path / "out")
    assert os.listdir(tmp_path) == []
