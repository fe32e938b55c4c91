"""The `jax-refine` command line: inpaint modes, failures and safety, convert, the scripts."""

import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jax_refine
from jax_refine import cli, files, images, jobs

from conftest import GOLDEN

REPO = Path(__file__).resolve().parents[1]
SIZE = (80, 64)  # (w, h): small, and one padded size for every test (one compilation)


@pytest.fixture(scope="session")
def pairs():
    """{name: (RGB image, L mask)} PIL images of SIZE cut from the golden inputs."""
    out = {}
    for name in ("coffee_300x400", "astronaut_251x317", "chelsea_240x296"):
        image = Image.open(GOLDEN / f"{name}.png").convert("RGB").resize(SIZE, Image.BILINEAR)
        mask = Image.open(GOLDEN / f"{name}_mask.png").convert("L").resize(SIZE, Image.NEAREST)
        assert 0 < (np.asarray(mask) > 0).mean() < 1
        out[name.split("_")[0]] = (image, mask)
    return out


def run(*argv):
    return cli.main([str(a) for a in argv])


def inpaint_args(checkpoint, *extra):
    return ["--model", checkpoint, *extra]


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def saved_photo(tmp_path, pairs):
    """Save the coffee pair as tmp_path/photo.png + photo_mask.png; (image, mask, output path)."""
    image, mask = pairs["coffee"]
    image.save(tmp_path / "photo.png")
    mask.save(tmp_path / "photo_mask.png")
    return image, mask, tmp_path / "filled.png"


def leftovers(directory):
    return [p for p in Path(directory).rglob("*") if p.name.startswith(".") or p.name.endswith(".partial")]


def assert_known_pixels_kept(out_path, image, mask):
    out, known = pixels(out_path), np.asarray(mask) == 0
    np.testing.assert_array_equal(out[known], np.asarray(image)[known])
    assert not np.array_equal(out[~known], np.asarray(image)[~known])


def test_single_image(tmp_path, tiny_checkpoint, pairs, capsys):
    image, mask = pairs["coffee"]
    image.save(tmp_path / "photo.png")
    mask.save(tmp_path / "photo_mask.png")
    out = tmp_path / "result" / "filled.png"
    assert run("inpaint", tmp_path / "photo.png", tmp_path / "photo_mask.png", "-o", out,
               *inpaint_args(tiny_checkpoint, "--no-refine")) == 0
    with Image.open(out) as written:
        assert written.format == "PNG" and written.size == SIZE and written.mode == "RGB"
    assert_known_pixels_kept(out, image, mask)
    direct = jax_refine.inpaint(image, mask, tiny_checkpoint, method="plain")
    np.testing.assert_array_equal(pixels(out), np.asarray(direct))
    assert "1 done, 0 failed" in capsys.readouterr().out
    assert leftovers(out.parent) == []


@pytest.mark.slow
def test_refine_with_progress_bars(tmp_path, tiny_checkpoint, pairs, capsys, monkeypatch):
    monkeypatch.setattr(jobs, "_use_bars", lambda: True)
    image, mask = pairs["chelsea"]
    image.save(tmp_path / "cat.png")
    mask.save(tmp_path / "cat_mask.png")
    out = tmp_path / "cat_out.png"
    assert run("inpaint", tmp_path / "cat.png", tmp_path / "cat_mask.png", "-o", out,
               *inpaint_args(tiny_checkpoint, "--min-side", 32, "--n-iters", 2)) == 0
    err = capsys.readouterr().err
    assert "scale 2/2 80x64" in err  # the inner bar followed the Progress events
    config = jax_refine.RefineConfig(min_side=32, n_iters=2)
    direct, info = jax_refine.inpaint_with_info(image, mask, tiny_checkpoint, config=config)
    assert [s.size for s in info.scales] == [(32, 40), (64, 80)]
    np.testing.assert_allclose(pixels(out), np.asarray(direct), atol=1)
    assert_known_pixels_kept(out, image, mask)


def test_lama_folder_with_bad_items(tmp_path, tiny_checkpoint, pairs, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "sub").mkdir(parents=True)
    pairs["coffee"][0].save(data / "coffee.png")
    pairs["coffee"][1].save(data / "coffee_mask.png")
    pairs["astronaut"][0].save(data / "sub" / "astronaut.JPG", quality=95)  # suffix case ignored
    pairs["astronaut"][1].save(data / "sub" / "astronaut_mask001.png")
    pairs["chelsea"][0].save(data / "chelsea.png")
    pairs["chelsea"][1].save(data / "chelsea_mask.png")
    (data / "broken.png").write_bytes(np.random.default_rng(0).bytes(2000))  # corrupt image
    pairs["chelsea"][1].save(data / "broken_mask.png")
    pairs["chelsea"][1].save(data / "orphan_mask.png")  # no image
    assert run("inpaint", data, "-o", out, *inpaint_args(tiny_checkpoint, "--no-refine")) == 1
    captured = capsys.readouterr()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "chelsea_mask.png", "coffee_mask.png", "sub/astronaut_mask001.png"]
    assert_known_pixels_kept(out / "coffee_mask.png", *pairs["coffee"])
    assert "3 done, 2 failed" in captured.out
    assert f"{data / 'broken.png'}: cannot read image" in captured.out
    assert f"{data / 'orphan_mask.png'}: no image for this mask" in captured.out
    assert f"failed: {data / 'broken.png'}" in captured.err
    assert leftovers(out) == []

    assert run("inpaint", data, "-o", tmp_path / "jpg", "--image-suffix", "jpg", "-q",
               *inpaint_args(tiny_checkpoint, "--no-refine")) == 1
    assert [p.name for p in (tmp_path / "jpg").rglob("*.png")] == ["astronaut_mask001.png"]
    assert "1 done, 4 failed" in capsys.readouterr().out


@pytest.mark.slow
def test_batches_are_grouped_from_headers(tmp_path, tiny_checkpoint, pairs, monkeypatch):
    """--batch-size groups the items by their files' headers (EXIF orientation applied)."""
    data = tmp_path / "data"
    data.mkdir()
    small = [x.crop((0, 0, 64, 48)) for x in pairs["coffee"]]  # another padded size than SIZE
    for name, (image, mask) in [("a", small), ("b", pairs["chelsea"]), ("c", small), ("d", pairs["chelsea"])]:
        image.save(data / f"{name}.png")
        mask.save(data / f"{name}_mask.png")
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6  # stored turned by 90 degrees: upright, it is b
    pairs["chelsea"][0].transpose(Image.Transpose.ROTATE_90).save(data / "e.png", exif=exif)
    pairs["chelsea"][1].save(data / "e_mask.png")
    assert files.upright_size(data / "e.png") == (SIZE[1], SIZE[0])
    runs = []
    compute = jobs._Runner.compute
    monkeypatch.setattr(jobs._Runner, "compute",
                        lambda self, opened: runs.append([item.image.stem for item, *_ in opened]) or
                        compute(self, opened))
    out = tmp_path / "out"
    assert run("inpaint", data, "-o", out, "--batch-size", 2, *inpaint_args(tiny_checkpoint, "--no-refine")) == 0
    assert runs == [["a", "c"], ["b", "d"], ["e"]]
    assert np.array_equal(pixels(out / "e_mask.png"), pixels(out / "b_mask.png"))  # e is b, stored turned


def test_pipeline_holds_a_bounded_number_of_images(tmp_path, tiny_checkpoint, pairs, monkeypatch):
    """Images are decoded ahead and written behind on worker threads, but at most
    PREFETCH + WRITE_BEHIND + 2 batches are in memory at any time."""
    data = tmp_path / "data"
    data.mkdir()
    for index in range(12):
        pairs["coffee"][0].save(data / f"p{index:02d}.png")
        pairs["coffee"][1].save(data / f"p{index:02d}_mask.png")
    live, seen = set(), []
    open_image = jobs.open_image

    def counted(path, what="image"):
        image = open_image(path, what)
        if what == "image":
            live.add(id(image))
            weakref.finalize(image, live.discard, id(image))
        return image

    compute = jobs._Runner.compute
    monkeypatch.setattr(jobs, "open_image", counted)
    monkeypatch.setattr(jobs._Runner, "compute", lambda self, opened: seen.append(len(live)) or compute(self, opened))
    assert run("inpaint", data, "-o", tmp_path / "out", "-q", *inpaint_args(tiny_checkpoint, "--no-refine")) == 0
    assert len(seen) == 12 and len(list((tmp_path / "out").iterdir())) == 12
    assert max(seen) <= jobs.PREFETCH + jobs.WRITE_BEHIND + 2 < 12
    assert max(seen) >= 2  # decoding ran ahead of the devices


@pytest.mark.slow
def test_batches_equal_single_images_and_a_bad_item_fails_alone(tmp_path, tiny_checkpoint, pairs, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name, (image, mask) in pairs.items():
        image.save(data / f"{name}.png")
        mask.save(data / f"{name}_mask.png")
    pairs["coffee"][0].save(data / "small.png")
    pairs["coffee"][1].resize((40, 32)).save(data / "small_mask.png")  # mask size does not match
    (data / "broken.png").write_bytes(np.random.default_rng(0).bytes(2000))
    pairs["coffee"][1].save(data / "broken_mask.png")
    settings = inpaint_args(tiny_checkpoint, "--min-side", 32, "--n-iters", 3)
    assert run("inpaint", data, "-o", tmp_path / "one", *settings) == 1
    capsys.readouterr()
    assert run("inpaint", data, "-o", tmp_path / "batched", "--batch-size", 3, *settings) == 1
    captured = capsys.readouterr()
    assert "3 done, 2 failed" in captured.out
    assert f"{data / 'broken.png'}: cannot read image" in captured.out
    assert f"{data / 'small.png'}: mask size 40x32 (WxH) does not match" in captured.out
    for name in pairs:
        single, batched = pixels(tmp_path / "one" / f"{name}_mask.png"), pixels(tmp_path / "batched" / f"{name}_mask.png")
        assert np.abs(single.astype(int) - batched.astype(int)).max() <= 1
    assert leftovers(tmp_path / "batched") == []
    assert run("inpaint", data, "-o", tmp_path / "x", "--batch-size", 0, *settings) == cli.EXIT_USAGE
    assert "--batch-size must be >= 1, got 0" in capsys.readouterr().err


def test_two_folders_and_keep_ext(tmp_path, tiny_checkpoint, pairs, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    pairs["coffee"][0].save(images / "coffee.png")
    pairs["coffee"][1].save(masks / "coffee.png")
    pairs["astronaut"][0].save(images / "astronaut.jpg", quality=95)
    pairs["astronaut"][1].save(masks / "astronaut_mask.png")
    pairs["chelsea"][0].save(images / "chelsea.png")
    pairs["chelsea"][1].save(masks / "chelsea_mask000.png")
    (images / "notes.txt").write_text("not an image")
    assert run("inpaint", images, masks, "-o", tmp_path / "out", *inpaint_args(tiny_checkpoint, "--no-refine")) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert_known_pixels_kept(tmp_path / "out" / "chelsea.png", *pairs["chelsea"])
    assert "3 done, 0 failed" in capsys.readouterr().out

    assert run("inpaint", images, masks, "-o", tmp_path / "kept", "--keep-ext", "--quiet",
               *inpaint_args(tiny_checkpoint, "--no-refine")) == 0
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["astronaut.jpg", "chelsea.png", "coffee.png"]
    with Image.open(tmp_path / "kept" / "astronaut.jpg") as written:
        assert written.format == "JPEG"
    assert capsys.readouterr().out == ""  # --quiet: no summary when all succeeded

    # images and masks in one folder: a file that is another image's mask is no image
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pairs["coffee"][0].save(mixed / "coffee.png")
    pairs["coffee"][1].save(mixed / "coffee_mask.png")
    pairs["chelsea"][1].save(mixed / "orphan_mask.png")  # no image: taken for an image without a mask
    assert run("inpaint", mixed, mixed, "-o", tmp_path / "same", *inpaint_args(tiny_checkpoint, "--no-refine")) == 1
    assert sorted(p.name for p in (tmp_path / "same").iterdir()) == ["coffee.png"]
    assert_known_pixels_kept(tmp_path / "same" / "coffee.png", *pairs["coffee"])
    assert f"{mixed / 'orphan_mask.png'}: no mask for this image" in capsys.readouterr().out


def test_one_mask_for_all_images(tmp_path, tiny_checkpoint, pairs, capsys):
    images = tmp_path / "images"
    images.mkdir()
    mask = pairs["coffee"][1]
    mask.save(images / "mask.png")  # in the image folder: not an image to inpaint
    for name, (image, _) in pairs.items():
        image.save(images / f"{name}.png")
    pairs["coffee"][0].resize((96, 64)).save(images / "wide.png")  # size mismatch
    assert run("inpaint", images, images / "mask.png", "-o", tmp_path / "out",
               *inpaint_args(tiny_checkpoint, "--no-refine")) == 1
    captured = capsys.readouterr()
    for name, (image, _) in pairs.items():
        assert_known_pixels_kept(tmp_path / "out" / f"{name}.png", image, mask)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert "3 done, 1 failed" in captured.out
    assert f"{images / 'wide.png'}: mask size 80x64 (WxH) does not match the image size 96x64" in captured.out


def test_never_overwrites_inputs_or_existing_outputs(tmp_path, tiny_checkpoint, pairs, capsys):
    image, mask = pairs["astronaut"]
    image.save(tmp_path / "a.png")
    mask.save(tmp_path / "a_mask.png")
    before = (tmp_path / "a.png").read_bytes(), (tmp_path / "a_mask.png").read_bytes()
    # -o is the image (also through another spelling of the path or a hard link), or the mask
    os.link(tmp_path / "a.png", tmp_path / "hard.png")
    for target in (tmp_path / "a.png", tmp_path / "." / "a_mask.png", tmp_path / "hard.png"):
        assert run("inpaint", tmp_path / "a.png", tmp_path / "a_mask.png", "-o", target, "--overwrite",
                   *inpaint_args(tiny_checkpoint, "--no-refine")) == 2
        assert "refusing to overwrite input files" in capsys.readouterr().err
    # a LaMa folder written into itself: the outputs would be the masks
    assert run("inpaint", tmp_path, "-o", tmp_path, "--overwrite", *inpaint_args(tiny_checkpoint)) == 2
    assert "a_mask.png (output for" in capsys.readouterr().err
    assert ((tmp_path / "a.png").read_bytes(), (tmp_path / "a_mask.png").read_bytes()) == before

    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    assert run("inpaint", tmp_path / "a.png", tmp_path / "a_mask.png", "-o", out,
               *inpaint_args(tiny_checkpoint, "--no-refine")) == 1
    assert "exists (pass --skip-existing to keep it or --overwrite to replace it)" in capsys.readouterr().out
    assert out.read_bytes() == b"keep me"
    assert run("inpaint", tmp_path / "a.png", tmp_path / "a_mask.png", "-o", out, "--overwrite",
               *inpaint_args(tiny_checkpoint, "--no-refine")) == 0
    assert_known_pixels_kept(out, image, mask)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("argv, message", [
    (["--n-iters", "0"], "invalid refinement settings: --n-iters must be a positive int, got 0"),
    (["--erosion", "4", "--lr", "-1"], "--lr must be a positive number"),
    (["--n-iters", "many"], "argument --n-iters: invalid int value: 'many'"),
])
def test_invalid_settings_are_usage_errors(tmp_path, pairs, capsys, argv, message):
    pairs["coffee"][0].save(tmp_path / "x.png")
    pairs["coffee"][1].save(tmp_path / "x_mask.png")
    assert run("inpaint", tmp_path / "x.png", tmp_path / "x_mask.png", "-o", tmp_path / "y.png", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "y.png").exists()


def test_bad_invocations(tmp_path, pairs, capsys):
    pairs["coffee"][0].save(tmp_path / "x.png")
    assert run("inpaint", tmp_path / "x.png", "-o", tmp_path / "y.png") == 2
    assert "one image needs its mask" in capsys.readouterr().err
    assert run("inpaint", tmp_path / "missing.png", tmp_path / "x.png", "-o", tmp_path / "y.png") == 2
    assert "missing.png: no such file or directory" in capsys.readouterr().err
    assert run("inpaint", tmp_path / "x.png", tmp_path / "x.png", "-o", tmp_path / "y.unknown") == 2
    assert "cannot tell an image format" in capsys.readouterr().err
    assert run("inpaint", tmp_path, "-o", tmp_path / "out") == 2  # no *_mask*.png
    assert "no masks" in capsys.readouterr().err
    assert run("inpaint", tmp_path / "x.png", tmp_path / "x.png", "-o", tmp_path / "y.png",
               "--model", tmp_path) == 2
    assert "not a jax-refine checkpoint directory" in capsys.readouterr().err
    assert run() == 2


def test_convert_command(tmp_path, capsys):
    dst = tmp_path / "ckpt" / "tiny"
    assert run("convert", GOLDEN / "tinylama.ckpt", dst) == 0
    out = capsys.readouterr().out
    assert "ngf=8" in out and "135,571 parameters" in out and str(dst) in out
    assert jax_refine.load(dst).config == jax_refine.TINY_LAMA
    assert run("convert", GOLDEN / "tinylama.ckpt", dst) == 2
    assert "already exists" in capsys.readouterr().err
    assert run("convert", GOLDEN / "tinylama.ckpt", dst, "--overwrite") == 0

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(np.random.default_rng(1).bytes(4096))
    assert run("convert", corrupt, tmp_path / "new" / "model") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {corrupt}") and "Traceback" not in err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_scripts_in_a_subprocess(tmp_path, tiny_checkpoint, pairs):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the clone script finds the package on its own
    done = subprocess.run([sys.executable, REPO / "convert" / "convert_lama.py", GOLDEN / "tinylama.ckpt",
                           tmp_path / "tiny"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "135,571 parameters" in done.stdout
    # the executable's entry point (`python -m jax_refine`), with a persistent compilation cache
    pairs["coffee"][0].save(tmp_path / "x.png")
    pairs["coffee"][1].save(tmp_path / "x_mask.png")
    done = subprocess.run([sys.executable, "-m", "jax_refine", "inpaint", "x.png", "x_mask.png", "-o", "y.png",
                           "--model", "tiny", "--no-refine", "--compilation-cache", "cache"],
                          cwd=tmp_path, env=dict(env, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 done, 0 failed" in done.stdout
    assert_known_pixels_kept(tmp_path / "y.png", *pairs["coffee"])
    assert any((tmp_path / "cache").iterdir())


def test_the_executable_is_main_with_the_heap_frozen_around_it(monkeypatch):
    """The console script (pyproject) and `python -m jax_refine` call `command`: `main`, with
    the imports' objects frozen before it and the run's after it (exit skips walking them)."""
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["jax-refine"] == "jax_refine.cli:command"
    assert "command()" in (REPO / "jax_refine" / "__main__.py").read_text()
    calls = []
    monkeypatch.setattr(cli.gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(cli, "main", lambda argv: calls.append(("main", argv)) or 7)
    assert cli.command(["inpaint"]) == 7
    assert calls == ["freeze", ("main", ["inpaint"]), "freeze"]


@pytest.mark.slow
def test_report_and_early_stop(tmp_path, tiny_checkpoint, pairs, capsys):
    image, mask, out = saved_photo(tmp_path, pairs)
    # early stop 1.0 with a window of 1: every iteration "improves by less than 100 %", so the
    # refined scale stops at its first check, after 2 forward passes
    assert run("inpaint", tmp_path / "photo.png", tmp_path / "photo_mask.png", "-o", out, "--min-side", 32,
               "--n-iters", 5, "--early-stop", 1.0, "--early-stop-window", 1, "--report",
               *inpaint_args(tiny_checkpoint)) == 0
    text = capsys.readouterr().out
    assert f"{out}: refined at 80x64, 2 scale(s)" in text
    assert "scale 1: 40x32" in text and "plain forward pass" in text
    assert "scale 2: 80x64" in text and "2 iterations, loss " in text
    assert_known_pixels_kept(out, image, mask)
    assert run("inpaint", tmp_path / "photo.png", tmp_path / "photo_mask.png", "-o", tmp_path / "x.png",
               "--early-stop", -1, *inpaint_args(tiny_checkpoint)) == cli.EXIT_USAGE
    assert "--early-stop must be None or a number >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_adaptive_scale_schedule_option(tmp_path, tiny_checkpoint, pairs, capsys):
    image, mask, out = saved_photo(tmp_path, pairs)
    # 80x64 with min side 24: two scales; halving would make the coarse one 40x32
    assert run("inpaint", tmp_path / "photo.png", tmp_path / "photo_mask.png", "-o", out, "--min-side", 24,
               "--n-iters", 2, "--scale-schedule", "adaptive", "--report", *inpaint_args(tiny_checkpoint)) == 0
    text = capsys.readouterr().out
    assert "scale 1: 30x24" in text and "scale 2: 80x64" in text
    assert_known_pixels_kept(out, image, mask)
    assert run("inpaint", tmp_path / "photo.png", tmp_path / "photo_mask.png", "-o", tmp_path / "x.png",
               "--scale-schedule", "octave", *inpaint_args(tiny_checkpoint)) == cli.EXIT_USAGE
    assert "invalid choice: 'octave'" in capsys.readouterr().err


def test_crop_margin_option(tmp_path, tiny_checkpoint, pairs, capsys):
    image, mask, out = saved_photo(tmp_path, pairs)
    assert run("inpaint", tmp_path / "photo.png", tmp_path / "photo_mask.png", "-o", out, "--no-refine",
               "--crop-margin", 1000, *inpaint_args(tiny_checkpoint)) == 0
    whole = jax_refine.inpaint(image, mask, str(tiny_checkpoint), method="plain")
    np.testing.assert_array_equal(pixels(out), np.asarray(whole))  # the crop is the whole image
    assert run("inpaint", tmp_path / "photo.png", tmp_path / "photo_mask.png", "-o", tmp_path / "x.png",
               "--crop-margin", -5, *inpaint_args(tiny_checkpoint)) == cli.EXIT_USAGE
    assert "--crop-margin must be >= 0, got -5" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_estimates_and_writes_nothing(tmp_path, tiny_checkpoint, pairs, capsys):
    image, mask, out = saved_photo(tmp_path, pairs)
    assert run("inpaint", tmp_path / "photo.png", tmp_path / "photo_mask.png", "-o", out, "--dry-run",
               "--min-side", 32, *inpaint_args(tiny_checkpoint)) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'photo.png'}: 80x64: ") and " GiB peak on cpu" in line
    assert not out.exists() and not leftovers(tmp_path)


def test_report_plot_needs_matplotlib(tmp_path, tiny_checkpoint, pairs, capsys, monkeypatch):
    image, mask = pairs["coffee"]
    image.save(tmp_path / "photo.png")
    mask.save(tmp_path / "photo_mask.png")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert run("inpaint", tmp_path / "photo.png", tmp_path / "photo_mask.png", "-o", tmp_path / "out.png",
               "--report-plot", *inpaint_args(tiny_checkpoint)) == cli.EXIT_USAGE
    assert "--report-plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


@pytest.mark.slow
def test_report_plot_is_written_beside_the_output(tmp_path, tiny_checkpoint, pairs):
    pytest.importorskip("matplotlib")  # a test dependency; optional for users
    image, mask = pairs["coffee"]
    image.save(tmp_path / "photo.png")
    mask.save(tmp_path / "photo_mask.png")
    assert run("inpaint", tmp_path / "photo.png", tmp_path / "photo_mask.png", "-o", tmp_path / "out.png",
               "--min-side", 32, "--n-iters", 3, "--report-plot", "-q", *inpaint_args(tiny_checkpoint)) == 0
    with Image.open(tmp_path / "out.png.report.png") as plot:
        assert plot.format == "PNG" and plot.width > 200
    assert not leftovers(tmp_path)


@pytest.mark.slow
def test_unset_options_take_the_models_recommended_settings(tmp_path, tiny_model, pairs, capsys):
    import dataclasses

    from flax import nnx

    from jax_refine.checkpoint import model_from_flat

    image, mask, out = saved_photo(tmp_path, pairs)
    flat = {path: v[...] for path, v in nnx.to_flat_state(nnx.state(tiny_model))}
    config = dataclasses.replace(tiny_model.config, refine_defaults={"min_side": 32, "n_iters": 2})
    checkpoint = jax_refine.save(model_from_flat(flat, config), tmp_path / "recommending")
    photo = (tmp_path / "photo.png", tmp_path / "photo_mask.png")
    assert run("inpaint", *photo, "-o", out, "--report", "--model", checkpoint) == 0
    assert "2 scale(s)" in capsys.readouterr().out  # min_side 32 from the model
    assert run("inpaint", *photo, "-o", tmp_path / "b.png", "--report", "--min-side", 512, "--model", checkpoint) == 0
    assert "1 scale(s)" in capsys.readouterr().out  # the option wins
    assert_known_pixels_kept(out, image, mask)
