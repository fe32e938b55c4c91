// Front end of jax_refine.widget.MaskWidget (an anywidget ES module): a brush over the photo.
//
// The photo is shown scaled to fit; every stroke is kept in the photo's own pixel coordinates
// ({points: [x0, y0, x1, y1, ...], size: diameter, erase: bool}, origin at the top-left corner
// of the top-left pixel), so the Python side draws the mask at full resolution whatever size
// the photo was shown at. Synced state: photo (JPEG bytes of the preview), width and height
// (the full-resolution size), brush (initial size in screen pixels), strokes, done.

function button(label, onclick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.onclick = onclick;
  return b;
}

function paint(ctx, strokes, width) {
  const scale = ctx.canvas.width / width;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  for (const { points: p, size, erase } of strokes) {
    ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
    ctx.lineWidth = size;
    ctx.beginPath();
    ctx.arc(p[0], p[1], size / 2, 0, 2 * Math.PI); // a dab: a stroke may be a single point
    ctx.fill();
    ctx.beginPath();
    ctx.moveTo(p[0], p[1]);
    for (let i = 2; i < p.length; i += 2) ctx.lineTo(p[i], p[i + 1]);
    ctx.stroke();
  }
}

function render({ model, el }) {
  const width = model.get("width"), height = model.get("height");
  let strokes = [...model.get("strokes")];
  let current = null; // the stroke being drawn

  const size = Object.assign(document.createElement("input"), {
    type: "range", min: 2, max: 200, value: model.get("brush"), title: "brush size (screen pixels)",
  });
  const sizeLabel = document.createElement("span");
  const eraser = Object.assign(document.createElement("input"), { type: "checkbox", title: "eraser" });
  const status = document.createElement("span");
  const showSize = () => { sizeLabel.textContent = `brush ${size.value} px `; };
  size.oninput = showSize;
  showSize();

  const photo = document.createElement("img");
  const url = URL.createObjectURL(new Blob([model.get("photo")], { type: "image/jpeg" }));
  Object.assign(photo, { src: url, draggable: false });
  photo.style.cssText = "display:block;width:100%;user-select:none";
  const canvas = document.createElement("canvas");
  canvas.width = model.get("preview_width");
  canvas.height = model.get("preview_height");
  canvas.style.cssText = "position:absolute;inset:0;width:100%;height:100%;opacity:0.5;cursor:crosshair;touch-action:none";
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = ctx.strokeStyle = "red";
  ctx.lineCap = ctx.lineJoin = "round";
  const stage = document.createElement("div");
  stage.style.cssText = `position:relative;width:${canvas.width}px;max-width:100%;aspect-ratio:${canvas.width}/${canvas.height}`;
  stage.append(photo, canvas);

  const redraw = () => {
    paint(ctx, strokes, width);
    status.textContent = ` ${strokes.length} stroke${strokes.length === 1 ? "" : "s"}`;
  };
  const sync = (done = false) => {
    model.set("strokes", [...strokes]);
    model.set("done", done);
    model.save_changes();
  };
  const at = (e) => { // a pointer position in the photo's pixel coordinates
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * width / r.width, (e.clientY - r.top) * height / r.height];
  };
  const scale = () => width / canvas.getBoundingClientRect().width; // photo pixels per screen pixel

  canvas.onpointerdown = (e) => {
    if (e.button !== 0) return;
    canvas.setPointerCapture(e.pointerId);
    current = { points: at(e), size: Number(size.value) * scale(), erase: eraser.checked };
    strokes.push(current);
    redraw();
  };
  canvas.onpointermove = (e) => {
    if (!current) return;
    const moves = e.getCoalescedEvents?.() ?? []; // every position since the last event, not just the newest
    for (const m of moves.length ? moves : [e]) current.points.push(...at(m));
    redraw();
  };
  canvas.onpointerup = canvas.onpointercancel = () => {
    if (!current) return;
    current = null;
    sync();
  };

  const onChange = () => { if (!current) { strokes = [...model.get("strokes")]; redraw(); } };
  model.on("change:strokes", onChange);

  const tools = document.createElement("div");
  const eraserLabel = document.createElement("label");
  eraserLabel.append(eraser, " eraser ");
  tools.append(
    sizeLabel, size, eraserLabel,
    button("Undo", () => { strokes.pop(); redraw(); sync(); }),
    button("Clear", () => { strokes = []; redraw(); sync(); }),
    button("Done", () => { sync(true); status.textContent = " done: run the next cell"; }),
    status,
  );
  el.append(tools, stage);
  redraw();
  return () => {
    model.off("change:strokes", onChange);
    URL.revokeObjectURL(url);
  };
}

export default { render };
