"""Training: schedule, deterministic data order, and a tiny end-to-end run with resume and export."""

import json

import numpy as np
import pytest
from PIL import Image

from jax_refine import train as train_lib


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
                       "version": "0", "license": "CC0"})
    (root / "manifest.json").write_text(json.dumps({"photos": photos}))
    return root


TINY = ["--ngf", "8", "--n-blocks", "1", "--crop", "32", "--batch", "2"]


def test_learning_rate_schedule():
    cfg = train_lib.TrainConfig(lr=1e-3, warmup=0.1)
    assert train_lib.learning_rate(cfg, 0.0) == pytest.approx(1e-5)
    assert train_lib.learning_rate(cfg, 0.1) == pytest.approx(1e-3)
    assert train_lib.learning_rate(cfg, 0.55) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert train_lib.learning_rate(cfg, 1.0) == pytest.approx(1e-5)
    assert train_lib.learning_rate(cfg, 2.0) == pytest.approx(1e-5)


def test_batches_depend_only_on_seed_and_index(data_dir):
    manifest = train_lib.read_manifest(data_dir)
    photos = train_lib.load_photos(data_dir, manifest, "train")
    cfg = train_lib.TrainConfig(crop=32, batch=3, seed=5)
    a = train_lib.Batches(photos, cfg, start=4)
    b = train_lib.Batches(photos, cfg, start=0)
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


def test_train_resume_export(data_dir, tmp_path):
    import jax_refine

    out = tmp_path / "run"
    common = ["--out", str(out), "--log-every", "1", "--no-xla-cache"]
    assert train_lib.main(common + TINY + ["--data", str(data_dir), "--steps", "3", "--minutes", "5"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "checkpoint"] == [3]
    assert [p.name for p in train_lib.checkpoints(out)] == ["ckpt-00000003"]

    # resume: settings come from config.json; a conflicting one is refused
    with pytest.raises(SystemExit, match="--batch 4"):
        train_lib.main(common + ["--resume", "--batch", "4", "--minutes", "5"])
    config = json.loads((out / "config.json").read_text())
    config["steps"] = 5  # extend the step schedule of this run
    (out / "config.json").write_text(json.dumps(config))
    assert train_lib.main(common + ["--resume", "--minutes", "5"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    starts = [r for r in records if r["event"] == "start"]
    assert [s["step"] for s in starts] == [0, 3]
    steps = [r["step"] for r in records if r["event"] == "train"]  # compiling steps are not logged
    assert steps == sorted(set(steps)) and steps[-1] == 5
    assert all(np.isfinite(r["total"]) for r in records if r["event"] == "train")
    assert [p.name for p in train_lib.checkpoints(out)] == ["ckpt-00000003", "ckpt-00000005"]

    model = jax_refine.load(out / "export")
    assert model.config.n_blocks == 1 and model.config.ngf == 8
    meta = json.loads((out / "export" / "jax_refine.json").read_text())
    assert meta["source"]["step"] == 5 and meta["source"]["heldout_photos"] == ["synthetic/p3"]
    image = np.asarray(Image.open(data_dir / "p3.png"))
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[20:40, 30:60] = 255
    result = jax_refine.inpaint(image, mask, out / "export", refine=False)
    assert result.shape == image.shape and result.dtype == np.uint8
    np.testing.assert_array_equal(result[mask == 0], image[mask == 0])
