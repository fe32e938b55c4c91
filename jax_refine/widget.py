"""Draw a hole mask over a photo in a notebook: Colab, Jupyter, JupyterLab, VS Code (anywidget).

    from jax_refine.widget import MaskWidget
    drawer = MaskWidget(image)   # the photo scaled to fit, a brush: size, eraser, Undo, Clear, Done
    drawer                       # a cell's last line shows it: draw, press Done; in a later cell
    hole = drawer.mask           # bool (H, W) at the photo's full resolution, True = hole
    result = jax_refine.inpaint(image, hole, model)

The front end (widget.js) keeps each stroke in the photo's pixel coordinates: a polyline
[x0, y0, x1, y1, ...] with the origin at the top-left corner of the top-left pixel, a brush
diameter in photo pixels, and whether it erases. `strokes_to_mask` draws them, in order, at full
resolution; only a small JPEG preview of the photo travels to the browser.

Needs anywidget: `pip install "jax-refine[notebook]"` (or `pip install anywidget`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

try:
    import anywidget
    import traitlets
except ImportError:
    raise ImportError('jax_refine.widget needs anywidget: pip install "jax-refine[notebook]" '
                      "(or pip install anywidget)") from None

from .images import source_of


def strokes_to_mask(strokes: list[dict], height: int, width: int) -> np.ndarray:
    """The hole drawn by `strokes` (the front end's list, see the module docstring): bool
    (height, width), True = hole. A pixel is covered by a stroke when its centre lies within
    half the brush size of the stroke's polyline, as the browser's canvas paints it. Strokes
    are drawn in order; an erasing stroke clears.

    Drawn here rather than with PIL's ImageDraw, which rounds coordinates to whole pixels and
    draws discs one pixel wider than asked: thin strokes would come out shifted and fat.
    """
    hole = np.zeros((height, width), bool)
    for i, stroke in enumerate(strokes):
        try:
            points = np.asarray(stroke["points"], np.float64).reshape(-1, 2)
            r, erase = float(stroke["size"]) / 2, bool(stroke.get("erase", False))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"stroke {i} is not {{'points': [x0, y0, ...], 'size': diameter, 'erase': bool}}: "
                             f"{e!r}") from None
        if not (len(points) and np.all(np.isfinite(points)) and np.isfinite(r) and r > 0):
            raise ValueError(f"stroke {i} needs at least one finite point and a positive size, got {len(points)} "
                             f"points, size {2 * r}")
        for a, b in zip(points, points[1:] if len(points) > 1 else points):  # one segment per pair; a dab: (a, a)
            (left, top), (right, bottom) = np.minimum(a, b) - r, np.maximum(a, b) + r
            x0, x1 = max(0, int(np.floor(left))), min(width, int(np.ceil(right)))
            y0, y1 = max(0, int(np.floor(top))), min(height, int(np.ceil(bottom)))
            if x0 >= x1 or y0 >= y1:
                continue
            y, x = np.ogrid[y0:y1, x0:x1]
            dx, dy = (x + 0.5 - a[0]), (y + 0.5 - a[1])  # pixel centres relative to a
            d = b - a
            t = np.clip((dx * d[0] + dy * d[1]) / max(d @ d, 1e-12), 0, 1)  # nearest point on the segment
            inside = (dx - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 <= r * r
            window = hole[y0:y1, x0:x1]
            window[inside] = not erase
    return hole


class MaskWidget(anywidget.AnyWidget):
    """A brush over `image` (PIL image or array, as `jax_refine.inpaint` takes it), shown at
    most `display_width` screen pixels wide; `brush` is the initial brush diameter on screen."""

    _esm = Path(__file__).with_name("widget.js")
    photo = traitlets.Bytes().tag(sync=True)  # JPEG of the preview
    preview_width = traitlets.Int().tag(sync=True)
    preview_height = traitlets.Int().tag(sync=True)
    width = traitlets.Int().tag(sync=True)  # the photo's full resolution
    height = traitlets.Int().tag(sync=True)
    brush = traitlets.Int(30).tag(sync=True)
    strokes = traitlets.List().tag(sync=True)
    done = traitlets.Bool(False).tag(sync=True)  # set by the Done button; drawing again clears it

    def __init__(self, image, *, display_width: int = 800, brush: int = 30):
        for name, value in (("display_width", display_width), ("brush", brush)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive number of screen pixels, got {value!r}")
        rgb = source_of(image).rgb  # upright (EXIF), float (H, W, 3) in [0, 1]
        height, width = rgb.shape[:2]
        scale = min(1.0, display_width / width)
        preview_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        preview = Image.fromarray(np.rint(rgb * 255).astype(np.uint8)).resize(preview_size, Image.Resampling.LANCZOS)
        jpeg = io.BytesIO()
        preview.save(jpeg, "JPEG", quality=90)
        super().__init__(photo=jpeg.getvalue(), preview_width=preview_size[0], preview_height=preview_size[1],
                         width=width, height=height, brush=brush)

    @property
    def mask(self) -> np.ndarray:
        """The hole drawn so far: bool (height, width) at the photo's full resolution."""
        return strokes_to_mask(self.strokes, self.height, self.width)
