"""Quality study: does multi-scale refinement beat plain prediction on real high-resolution photos?

    python -m training.sources                         # held-out photos -> data/
    pip install opencv-python-headless                     # method (d) only; benchmark-only
    python benchmarks/quality.py                           # all cases -> runs/quality, QUALITY.md
    python benchmarks/quality.py --sizes 1024 --photos Dune --kinds thick   # a subset

Cases: every held-out photo of data/manifest.json, resized (PIL Lanczos) to 1024 and 2048 px
on its long side, with one thin, one medium and one thick LaMa stroke mask each
(jax_refine.masks, seed fixed per photo/kind/size). Methods, all on uint8 RGB:

  default     jax_refine.inpaint(image, mask, model): the model's own recommended settings
              (`refine.model_defaults`), what a user gets without options
  plain       jax_refine.inpaint(method="plain"): one forward pass at full resolution
  down-up     downscale to short side --train-res (PIL Lanczos; a pixel is a hole if any
              part of it was), predict, upscale (PIL bicubic), composite with the known pixels
  refine      jax_refine.inpaint(method="refine"): the paper's refinement with the defaults
              (min_side 512, px_budget 1.8 MP; the fill is upscaled above the budget)
  refine-<R>  the same with min_side = --train-res, so the coarsest scale is near the
              resolution the model was trained at (more scales)
  refine[-<R>][-adaptive][-es<T>]  (options, with --methods only) the same with
              RefineConfig(scale_schedule="adaptive") and/or RefineConfig(early_stop=T);
              compared case by case with refine[-<R>] in a second table
  prior       the pull-push hole prior alone (jax_refine.prior), what a residual model starts from
  telea       OpenCV's cv2.inpaint(..., 3, cv2.INPAINT_TELEA), the classical baseline

Metrics on the hole pixels against the photo: PSNR (dB), colour cast (the mean absolute
difference, in uint8 levels averaged over R, G and B, between the fill's mean colour and the
photo's over the hole), SSIM (Wang et al. 2004, 11x11
Gaussian window sigma 1.5 on each RGB channel, the SSIM map averaged over the hole), and two
gradient statistics of the luminance as an offline perceptual proxy (no pretrained network can
be downloaded here): grad-W1, the Wasserstein-1 distance between the distributions of
gradient magnitude in the hole of the result and of the photo (0 = the same texture
statistics; blur and noise both raise it), and sharpness, the ratio of their means (1 = as
sharp as the photo, < 1 blurrier). Time per image excludes JAX compilation (reported
separately); peak RSS is the process's peak over all photos of one method and size, so it is
set by the largest photo.

Each (method, size) group runs in its own process. Results go to OUT/results.jsonl (a rerun
skips the cases already there), fills to OUT/fills/, the table and the figure to QUALITY.md
(between its markers) and OUT/crops.png (copied to docs/quality_crops.png).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIZES = (1024, 2048)
KINDS = ("thin", "medium", "thick")
BEGIN, END = "<!-- quality-table:begin -->", "<!-- quality-table:end -->"
OPTIONS_BEGIN, OPTIONS_END = "<!-- options-table:begin -->", "<!-- options-table:end -->"
ACCEPT_BEGIN, ACCEPT_END = "<!-- acceptance-table:begin -->", "<!-- acceptance-table:end -->"
OPTION_NAME = re.compile(r"(refine(?:-\d+)?)((?:-adaptive)?(?:-es[0-9.]+)?)")


def methods(train_res: int) -> list[str]:
    return ["default", "plain", "down-up", "refine", f"refine-{train_res}", "prior", "telea"]


# --------------------------------------------------------------------------------------
# Cases and metrics
# --------------------------------------------------------------------------------------


def heldout_photos(data: Path, names: list[str] | None) -> list[dict]:
    manifest = json.loads((data / "manifest.json").read_text())
    photos = [p for p in manifest["photos"] if p["split"] == "heldout"]
    if names:
        photos = [p for p in photos if p["name"].split("/")[-1] in names]
    return photos


def case_inputs(data: Path, photo: dict, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8 with long side `size`, hole (H, W) bool)."""
    from jax_refine.masks import random_mask

    img = Image.open(data / photo["path"]).convert("RGB")
    scale = size / max(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    seed = [int(photo["sha256"][:8], 16), size, KINDS.index(kind)]
    return np.asarray(img), random_mask(np.random.default_rng(seed), img.height, img.width, kind)


def luminance(x: np.ndarray) -> np.ndarray:
    return x[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def gradient_magnitude(gray: np.ndarray) -> np.ndarray:
    gy = np.zeros_like(gray)
    gx = np.zeros_like(gray)
    gy[:-1] = gray[1:] - gray[:-1]
    gx[:, :-1] = gray[:, 1:] - gray[:, :-1]
    return np.hypot(gx, gy)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two uint8 RGB images (mean over channels), range [-1, 1]."""
    from scipy.ndimage import gaussian_filter

    def blur(x):
        return gaussian_filter(x, sigma=(1.5, 1.5, 0), truncate=3.5, mode="reflect")

    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=-1)


def hole_psnr(result: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> float:
    """PSNR (dB) over the hole pixels of two uint8 RGB images."""
    diff = result[hole].astype(np.float64) - truth[hole].astype(np.float64)
    return float(10 * np.log10(255**2 / max(float(np.mean(diff**2)), 1e-10)))


def colour_cast(result: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> float:
    """Mean absolute difference (uint8 levels, averaged over R, G, B) between the mean colour of
    the fill and of the photo over the hole."""
    return float(np.mean(np.abs(result[hole].astype(np.float64).mean(0) - truth[hole].astype(np.float64).mean(0))))


def hole_metrics(result: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> dict:
    """PSNR, colour cast, SSIM, grad-W1 and sharpness over the hole pixels (uint8 RGB inputs)."""
    g_result = gradient_magnitude(luminance(result))[hole]
    g_truth = gradient_magnitude(luminance(truth))[hole]
    return dict(psnr=hole_psnr(result, truth, hole), colour_cast=colour_cast(result, truth, hole),
                ssim=float(ssim_map(result, truth)[hole].mean()),
                grad_w1=float(np.mean(np.abs(np.sort(g_result) - np.sort(g_truth)))),
                sharpness=float(g_result.mean() / max(g_truth.mean(), 1e-10)))


# --------------------------------------------------------------------------------------
# Methods (each: uint8 image, bool hole -> uint8 result)
# --------------------------------------------------------------------------------------


def down_up(image, hole, model, train_res):
    import jax_refine

    h, w = hole.shape
    scale = train_res / min(h, w)
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    small_image = np.asarray(Image.fromarray(image).resize(small, Image.Resampling.LANCZOS))
    small_hole = np.asarray(Image.fromarray(hole.astype(np.uint8) * 255).resize(small, Image.Resampling.BOX)) > 0
    fill = jax_refine.inpaint(small_image, small_hole, model, method="plain")
    up = np.asarray(Image.fromarray(fill).resize((w, h), Image.Resampling.BICUBIC))
    return np.where(hole[..., None], up, image)


def refine_config(name: str):
    """The RefineConfig of a method name 'refine[-MINSIDE][-adaptive][-esTOL]' (e.g.
    refine-256-es0.01), or None."""
    match = re.fullmatch(r"refine(?:-(\d+))?(-adaptive)?(?:-es([0-9.]+))?", name)
    if match is None:
        return None
    import jax_refine

    min_side, adaptive, tol = match.groups()
    return jax_refine.RefineConfig(min_side=int(min_side) if min_side else 512,
                                   scale_schedule="adaptive" if adaptive else "halving",
                                   early_stop=float(tol) if tol else None)


def run_method(name, image, hole, model, train_res) -> tuple[np.ndarray, dict]:
    """(result uint8, extra fields of the record: forward passes per scale for refinement)."""
    if name == "telea":
        import cv2

        bgr = np.ascontiguousarray(image[..., ::-1])
        return cv2.inpaint(bgr, hole.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)[..., ::-1], {}
    import jax_refine

    if name == "default":
        result, info = jax_refine.inpaint_with_info(image, hole, model)
        return result, dict(iterations=[s.iterations for s in info.scales])
    if name == "plain":
        return jax_refine.inpaint(image, hole, model, method="plain"), {}
    if name == "prior":
        import jax.numpy as jnp

        from jax_refine.prior import pull_push

        fill = pull_push(jnp.asarray(image[None], jnp.float32) / 255, jnp.asarray(hole[None, ..., None], jnp.float32))
        fill = np.clip(np.rint(np.asarray(fill)[0] * 255), 0, 255).astype(np.uint8)
        return np.where(hole[..., None], fill, image), {}
    if name == "down-up":
        return down_up(image, hole, model, train_res), {}
    config = refine_config(name)
    if config is None:
        raise ValueError(f"unknown method {name!r}")
    result, info = jax_refine.inpaint_with_info(image, hole, model, config=config)
    return result, dict(iterations=[s.iterations for s in info.scales])


def worker(args) -> None:
    """One (method, size) group in this process: append one JSON line per case to results."""
    compile_s = {"s": 0.0}
    model = None
    if args.method != "telea":
        import jax

        import jax_refine

        def listener(event, duration, **_):
            if event.startswith("/jax/core/compile/"):
                compile_s["s"] += duration

        jax.monitoring.register_event_duration_secs_listener(listener)
        model = jax_refine.load(args.model) if args.model else jax_refine.default_model()
    fills = args.out / "fills" / str(args.size)
    fills.mkdir(parents=True, exist_ok=True)
    done = {(r["photo"], r["kind"]) for r in read_results(args.out)
            if r.get("method") == args.method and r.get("size") == args.size}
    for photo in heldout_photos(args.data, args.photos):
        for kind in args.kinds:
            if (photo["name"], kind) in done:
                continue
            image, hole = case_inputs(args.data, photo, args.size, kind)
            compile_before, start = compile_s["s"], time.perf_counter()
            result, extra = run_method(args.method, image, hole, model, args.train_res)
            result = np.asarray(result)
            wall = time.perf_counter() - start
            compiled = compile_s["s"] - compile_before
            assert result.shape == image.shape and result.dtype == np.uint8
            assert np.array_equal(result[~hole], image[~hole]), "known pixels changed"
            stem = f"{photo['name'].split('/')[-1]}_{kind}_{args.method}"
            Image.fromarray(result).save(fills / f"{stem}.png")
            record = dict(method=args.method, size=args.size, photo=photo["name"], kind=kind,
                          shape=list(image.shape[:2]), hole_fraction=round(float(hole.mean()), 4),
                          seconds=round(wall - compiled, 2), compile_seconds=round(compiled, 2),
                          **{k: round(v, 5) for k, v in hole_metrics(result, image, hole).items()}, **extra)
            append_result(args.out, record)
            print(json.dumps(record), flush=True)
    append_result(args.out, dict(method=args.method, size=args.size, group="peak_rss",
                                 peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                                 photos=args.photos, kinds=args.kinds))


def read_results(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_result(out: Path, record: dict) -> None:
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def table(records: list[dict], method_names: list[str]) -> str:
    cases = [r for r in records if "group" not in r]
    peaks = {}
    for r in records:
        if r.get("group") == "peak_rss":  # the last full run of a group wins
            peaks[(r["method"], r["size"])] = r["peak_rss_gib"]
    lines = ["| size | mask | method | PSNR (dB) ↑ | colour cast ↓ | SSIM ↑ | grad-W1 ↓ | sharpness (→1) | s / image | "
             "compile s | peak RSS GiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in sorted({r["size"] for r in cases}):
        for kind in KINDS + ("all",):
            for method in method_names:
                rows = [r for r in cases if r["size"] == size and r["method"] == method and kind in (r["kind"], "all")]
                if not rows:
                    continue

                def mean(key):
                    return float(np.mean([r[key] for r in rows]))

                peak = peaks.get((method, size)) if kind == "all" else None
                label = f"**{kind}** ({len(rows)})" if kind == "all" else f"{kind} ({len(rows)})"
                lines.append(f"| {size} | {label} | {method} | {mean('psnr'):.2f} | {mean('colour_cast'):.2f} | "
                             f"{mean('ssim'):.4f} | "
                             f"{mean('grad_w1'):.2f} | {mean('sharpness'):.2f} | {mean('seconds'):.1f} | "
                             f"{sum(r['compile_seconds'] for r in rows):.0f} | "
                             f"{'' if peak is None else f'{peak:.2f}'} |")
    return "\n".join(lines)


def acceptance_table(records: list[dict], method: str = "default", baseline: str = "telea") -> str:
    """`method` against `baseline` per size and mask kind on the cases both ran: mean hole PSNR,
    its difference, mean colour cast, and whether the bar holds (mean PSNR >= baseline + 0.5 dB
    per size, not below the baseline for any kind, colour cast no larger than the baseline's)."""
    cases = {(r["method"], r["size"], r["photo"], r["kind"]): r for r in records if "group" not in r}
    lines = [f"| size | mask | cases | {method} PSNR | {baseline} PSNR | Δ dB | {method} colour cast | "
             f"{baseline} colour cast | bar |", "|---|---|---|---|---|---|---|---|---|"]
    for size in sorted({key[1] for key in cases}):
        for kind in KINDS + ("all",):
            pairs = [(r, cases[(baseline, *key[1:])]) for key, r in cases.items()
                     if key[0] == method and key[1] == size and kind in (key[3], "all") and (baseline, *key[1:]) in cases]
            if not pairs:
                continue
            ours, theirs = (float(np.mean([p[i]["psnr"] for p in pairs])) for i in (0, 1))
            cast_ours, cast_theirs = (float(np.mean([p[i]["colour_cast"] for p in pairs])) for i in (0, 1))
            need = 0.5 if kind == "all" else 0.0
            ok = ours >= theirs + need and (kind != "all" or cast_ours <= cast_theirs)
            label = f"**{kind}**" if kind == "all" else kind
            lines.append(f"| {size} | {label} | {len(pairs)} | {ours:.2f} | {theirs:.2f} | {ours - theirs:+.2f} | "
                         f"{cast_ours:.2f} | {cast_theirs:.2f} | {'holds' if ok else '**fails**'} |")
    return "\n".join(lines)


def options_table(records: list[dict]) -> str:
    """Each option method (adaptive scales, early stopping) against its refine[-R] baseline,
    on the cases both ran: mean and worst PSNR change, SSIM change, time and forward passes."""
    cases = {(r["method"], r["size"], r["photo"], r["kind"]): r for r in records if "group" not in r}
    options = sorted({m for m, *_ in cases if (match := OPTION_NAME.fullmatch(m)) and match.group(2)})
    lines = ["| size | mask | option | baseline | cases | ΔPSNR dB mean (worst) | ΔSSIM | time option / baseline | "
             "forwards option / baseline |", "|---|---|---|---|---|---|---|---|---|"]
    for size in sorted({size for _, size, *_ in cases}):
        for option in options:
            baseline = OPTION_NAME.fullmatch(option).group(1)
            for kind in KINDS + ("all",):
                pairs = [(r, cases[(baseline, *key[1:])]) for key, r in cases.items()
                         if key[0] == option and key[1] == size and kind in (key[3], "all")
                         and (baseline, *key[1:]) in cases]
                if not pairs:
                    continue
                d_psnr = [o["psnr"] - b["psnr"] for o, b in pairs]
                d_ssim = np.mean([o["ssim"] - b["ssim"] for o, b in pairs])
                time_ratio = sum(o["seconds"] for o, _ in pairs) / sum(b["seconds"] for _, b in pairs)
                # a baseline refines every scale but the coarsest n_iters (15) times; options keep the count
                forwards = [(sum(o["iterations"]), sum(b.get("iterations", [1] + [15] * (len(o["iterations"]) - 1))))
                            for o, b in pairs]
                forward_ratio = sum(f for f, _ in forwards) / sum(f for _, f in forwards)
                label = f"**{kind}**" if kind == "all" else kind
                lines.append(f"| {size} | {label} | {option} | {baseline} | {len(pairs)} | "
                             f"{np.mean(d_psnr):+.2f} ({min(d_psnr):+.2f}) | "
                             f"{d_ssim:+.4f} | {time_ratio:.2f} | {forward_ratio:.2f} |")
    return "\n".join(lines)


def figure(args, method_names: list[str], cases: list[tuple[str, int, str]], path: Path, tile: int = 256) -> None:
    """Rows = cases, columns = photo, input, each method: crops around the largest hole area."""
    from PIL import ImageDraw

    photos = {p["name"].split("/")[-1]: p for p in heldout_photos(args.data, None)}
    columns = ["photo", "input"] + method_names
    grid = Image.new("RGB", (tile * len(columns), (tile + 16) * len(cases) + 16), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(columns):
        draw.text((c * tile + 4, 2), name, fill="black")
    for r, (photo, size, kind) in enumerate(cases):
        image, hole = case_inputs(args.data, photos[photo], size, kind)
        side = min(2 * tile, *hole.shape)
        ys, xs = np.nonzero(hole)
        # the window with the most hole pixels among windows centred on a grid of hole pixels
        best = max(((int(y), int(x)) for y, x in zip(ys[::997], xs[::997])),
                   key=lambda p: hole[max(0, p[0] - side // 2):p[0] + side // 2, max(0, p[1] - side // 2):p[1] + side // 2].sum())
        top = min(max(best[0] - side // 2, 0), hole.shape[0] - side)
        left = min(max(best[1] - side // 2, 0), hole.shape[1] - side)
        masked = np.where(hole[..., None], np.uint8(255), image)
        panels = [image, masked] + [np.asarray(Image.open(args.out / "fills" / str(size) / f"{photo}_{kind}_{m}.png"))
                                    for m in method_names]
        y0 = 16 + r * (tile + 16)
        draw.text((4, y0 + tile + 2), f"{photo} {size}px {kind}", fill="black")
        for c, panel in enumerate(panels):
            crop = Image.fromarray(panel[top:top + side, left:left + side]).resize((tile, tile), Image.Resampling.LANCZOS)
            grid.paste(crop, (c * tile, y0))
    grid.save(path)


def write_between_markers(table_md: str, path: Path, begin: str = BEGIN, end: str = END) -> None:
    text = path.read_text() if path.exists() else f"# Quality study\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        raise SystemExit(f"{path} lacks the markers {begin} / {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{table_md}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data")
    parser.add_argument("--model", type=Path, help="a jax-refine checkpoint (default: the bundled model)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "quality")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--photos", help="comma-separated held-out photo names (default: all)")
    parser.add_argument("--methods", help="comma-separated subset of the methods (default: all)")
    parser.add_argument("--train-res", type=int, default=256,
                        help="the model's training resolution, short side in px (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table and figure")
    parser.add_argument("--quality-md", type=Path, default=ROOT / "QUALITY.md")
    parser.add_argument("--method", help=argparse.SUPPRESS)  # internal: run one group in this process
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.kinds = args.kinds.split(",")
    args.photos = args.photos.split(",") if args.photos else None
    args.out.mkdir(parents=True, exist_ok=True)
    if args.method:
        worker(args)
        return
    names = args.methods.split(",") if args.methods else methods(args.train_res)
    if not args.report_only:
        for size in map(int, args.sizes.split(",")):
            for method in names:
                cmd = [sys.executable, __file__, "--method", method, "--size", str(size), "--data", str(args.data),
                       "--out", str(args.out), "--kinds", ",".join(args.kinds), "--train-res", str(args.train_res)]
                cmd += ["--photos", ",".join(args.photos)] if args.photos else []
                cmd += ["--model", str(args.model)] if args.model else []
                print(f"== {method} at {size} px", flush=True)
                subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    records = read_results(args.out)
    main_methods = methods(args.train_res)
    table_md, options_md = table(records, main_methods), options_table(records)
    print(table_md, options_md, sep="\n\n")
    write_between_markers(table_md, args.quality_md)
    if OPTIONS_BEGIN in args.quality_md.read_text():
        write_between_markers(options_md, args.quality_md, OPTIONS_BEGIN, OPTIONS_END)
    if ACCEPT_BEGIN in args.quality_md.read_text():
        write_between_markers(acceptance_table(records), args.quality_md, ACCEPT_BEGIN, ACCEPT_END)
    cases = [(p["name"].split("/")[-1], size, kind) for p in heldout_photos(args.data, args.photos)
             for size, kind in [(max(SIZES), "thick")]]
    shown = [m for m in main_methods if all((args.out / "fills" / str(s) / f"{p}_{k}_{m}.png").exists()
                                            for p, s, k in cases)]
    if shown:  # the methods that ran on every figure case
        figure(args, shown, cases, args.out / "crops.png")
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(args.out / "crops.png", ROOT / "docs" / "quality_crops.png")


if __name__ == "__main__":
    import jax_refine

    jax_refine.configure_cpu()  # XLA's fast CPU conv path, before JAX starts (as the CLI does)
    main()
