"""The mask widget in a real browser: headless Chromium (driven by selenium) loads the widget's
front end (the ES module MaskWidget sends) in a page that stands in for the notebook's widget
manager, draws with real mouse events, and the state it syncs is handed to a real MaskWidget as
the notebook's comm would (`set_state`): the mask that widget gives must be the strokes drawn,
at the photo's full resolution after the display scaling.

Needs Chromium and its driver (Debian: apt-get install chromium chromium-driver); skipped without.
"""

import json
import shutil

import numpy as np
import pytest

from file_server import FileServer

pytest.importorskip("anywidget", reason='needs anywidget: pip install -e ".[test]"')
webdriver = pytest.importorskip("selenium.webdriver", reason='needs selenium: pip install -e ".[test]"')
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Chromium and chromedriver: apt-get install chromium chromium-driver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1000,800"]

# A stand-in for the widget manager: the model anywidget gives `render` (get, set, on, off,
# save_changes); each save_changes records what the Python side would receive.
PAGE = """<!doctype html><meta charset="utf-8"><body style="margin:0"><div id="root"></div>
<script type="module">
import widget from "./widget.js";
const state = await (await fetch("state.json")).json();
state.photo = new DataView(await (await fetch("photo.jpg")).arrayBuffer());
const handlers = {};
window.synced = [];
const model = {
  get: (key) => state[key],
  set: (key, value) => { state[key] = value; for (const f of handlers["change:" + key] || []) f(); },
  on: (event, f) => { (handlers[event] ||= []).push(f); },
  off: (event, f) => { handlers[event] = (handlers[event] || []).filter((g) => g !== f); },
  save_changes: () => { window.synced.push(JSON.parse(JSON.stringify({ strokes: state.strokes, done: state.done }))); },
};
widget.render({ model, el: document.getElementById("root") });
window.rendered = true;
</script>"""

H, W, SHOWN = 1000, 1600, 720  # the photo's size, and the width it is shown at (scale 20/9)


def capsules(strokes, height, width):
    """The expected hole, brute force over every pixel: a pixel centre within size / 2 of a
    stroke's polyline (a point: of the point) is covered; strokes in order, erasers clear."""
    y, x = np.mgrid[0:height, 0:width] + 0.5
    hole = np.zeros((height, width), bool)
    for points, size, erase in strokes:
        p = np.asarray(points, np.float64)
        covered = np.zeros_like(hole)
        for a, b in zip(p, p[1:]) if len(p) > 1 else [(p[0], p[0])]:
            d = b - a
            t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / max(d @ d, 1e-12), 0, 1)
            covered |= (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 <= (size / 2) ** 2
        hole = hole & ~covered if erase else hole | covered
    return hole


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_drawn_strokes_reach_python_at_full_resolution(browser):
    from jax_refine.widget import MaskWidget

    photo = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    widget = MaskWidget(photo, display_width=SHOWN)
    state = widget.get_state()
    served = {"index.html": PAGE.encode(), "widget.js": state["_esm"].encode(), "photo.jpg": state.pop("photo"),
              "state.json": json.dumps(state).encode()}
    server = FileServer(served)
    try:
        browser.get(server.url("index.html"))
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.execute_script("return window.rendered === true"))
        canvas = browser.find_element("css selector", "canvas")
        assert (canvas.rect["width"], canvas.rect["height"]) == (SHOWN, SHOWN * H / W)
        buttons = {b.text: b for b in browser.find_elements("css selector", "button")}
        checks = 0

        def stroke(points, size, erase=False):
            """Drags the mouse through `points` (screen pixels from the canvas' top-left) with
            the brush `size` screen pixels wide, and waits for the widget to sync."""
            nonlocal checks
            browser.execute_script("const s = document.querySelector('input[type=range]'); s.value = arguments[0];"
                                   "s.dispatchEvent(new Event('input'));", size)
            eraser = browser.find_element("css selector", "input[type=checkbox]")
            if eraser.is_selected() != erase:
                eraser.click()
            chain = ActionChains(browser, duration=0)
            chain.move_to_element_with_offset(canvas, points[0][0] - SHOWN // 2, points[0][1] - SHOWN * H // W // 2)
            chain.click_and_hold()
            for (x0, y0), (x1, y1) in zip(points, points[1:]):
                for k in range(1, 5):  # intermediate moves, as a hand drags
                    chain.move_to_element_with_offset(canvas, round(x0 + (x1 - x0) * k / 4) - SHOWN // 2,
                                                      round(y0 + (y1 - y0) * k / 4) - SHOWN * H // W // 2)
            chain.release().perform()
            checks += 1
            wait.until(lambda d: d.execute_script("return window.synced.length") == checks)

        drawn = [([(60, 80), (400, 80), (400, 200)], 20, False),
                 ([(100, 300), (600, 380)], 50, False),
                 ([(500, 60), (650, 150)], 50, False),  # undone below
                 ([(300, 250), (300, 420)], 20, True),  # erases across the second stroke
                 ([(650, 400)], 50, False)]  # a single click: a dab
        for points, size, erase in drawn[:3]:
            stroke(points, size, erase)
        buttons["Undo"].click()
        checks += 1
        wait.until(lambda d: d.execute_script("return window.synced.length") == checks)
        for points, size, erase in drawn[3:]:
            stroke(points, size, erase)
        buttons["Done"].click()
        wait.until(lambda d: d.execute_script("return window.synced.length") == checks + 1)
        received = browser.execute_script("return window.synced.at(-1)")
    finally:
        server.close()

    widget.set_state(received)  # what the notebook's comm does with the front end's update
    assert widget.done and len(widget.strokes) == 4
    scale = W / SHOWN
    expected = capsules([(np.asarray(p) * scale, size * scale, erase) for p, size, erase in drawn[:2] + drawn[3:]],
                        H, W)
    mask = widget.mask
    assert mask.shape == (H, W) and mask.dtype == bool
    iou = (mask & expected).sum() / (mask | expected).sum()
    assert iou >= 0.98, iou
    assert not mask[int(100 * scale), int(575 * scale)]  # the undone stroke left nothing
