"""Hostile folders and files through the CLI (issue 15, items 8-12): a bad entry fails alone,
stale temporary files are removed, masks with alpha or noise, every output mode is written in
a mode its format stores. No traceback reaches the user."""

import os
import stat
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import jax_refine
from jax_refine import cli, files

from conftest import load_golden_image


@pytest.fixture(scope="module")
def photo():
    image, mask = load_golden_image("coffee_300x400")
    return Image.fromarray((image[:64, :80] * 255).round().astype(np.uint8)), mask[:64, :80] > 0


def run(*argv):
    return cli.main([str(a) for a in argv])


def mask_image(hole):
    return Image.fromarray(np.where(hole, 255, 0).astype(np.uint8))


def png_header(width: int, height: int) -> bytes:
    """The signature, IHDR and IEND chunks of an RGB PNG of that size, without pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def written(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_symlink_loops_fifos_and_unreadable_entries_fail_alone(tmp_path, tiny_checkpoint, photo, capsys):
    """The issue's loop_mask.png (a symlink to itself) aborted the whole run with a traceback."""
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "locked").mkdir(parents=True)
    photo[0].save(data / "good.png")
    mask_image(photo[1]).save(data / "good_mask.png")
    photo[0].save(data / "loop.png")
    os.symlink("loop_mask.png", data / "loop_mask.png")                # a mask linking to itself
    os.symlink("self.png", data / "self.png")                          # an image linking to itself
    mask_image(photo[1]).save(data / "self_mask.png")
    os.mkfifo(data / "fifo.png")                                       # reading would block forever
    mask_image(photo[1]).save(data / "fifo_mask.png")
    os.symlink("/dev/zero", data / "zero.png")                         # endless
    mask_image(photo[1]).save(data / "zero_mask.png")
    (data / "folder.png").mkdir()                                      # a folder where the image belongs
    mask_image(photo[1]).save(data / "folder_mask.png")
    os.symlink(".", data / "sub")                                      # a folder loop (not followed)
    (data / "bomb.png").write_bytes(png_header(20000, 20000))          # 400 Mpx claimed in 45 bytes
    mask_image(photo[1]).save(data / "bomb_mask.png")
    mask_image(photo[1]).save(data / "locked" / "x_mask.png")
    os.chmod(data / "locked", 0)
    try:
        code = run("inpaint", data, "-o", out, "--model", tiny_checkpoint, "--no-refine")
    finally:
        os.chmod(data / "locked", stat.S_IRWXU)
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err + captured.out
    assert written(out) == ["good_mask.png"]
    reasons = {line.split(": ", 1)[0].strip(): line.split(": ", 1)[1] for line in captured.out.splitlines()[1:]}
    assert reasons == {
        str(data / "loop_mask.png"): "cannot read mask: Too many levels of symbolic links",
        str(data / "self.png"): "cannot read image: Too many levels of symbolic links",
        str(data / "fifo.png"): "cannot read image: not a regular file (a FIFO)",
        str(data / "zero.png"): "cannot read image: not a regular file (a character device)",
        str(data / "folder.png"): "cannot read image: not a regular file (a folder)",
        str(data / "bomb.png"): "cannot read image: Image size (400000000 pixels) exceeds limit of 178956970 "
                                "pixels, could be decompression bomb DOS attack.",
        # root lists any folder: then the locked folder's mask is found, and has no image
        **({str(data / "locked" / "x_mask.png"): f"no image for this mask (looked for {data / 'locked' / 'x'}"
                                                 "{.png|.jpg|.jpeg}, any case)"} if os.geteuid() == 0 else
           {str(data / "locked"): "cannot list this folder: Permission denied"}),
    }
    assert captured.out.startswith("1 done, ")


def test_image_folder_with_a_looping_entry(tmp_path, tiny_checkpoint, photo, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    photo[0].save(images / "a.png")
    mask_image(photo[1]).save(masks / "a.png")
    os.symlink("b.png", images / "b.png")
    os.symlink("b.png", masks / "b.png")
    assert run("inpaint", images, masks, "-o", tmp_path / "out", "--model", tiny_checkpoint, "--no-refine") == 1
    out = capsys.readouterr().out
    assert "1 done, 1 failed" in out and f"{images / 'b.png'}: cannot read image: Too many levels" in out
    assert written(tmp_path / "out") == ["a.png"]


def test_stale_temporary_files_of_our_outputs_are_removed(tmp_path, tiny_checkpoint, photo, capsys):
    """A SIGKILL while writing leaves `.<name>.<random>.partial`; the next run writing that
    output removes it, and nothing that merely looks similar."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    photo[0].save(data / "a.png")
    mask_image(photo[1]).save(data / "a_mask.png")
    stale = [out / ".a_mask.png.k3_x9q2z.partial", out / ".a_mask.png.report.png.abcdefgh.partial"]
    kept = [out / ".b_mask.png.abcdefgh.partial",      # another output's: not this run's to remove
            out / ".a_mask.png.abc.partial",           # not our naming
            out / "a_mask.png.abcdefgh.partial",       # not hidden: not ours
            out / ".a_mask.png.abcdefgh.partial.keep"]
    for path in stale + kept:
        path.write_bytes(b"")
    (out / ".a_mask.png.zzzzzzzz.partial").mkdir()      # a folder of that name: never removed
    assert run("inpaint", data, "-o", out, "--model", tiny_checkpoint, "--no-refine") == 0
    assert "removed 2 temporary file(s) an interrupted run left" in capsys.readouterr().err
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept) and (out / ".a_mask.png.zzzzzzzz.partial").is_dir()
    assert files.remove_stale_partials([out / "a_mask.png"]) == []


def test_alpha_masks_threshold_and_large_hole_warning(tmp_path, tiny_checkpoint, photo, capsys):
    data = tmp_path / "data"
    data.mkdir()
    photo[0].save(data / "a.png")
    rgba = np.full(photo[1].shape + (4,), 255, np.uint8)
    rgba[..., 3] = np.where(photo[1], 255, 0)  # white strokes on a transparent white layer
    Image.fromarray(rgba).save(data / "a_mask.png")
    photo[0].save(data / "b.png")
    mask_image(~photo[1]).save(data / "b_mask.png")  # inverted
    noisy = np.where(photo[1], 230, 20).astype(np.uint8)  # grey, lossy
    photo[0].save(data / "c.png")
    Image.fromarray(noisy).save(data / "c_mask.png")
    out = tmp_path / "out"
    assert run("inpaint", data, "-o", out, "--model", tiny_checkpoint, "--no-refine", "--mask-threshold", 0.5) == 0
    err = capsys.readouterr().err
    assert (~photo[1]).mean() > 0.5 > photo[1].mean()
    assert f"warning: {data / 'b_mask.png'}: the hole covers {100 * (~photo[1]).mean():.1f} % of the image" in err
    assert err.count("warning:") == 1  # the alpha mask and the thresholded grey one: the small hole
    reference = np.asarray(jax_refine.inpaint(photo[0], photo[1], tiny_checkpoint, method="plain"))
    for name in ("a_mask.png", "c_mask.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), reference)
    assert run("inpaint", data, "-o", tmp_path / "x", "--mask-threshold", 1) == cli.EXIT_USAGE
    assert "--mask-threshold must be a number in [0, 1), got 1.0" in capsys.readouterr().err


@pytest.mark.parametrize("make, suffix, keep_ext, mode, scale", [
    (lambda grey: Image.fromarray(grey.astype(np.float32) / 255), ".tif", False, "I;16", 257),  # F -> 16-bit PNG
    (lambda grey: Image.fromarray(grey.astype(np.float32) / 255), ".tif", True, "F", 1 / 255),   # F TIFF stays F
    (lambda grey: Image.fromarray(grey.astype(np.uint16) * 257), ".png", False, "I;16", 257),   # 16-bit PNG
    (lambda grey: Image.fromarray(grey).convert("LA"), ".png", False, "LA", 1),
])
def test_outputs_keep_the_depth_their_format_can_store(tmp_path, tiny_checkpoint, photo, make, suffix, keep_ext,
                                                       mode, scale):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    grey = np.asarray(photo[0].convert("L"))
    make(grey).save(images / f"a{suffix}")
    mask_image(photo[1]).save(masks / "a.png")
    extra = ["--keep-ext"] if keep_ext else []
    assert run("inpaint", images, masks, "-o", tmp_path / "out", "--model", tiny_checkpoint, "--no-refine",
               *extra) == 0
    [output] = (tmp_path / "out").iterdir()
    with Image.open(output) as result:
        assert result.mode == mode
        values = np.asarray(result)[..., 0] if mode == "LA" else np.asarray(result)
    known = ~photo[1]
    np.testing.assert_allclose(values[known], grey[known].astype(np.float64) * scale, rtol=1e-6)


def test_jpeg_outputs_of_16_bit_and_alpha_images_are_rescaled(tmp_path, tiny_checkpoint, photo):
    grey = np.asarray(photo[0].convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g.png")
    mask_image(photo[1]).save(tmp_path / "m.png")
    assert run("inpaint", tmp_path / "g.png", tmp_path / "m.png", "-o", tmp_path / "g.jpg",
               "--model", tiny_checkpoint, "--no-refine", "-q") == 0
    with Image.open(tmp_path / "g.jpg") as result:  # 8-bit grey, not clipped to white
        assert result.mode == "L"
        assert np.abs(np.asarray(result).astype(int)[~photo[1]] - grey[~photo[1]]).mean() < 3


def test_inpaint_files_is_the_cli_job_from_python(tmp_path, tiny_model, photo, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    photo[0].save(data / "a.png")
    mask_image(photo[1]).save(data / "a_mask001.png")
    mask_image(photo[1][::-1]).save(data / "a_mask002.png")
    (data / "bad.png").write_bytes(b"not a png")
    mask_image(photo[1]).save(data / "bad_mask.png")
    summary = jax_refine.inpaint_files(data, out, model=tiny_model,
                                       settings=jax_refine.JobSettings(method="plain", batch_size=2))
    assert (summary.done, summary.skipped, summary.processes) == (2, 0, 1)
    assert summary.failures == [(str(data / "bad.png"), "cannot read image: not an image file of a format PIL reads")]
    assert capsys.readouterr() == ("", "")  # not verbose: nothing printed
    for name, hole in (("a_mask001.png", photo[1]), ("a_mask002.png", photo[1][::-1])):
        alone = jax_refine.inpaint(photo[0], hole, tiny_model, method="plain")
        assert np.abs(np.asarray(Image.open(out / name)).astype(int) - np.asarray(alone)).max() <= 1
    again = jax_refine.inpaint_files(data, out, model=tiny_model,
                                     settings=jax_refine.JobSettings(method="plain", skip_existing=True))
    assert (again.done, again.skipped, len(again.failures)) == (0, 2, 1)
    with pytest.raises(files.UsageError, match="overwrite replaces existing outputs, skip_existing keeps them"):
        jax_refine.inpaint_files(data, out, model=tiny_model,
                                 settings=jax_refine.JobSettings(overwrite=True, skip_existing=True))
