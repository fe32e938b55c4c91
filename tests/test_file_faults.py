"""Faults of the real world around images and folders (issue 23): any name a file system
allows, two jobs in one folder, full disks, SIGINT / SIGTERM at the instant a temporary file
exists, API arguments checked at the boundary, an output folder inside the input folder."""

import errno
import io
import json
import os
import signal
import struct
import sys
import threading
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import jax_refine
from jax_refine import cli, files, jobs
from jax_refine.plan import RefineConfig

from conftest import load_golden_image

@pytest.fixture(scope="module")
def photo():
    image, mask = load_golden_image("coffee_300x400")
    return Image.fromarray((image[:32, :40] * 255).round().astype(np.uint8)), mask[:32, :40] > 0


def mask_image(hole):
    return Image.fromarray(np.where(hole, 255, 0).astype(np.uint8))


def entries(folder) -> list[bytes]:
    return sorted(os.listdir(os.fsencode(folder)))


# ------------------------------------------------------------------------------ names (item 1)

LATIN_1 = os.fsdecode(b"caf\xe9")      # not UTF-8: a Latin-1 name from an old archive
LONG = "x" * 251                       # + ".png": 255 bytes, the limit


@pytest.mark.parametrize("stem", [LATIN_1, "two\nlines", "-dash", LONG])
def test_temporary_names_fit_and_stale_ones_are_found(tmp_path, stem):
    output = tmp_path / (stem + ".png")
    seen = []
    files.write_atomic(output, lambda f: (f.write(b"data"), seen.extend(os.listdir(os.fsencode(tmp_path)))))
    [partial] = seen
    assert len(partial) <= 255 and partial.endswith(b".partial") and output.read_bytes() == b"data"
    assert entries(tmp_path) == [os.fsencode(output.name)]
    abandoned = tmp_path / os.fsdecode(partial)  # as a killed writer leaves it: unlocked
    abandoned.write_bytes(b"")
    other = tmp_path / f".{files.partial_stem('y' + stem + '.png')}.{'0' * 16}.partial"
    other.write_bytes(b"")  # another output's
    assert files.remove_stale_partials([output]) == [abandoned] and other.exists()


def test_outputs_honour_the_umask_without_changing_it(tmp_path):
    previous = os.umask(0o027)
    try:
        files.write_atomic(tmp_path / "a.png", lambda f: f.write(b"x"))
        assert os.umask(0o027) == 0o027  # nobody changed it meanwhile
    finally:
        os.umask(previous)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o640


def test_any_name_works_end_to_end_on_an_ascii_terminal(tmp_path, tiny_checkpoint, photo, monkeypatch):
    """Invalid UTF-8, a newline, a leading dash and 255 bytes: discovery, the job, the
    per-item lines, the summary and the report, printed to an ASCII terminal."""
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    stems = [LATIN_1, "two\nlines", "-dash", LONG, "naïve"]  # the last is UTF-8, but not ASCII
    for stem in stems:
        photo[0].save(images / f"{stem}.png")
        mask_image(photo[1]).save(masks / f"{stem}.png")
    bad = os.fsdecode(b"bad\xff\n\x1b[31m")
    (images / f"{bad}.png").write_bytes(b"not a png")
    mask_image(photo[1]).save(masks / f"{bad}.png")
    streams = {name: io.TextIOWrapper(io.BytesIO(), encoding="ascii") for name in ("stdout", "stderr")}
    for name, stream in streams.items():  # a terminal of PYTHONIOENCODING=ascii: strict ASCII
        monkeypatch.setattr(sys, name, stream)
    status = cli.main(["inpaint", str(images), str(masks), "-o", str(out), "--model", str(tiny_checkpoint),
                       "--no-refine", "--report"])
    stdout, stderr = (stream.detach().getvalue().decode("ascii") for stream in streams.values())
    assert status == 1 and "Traceback" not in stderr, stderr
    assert entries(out) == sorted(os.fsencode(f"{stem}.png") for stem in stems)
    alone = np.asarray(jax_refine.inpaint(photo[0], photo[1], tiny_checkpoint, method="plain"))
    for stem in stems:
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{stem}.png")), alone)
    assert "5 done, 1 failed" in stdout and f"{out}/na\\xefve.png: plain" in stdout
    shown_bad = files.printable(images / f"{bad}.png")
    assert shown_bad.endswith("bad\\xff\\n\\x1b[31m.png")
    assert f"  {shown_bad}: cannot read image: not an image file" in stdout
    assert f"failed: {shown_bad}: cannot read image" in stderr
    assert f"{out}/caf\\xe9.png: plain prediction" in stdout and f"{out}/two\\nlines.png: plain" in stdout
    assert stdout.count("\n") == len(stems) + 2  # one line per report, the headline, the failure
    monkeypatch.chdir(images)  # a relative name with a leading dash, after "--"
    assert cli.main(["inpaint", "--output=-single.png", "--model", str(tiny_checkpoint), "--no-refine", "-q", "--",
                     "-dash.png", str(masks / "-dash.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(images / "-single.png")), alone)


def test_fingerprints_and_reports_of_any_name(tmp_path):
    names = [tmp_path / f"{stem}.png" for stem in (LATIN_1, "two\nlines", LONG)]
    items = [files.Item(name, name, name, name) for name in names]
    sizes = {i: (4, 5) for i in range(len(items))}
    assert len(jobs._fingerprint(items, sizes, [[0, 1], [2]])) == 64
    reporter = jobs.Reporter(3, verbose=False, outer_bar=False)
    for item in items:
        reporter.succeeded(item, 0.1)
    report = tmp_path / "report.json"
    jobs._write_report(report, reporter, reporter.summary(1.0, 1, 0))
    text = report.read_bytes().decode("ascii")  # JSON escapes, names round-trip through surrogateescape
    assert [Path(p) for p in json.loads(text)["written"]] == names


# ------------------------------------------------------------------------------ two jobs, one folder (item 5)

def test_a_second_job_never_removes_a_live_jobs_temporary_file(tmp_path, tiny_checkpoint, photo, capsys):
    """The first job is writing out/a_mask.png when a second job on the same folder starts:
    the second removes only the abandoned temporary file, the first job's survives."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    photo[0].save(data / "a.png")
    mask_image(photo[1]).save(data / "a_mask.png")
    abandoned = out / f".a_mask.png.{'1' * 16}.partial"  # a killed job's
    abandoned.write_bytes(b"")
    live = []

    def first_job_writes(f):
        f.write(b"first job's bytes")
        live.extend(p for p in out.iterdir() if p.name.endswith(".partial") and p != abandoned)
        assert cli.main(["inpaint", str(data), "-o", str(out), "--model", str(tiny_checkpoint), "--no-refine",
                         "--overwrite"]) == 0  # the second job
        assert all(p.exists() for p in live)

    files.write_atomic(out / "a_mask.png", first_job_writes)
    assert len(live) == 1 and not live[0].exists() and not abandoned.exists()
    assert "removed 1 temporary file(s)" in capsys.readouterr().err
    assert (out / "a_mask.png").read_bytes() == b"first job's bytes"  # the first job's rename came last
    assert entries(out) == [b"a_mask.png"]


# ------------------------------------------------------------------------------ full disks (item 6)

def test_a_full_disk_fails_each_item_in_one_line_and_leaves_nothing(tmp_path, tiny_checkpoint, photo, capsys,
                                                                     monkeypatch):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    for name in ("a", "b"):
        photo[0].save(data / f"{name}.png")
        mask_image(photo[1]).save(data / f"{name}_mask.png")
    write_atomic = files.write_atomic

    def disk_full(path, write):
        def part_then_enospc(f):
            f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_atomic(path, part_then_enospc)

    monkeypatch.setattr(files, "write_atomic", disk_full)
    assert cli.main(["inpaint", str(data), "-o", str(out), "--model", str(tiny_checkpoint), "--no-refine"]) == 1
    captured = capsys.readouterr()
    for name in ("a", "b"):
        line = f"failed: {out / name}_mask.png: cannot write: No space left on device"
        assert captured.err.count(line) == 1 and captured.out.count(line[len("failed: "):]) == 1
    assert "Traceback" not in captured.err and entries(out) == []


# ------------------------------------------------------------------------------ signals (item 7)

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("instant", ["created", "writing"])
def test_a_signal_at_the_instant_a_temporary_file_exists_leaves_nothing(tmp_path, monkeypatch, signum, instant):
    """The signal arrives in the main thread right after the temporary file was created
    (before its lock) or while it is written: the writer removes it."""
    def signal_now(*args):
        os.kill(os.getpid(), signum)  # the handler runs at the next bytecode of this thread

    if instant == "created":
        hold = files._hold
        monkeypatch.setattr(files, "_hold", lambda *args: (signal_now(), hold(*args))[1])
    with pytest.raises(KeyboardInterrupt) as stopped, cli._sigterm_stops_the_job():
        files.write_atomic(tmp_path / "out.png", signal_now if instant == "writing" else lambda f: f.write(b"x"))
    assert isinstance(stopped.value, jobs.Terminated) == (signum == signal.SIGTERM)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("signum, status, line", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                   (signal.SIGINT, 130, "interrupted")])
def test_a_signal_finishes_the_writes_and_prints_the_summary(tmp_path, tiny_checkpoint, photo, capsys, monkeypatch,
                                                            signum, status, line):
    """The signal arrives while the first output is written (on a writer thread, which waits
    until the main thread has acted on it): the job stops, that write finishes."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    for name in ("a", "b", "c"):
        photo[0].save(data / f"{name}.png")
        mask_image(photo[1]).save(data / f"{name}_mask.png")
    hold, handled = files._hold, threading.Event()

    def handler(raise_stop):
        def handle(*args):
            handled.set()
            raise_stop(*args)
        return handle

    def hold_then_signal(*args):
        if not handled.is_set():
            os.kill(os.getpid(), signum)
            assert handled.wait(60)
        return hold(*args)

    monkeypatch.setattr(files, "_hold", hold_then_signal)
    monkeypatch.setattr(cli, "_raise_terminated", handler(cli._raise_terminated))
    before = signal.getsignal(signal.SIGTERM)
    previous = signal.signal(signal.SIGINT, handler(signal.default_int_handler))
    try:
        result = cli.main(["inpaint", str(data), "-o", str(out), "--model", str(tiny_checkpoint), "--no-refine"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    stdout, stderr = capsys.readouterr()
    assert result == status, stderr
    assert stderr.endswith(line + "\n") and "Traceback" not in stderr
    written = entries(out)  # the writes in progress finished (the first one at least), no temporary file
    assert 1 <= len(written) and all(name.endswith(b"_mask.png") for name in written)
    assert stdout.startswith(f"{len(written)} done, 0 failed")
    assert all(files.output_complete(out / os.fsdecode(name), (32, 40)) for name in written)


# ------------------------------------------------------------------------------ API types (item 9)

def test_api_arguments_are_checked_at_the_boundary(tiny_model, photo, tmp_path):
    image, hole = np.asarray(photo[0]), photo[1]
    calls = {
        "inpaint": lambda **kw: jax_refine.inpaint(image, hole, tiny_model, **kw),
        "inpaint_with_info": lambda **kw: jax_refine.inpaint_with_info(image, hole, tiny_model, **kw),
        "inpaint_batch": lambda **kw: jax_refine.inpaint_batch([image], [hole], tiny_model, **kw),
        "inpaint_batch_with_info": lambda **kw: jax_refine.inpaint_batch_with_info([image], [hole], tiny_model, **kw),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match="config must be a jax_refine.RefineConfig or None, got dict"):
            call(config={"n_iters": 2})
        with pytest.raises(TypeError, match="progress must be True, False, None or a callable .*, got str"):
            call(progress="yes")
        with pytest.raises(ValueError, match="devices is empty"):
            call(devices=[])
        with pytest.raises(TypeError, match="devices must be jax devices .*, got str"):
            call(devices=["cpu"])
    with pytest.raises(TypeError, match="config must be a jax_refine.RefineConfig or None, got dict"):
        jax_refine.estimate((32, 40), tiny_model, config={"n_iters": 2})
    with pytest.raises(TypeError, match="config must be a jax_refine.RefineConfig or None, got dict"):
        jax_refine.inpaint_files(tmp_path, tmp_path / "out", settings=jax_refine.JobSettings(config={"n_iters": 2}))
    with pytest.raises(TypeError, match="settings must be a JobSettings, got dict"):
        jax_refine.inpaint_files(tmp_path, tmp_path / "out", settings={"batch_size": 2})
    result = jax_refine.inpaint(image, hole, tiny_model, method="plain", config=RefineConfig(), progress=False,
                                devices=jax.devices()[:1])
    assert result.shape == image.shape  # the right types pass


# ------------------------------------------------------------------------------ output inside input (item 10)

def test_an_output_folder_inside_the_input_folder_is_left_out_and_said(tmp_path, tiny_checkpoint, photo, capsys):
    data = tmp_path / "data"
    (data / "out").mkdir(parents=True)
    for folder in (data, data / "out"):  # the output folder holds a pair too (e.g. an earlier run's)
        photo[0].save(folder / "a.png")
        mask_image(photo[1]).save(folder / "a_mask.png")
    assert cli.main(["inpaint", str(data), "-o", str(data / "out"), "--model", str(tiny_checkpoint),
                     "--no-refine", "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 done, 0 failed")
    assert f"  left out {data / 'out'}: the output folder, inside the input folder" in out
    summary = jax_refine.inpaint_files(data, data / "out", model=tiny_checkpoint,
                                       settings=jax_refine.JobSettings(method="plain", overwrite=True))
    assert (summary.done, summary.left_out) == (1, [str(data / "out")])


# ------------------------------------------------------------------------------ 16-bit colour, lossless WebP (item 8)

def png16(values, exif=None):
    """A 16-bit PNG of uint16 (H, W, C) values, as other writers make them: each row with
    another of the five filters (None, Sub, Up, Average, Paeth); optionally an eXIf chunk."""
    h, w, c = values.shape
    bpp = 2 * c
    raw = values.astype(">u2").reshape(h, w * c).view(np.uint8).astype(np.int32)
    left = np.pad(raw, ((0, 0), (bpp, 0)))[:, :-bpp]
    up = np.pad(raw, ((1, 0), (0, 0)))[:-1]
    upleft = np.pad(left, ((1, 0), (0, 0)))[:-1]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    predictors = [np.zeros_like(raw), left, up, (left + up) // 2, paeth]
    rows = b"".join(bytes([y % 5]) + ((raw[y] - predictors[y % 5][y]) % 256).astype(np.uint8).tobytes()
                    for y in range(h))
    chunk = files.colour16._chunk
    colour_type = {2: 4, 3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
            + (chunk(b"eXIf", exif) if exif else b"") + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def png16_interlaced(values):
    """A 16-bit RGB PNG of uint16 (H, W, 3) values, Adam7-interlaced (filter None)."""
    h, w, _ = values.shape
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for top, left, dy, dx in passes
                    for row in values[top::dy, left::dx] if row.size)
    chunk = files.colour16._chunk
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 1))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def deep(photo, channels):
    """uint16 values with every low byte in use: the photo * 257 + noise; alpha a ramp."""
    noise = np.random.default_rng(1).integers(0, 256, (32, 40, 3)).astype(np.uint16)
    rgb = np.asarray(photo[0]).astype(np.uint16) * 257 + noise
    alpha = np.linspace(1000, 65535, 32 * 40).reshape(32, 40, 1).astype(np.uint16)
    return {3: rgb, 4: np.concatenate([rgb, alpha], -1), 2: np.concatenate([rgb[..., :1], alpha], -1)}[channels]


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_16_bit_colour_files_are_read_bit_exactly(tmp_path, photo, channels):
    values = deep(photo, channels)
    (tmp_path / "a.png").write_bytes(png16(values))
    np.testing.assert_array_equal(files.open_image(tmp_path / "a.png"), values)
    (tmp_path / "b.png").write_bytes(files.colour16.png(values))
    np.testing.assert_array_equal(files.open_image(tmp_path / "b.png"), values)
    with Image.open(tmp_path / "b.png") as independent:  # PIL's own decoder: the high bytes
        assert np.array_equal(np.asarray(independent)[..., :channels] if channels > 2 else
                              np.asarray(independent)[..., [0, 3]], values >> 8)
    (tmp_path / "c.tif").write_bytes(files.colour16.tiff(values))  # grey + alpha as RGBA
    np.testing.assert_array_equal(files.open_image(tmp_path / "c.tif"), values[..., [0, 0, 0, 1]] if channels == 2
                                  else values)
    profile = b"\0\0\2\0 an ICC profile's bytes"
    for name, writer in files.colour16.WRITERS.items():  # the ICC profile, read by PIL
        with Image.open(io.BytesIO(writer(values, profile))) as written:
            assert (written.format, written.info["icc_profile"]) == (name, profile)
    if channels == 3:
        (tmp_path / "e.png").write_bytes(png16_interlaced(values[:13, :11]))
        np.testing.assert_array_equal(files.open_image(tmp_path / "e.png"), values[:13, :11])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown turned 90 degrees clockwise
    (tmp_path / "d.png").write_bytes(png16(values, exif.tobytes()))
    np.testing.assert_array_equal(files.open_image(tmp_path / "d.png"), np.rot90(values, -1))
    assert files.upright_size(tmp_path / "d.png") == (40, 32)


def test_16_bit_colour_comes_back_at_16_bits_or_with_one_warning(tmp_path, tiny_checkpoint, photo, capsys):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    values = deep(photo, 3)
    (images / "p.png").write_bytes(png16(values))
    (images / "t.tif").write_bytes(files.colour16.tiff(deep(photo, 4)))
    for stem in ("p", "t"):
        mask_image(photo[1]).save(masks / f"{stem}.png")
    assert cli.main(["inpaint", str(images), str(masks), "-o", str(out), "--model", str(tiny_checkpoint),
                     "--no-refine", "--keep-ext"]) == 0
    known = ~photo[1]
    for name, expected in (("p.png", values), ("t.tif", deep(photo, 4))):
        result = files.open_image(out / name)
        assert result.dtype == np.uint16 and result.shape == expected.shape
        np.testing.assert_array_equal(result[known], expected[known])
        assert np.any(result[photo[1]] % 257)  # the fill uses all 16 bits, not 8 scaled
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["inpaint", str(images / "p.png"), str(masks / "p.png"), "-o", str(tmp_path / "p.jpg"),
                     "--model", str(tiny_checkpoint), "--no-refine"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 2, err
    assert (f"warning: {tmp_path / 'p.jpg'}: JPEG stores 8 bits per channel: the 16-bit image is written at 8 bits"
            in err)
    assert "JPEG is lossy: the known pixels of the lossless input are not kept exactly" in err


def test_lossless_webp_stays_lossless_and_lossy_stays_quiet(tmp_path, tiny_checkpoint, photo, capsys):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    photo[0].save(images / "lossless.webp", lossless=True)
    photo[0].save(images / "lossy.webp", quality=80)
    for stem in ("lossless", "lossy"):
        mask_image(photo[1]).save(masks / f"{stem}.png")
    assert files.stored_as(images / "lossless.webp") == (None, True)
    assert files.stored_as(images / "lossy.webp") == (None, False)
    assert cli.main(["inpaint", str(images), str(masks), "-o", str(out), "--model", str(tiny_checkpoint),
                     "--no-refine", "--keep-ext"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert files.stored_as(out / "lossless.webp")[1] and not files.stored_as(out / "lossy.webp")[1]
    known = ~photo[1]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "lossless.webp").convert("RGB"))[known],
                                  np.asarray(photo[0])[known])
