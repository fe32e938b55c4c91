"""training/: the photo sources and split, augmentation, data order, and a tiny run with resume,
export and --init."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from training import data, sources
from training import main as train_main
from training.steps import TrainConfig


def test_parse_debian_copyright():
    text = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: X

Files: nature/A.jpg
       nature/B.jpg
Copyright: 2008, Someone <a@b.c>
           2009, Other
License: GPL-2+

License: GPL-2+
 This package is free software;
 .
 more text
"""
    stanzas = sources.parse_debian_copyright(text)
    assert len(stanzas) == 3
    assert stanzas[1]["Files"] == "nature/A.jpg nature/B.jpg"
    assert stanzas[1]["Copyright"] == "2008, Someone <a@b.c>\n2009, Other"
    assert stanzas[2]["License"].startswith("GPL-2+\nThis package")


def test_the_committed_manifest_records_every_photo_and_a_held_out_split():
    manifest = json.loads(sources.MANIFEST.read_text())
    photos = manifest["photos"]
    names = [p["name"] for p in photos]
    expected = [sources.photo_name(pkg, photo) for pkg in sources.PACKAGES for photo in pkg.photos]
    assert names == expected and len(set(p["sha256"] for p in photos)) == len(photos)
    for p in photos:
        assert p["license"] and p["copyright"] and p["version"] and len(p["sha256"]) == 64
    held = [p for p in photos if p["split"] == "heldout"]
    assert [p["name"] for p in held] == [n for n in expected if n in sources.HELDOUT]
    assert len(held) >= 8 and len({p["source"] for p in held}) >= 3
    assert all(max(p["width"], p["height"]) >= 1600 for p in held)  # evaluated at 1024 and 2048 px
    assert sum(p["split"] == "train" for p in photos) >= 30


def test_hue_rotation_keeps_grey_and_turns_colours():
    grey = np.full(3, 0.4, np.float32)
    np.testing.assert_allclose(data.hue_rotation(1.3) @ grey, grey, atol=1e-6)
    red = np.array([1.0, 0, 0], np.float32)
    np.testing.assert_allclose(data.hue_rotation(2 * math.pi / 3) @ red, [0, 1, 0], atol=1e-6)


def test_colour_augmentation_stays_in_range_and_varies():
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).uniform(size=(16, 16, 3)).astype(np.float32)
    outs = [data.augment_colour(rng, image) for _ in range(20)]
    assert all(o.dtype == np.float32 and 0 <= o.min() and o.max() <= 1 for o in outs)
    means = np.array([o.mean(axis=(0, 1)) for o in outs])
    assert means.std(axis=0).min() > 0.02  # every channel's mean moves


def test_window_masks_have_inference_pixel_sizes():
    """A medium mask drawn for a 2048-px image (scale 3.2) seen through a 64-px window has far
    wider strokes than one drawn for the window itself: more of its hole lies 3 px or more
    from the nearest known pixel (measured 0.89 vs 0.30)."""
    rng = np.random.default_rng(0)

    def interior_share(masks):
        windows = [np.lib.stride_tricks.sliding_window_view(np.pad(m, 3, mode="edge"), (7, 7)).all(axis=(2, 3)) for m in masks]
        return sum(w.sum() for w in windows) / max(sum(m.sum() for m in masks), 1)

    big = [data.window_mask(rng, 64, "medium", 3.2) for _ in range(20)]
    small = [data.window_mask(rng, 64, "medium", 64 / 512) for _ in range(20)]
    assert all(m.shape == (64, 64) and m.dtype == bool for m in big + small)
    assert np.mean([data.HOLE_SHARE[0] <= m.mean() <= data.HOLE_SHARE[1] for m in big]) >= 0.8
    assert interior_share(big) > interior_share(small) + 0.4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data/ folder with a manifest and synthetic photos (3 train, 1 held out)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    photos = []
    for i, (w, h, split) in enumerate([(96, 64, "train"), (80, 80, "train"), (64, 120, "train"), (90, 70, "heldout")]):
        y, x = np.mgrid[0:h, 0:w] / max(w, h)
        img = np.stack([x, y, 0.5 + 0.5 * np.sin(8 * (x + y) + i)], -1) + 0.05 * rng.normal(size=(h, w, 3))
        path = root / f"p{i}.png"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
        photos.append({"name": f"synthetic/p{i}", "path": path.name, "split": split, "source": "synthetic",
                       "version": "0", "license": "CC0", "sha256": f"{i:064d}"})
    manifest = {"format": sources.MANIFEST_FORMAT[0], "format_version": sources.MANIFEST_FORMAT[1], "photos": photos}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_batches_depend_only_on_seed_and_index(data_dir):
    photos = data.load_photos(data_dir, sources.read_manifest(data_dir), "train")
    a = data.Batches(photos, crop=32, batch=3, seed=5, start=4)
    b = data.Batches(photos, crop=32, batch=3, seed=5, start=0)
    try:
        index, (images, masks), _ = a.next()
        assert index == 4 and images.shape == (3, 32, 32, 3) and masks.shape == (3, 32, 32, 1)
        assert 0 <= images.min() and images.max() <= 1 and set(np.unique(masks)) <= {0.0, 1.0}
        for _ in range(5):
            index, (images_b, masks_b), _ = b.next()
        assert index == 4
        np.testing.assert_array_equal(images, images_b)
        np.testing.assert_array_equal(masks, masks_b)
        assert not np.array_equal(a.make(5)[0], images)
    finally:
        a.close()
        b.close()


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1e-3, warmup=0.1)
    assert train_main.learning_rate(cfg, 0.0) == pytest.approx(1e-5)
    assert train_main.learning_rate(cfg, 0.1) == pytest.approx(1e-3)
    assert train_main.learning_rate(cfg, 0.55) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert train_main.learning_rate(cfg, 2.0) == pytest.approx(1e-5)


TINY = ["--ngf", "8", "--n-blocks", "1", "--crop", "32", "--batch", "2"]


@pytest.mark.slow
def test_train_resume_export_and_init(data_dir, tmp_path):
    import jax_refine
    from training import checkpoints

    out = tmp_path / "run"
    common = ["--out", str(out), "--log-every", "1", "--no-xla-cache", "--data", str(data_dir), "--no-fetch"]
    assert train_main.main(common + TINY + ["--steps", "3", "--minutes", "5"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "checkpoint"] == [3]
    prior, first_val = (next(r for r in records if r["event"] == e) for e in ("prior", "val"))
    scores = [k for k in prior if k not in ("event", "time")]
    # a new residual model starts close to the prior (its head at RESIDUAL_HEAD_SCALE), not at it
    assert all(abs(first_val[k] - prior[k]) < 1.0 for k in scores) and any(first_val[k] != prior[k] for k in scores)

    with pytest.raises(SystemExit, match="--batch 4"):  # settings come from config.json
        train_main.main(common + ["--resume", "--batch", "4", "--minutes", "5"])
    config = json.loads((out / "config.json").read_text())
    config["steps"] = 5  # extend the step schedule of this run
    (out / "config.json").write_text(json.dumps(config))
    assert train_main.main(common + ["--resume", "--minutes", "5"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "start"] == [0, 3]
    steps = [r["step"] for r in records if r["event"] == "train"]  # compiling steps are not logged
    assert steps == sorted(set(steps)) and steps[-1] == 5
    assert [p.name for p in checkpoints.found(out)] == ["ckpt-00000003", "ckpt-00000005"]

    model = jax_refine.load(out / "export")
    assert (model.config.ngf, model.config.n_blocks, model.config.output) == (8, 1, "residual")
    meta = json.loads((out / "export" / "jax_refine.json").read_text())
    assert meta["source"]["step"] == 5 and meta["source"]["heldout_photos"] == ["synthetic/p3"]
    image = np.asarray(Image.open(data_dir / "p3.png"))
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[20:40, 30:60] = 255
    result = jax_refine.inpaint(image, mask, out / "export", method="plain")
    np.testing.assert_array_equal(result[mask == 0], image[mask == 0])

    # a new run from the exported weights continues the schedule with a fresh optimiser
    leg = tmp_path / "leg2"
    leg_args = ["--out", str(leg), "--log-every", "1", "--no-xla-cache", "--data", str(data_dir), "--no-fetch"]
    assert train_main.main(leg_args + TINY + ["--steps", "7", "--minutes", "5", "--init", str(out / "export")]) == 0
    records = [json.loads(line) for line in (leg / "log.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["event"] == "start")
    assert start["step"] == 5 and start["init"] == str(out / "export")
    lrs = [r["lr"] for r in records if r["event"] == "train"]
    assert lrs and lrs[0] < 0.05 * train_main.learning_rate(TrainConfig(steps=7), 6 / 7)  # warming up again
    with pytest.raises(SystemExit, match="is not this run's"):
        train_main.main(["--out", str(tmp_path / "other"), "--data", str(data_dir), "--no-fetch", "--ngf", "16",
                         "--n-blocks", "1", "--steps", "1", "--init", str(out / "export")])
