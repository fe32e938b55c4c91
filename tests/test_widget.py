"""jax_refine.widget without a browser: how strokes become the full-resolution mask, the preview
the front end gets, and that `import jax_refine` leaves anywidget alone (the browser test:
test_widget_browser.py)."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("anywidget")
from jax_refine.widget import MaskWidget, strokes_to_mask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_strokes_cover_the_pixels_whose_centres_are_within_half_the_brush():
    # a horizontal stroke from x=2 to x=8 along y=5 with a 4 px brush: rows 3..6 between the
    # ends, plus round caps (pixel centres within 2 of (2, 5) or (8, 5))
    hole = strokes_to_mask([{"points": [2, 5, 8, 5], "size": 4}], 10, 12)
    y, x = np.mgrid[0:10, 0:12] + 0.5
    expected = (np.abs(y - 5) <= 2) & (((x >= 2) & (x <= 8)) | ((x - 2) ** 2 + (y - 5) ** 2 <= 4)
                                       | ((x - 8) ** 2 + (y - 5) ** 2 <= 4))
    np.testing.assert_array_equal(hole, expected)
    assert hole[3:7, 2:8].all() and not hole[2].any() and not hole[7].any()


def test_a_dab_is_a_disc_and_erasing_clears_in_order():
    dab = strokes_to_mask([{"points": [50, 40], "size": 30}], 80, 100)
    assert dab.sum() == pytest.approx(np.pi * 15 ** 2, rel=0.02)
    assert dab[40, 50] and not dab[40, 66]
    erased = strokes_to_mask([{"points": [50, 40], "size": 30}, {"points": [50, 40], "size": 10, "erase": True},
                              {"points": [50, 40], "size": 4}], 80, 100)
    assert erased[40, 50] and not erased[40, 53] and erased[40, 58]  # drawn, erased, drawn again
    assert strokes_to_mask([{"points": [50, 40], "size": 10, "erase": True}], 80, 100).sum() == 0


def test_strokes_beyond_the_photo_are_clipped():
    hole = strokes_to_mask([{"points": [-50, 5, 150, 5], "size": 2}, {"points": [500, 500], "size": 10}], 10, 100)
    np.testing.assert_array_equal(np.nonzero(hole.any(axis=1))[0], [4, 5])
    assert hole[4:6].all()


@pytest.mark.parametrize("stroke, problem", [({"size": 4}, "is not"), ({"points": [1, 2, 3], "size": 4}, "is not"),
                                             ({"points": [], "size": 4}, "at least one"),
                                             ({"points": [1, 2], "size": 0}, "positive size"),
                                             ({"points": [1, float("nan")], "size": 4}, "finite")])
def test_malformed_strokes_are_named(stroke, problem):
    with pytest.raises(ValueError, match=f"stroke 1 .*{problem}"):
        strokes_to_mask([{"points": [1, 1], "size": 2}, stroke], 10, 10)


def test_the_front_end_gets_a_scaled_preview_of_the_upright_photo_and_the_full_size():
    photo = Image.new("RGB", (1200, 300), "white")
    exif = photo.getexif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: 300 x 1200
    data = io.BytesIO()
    photo.save(data, "JPEG", exif=exif)
    widget = MaskWidget(Image.open(data), display_width=150)
    assert (widget.width, widget.height) == (300, 1200)
    assert (widget.preview_width, widget.preview_height) == (150, 600)
    assert Image.open(io.BytesIO(widget.photo)).size == (150, 600)
    assert widget.mask.shape == (1200, 300) and not widget.mask.any() and not widget.done
    small = MaskWidget(np.zeros((20, 30, 3), np.uint8))  # never enlarged
    assert (small.preview_width, small.preview_height) == (30, 20)
    with pytest.raises(ValueError, match="display_width must be a positive"):
        MaskWidget(np.zeros((20, 30, 3), np.uint8), display_width=0)


def test_import_jax_refine_leaves_anywidget_alone():
    code = "import sys, jax_refine; print('anywidget' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
