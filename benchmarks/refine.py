"""Refinement of a 1024x1024 photo with Big-LaMa: jax-refine vs a PyTorch reference, side by side.

    python benchmarks/refine.py [--image PHOTO] [--size 1024] [--n-iters 15] [--only jax,python-loop,torch]

Big-LaMa configuration with random weights (the same weights in both frameworks, built by the
PyTorch reference in tests/reference and converted), a thick stroke mask (LaMa's 'thick'
kind, seed 0), default RefineConfig (min_side 512 -> 2 scales at 1024 px). Each variant runs
in its own process so that its peak RSS is its own:

  jax          jax_refine.refine: each scale one jitted program, iterations in a lax.while_loop
  python-loop  the same loss and Adam step jitted once and called from a Python loop
               (a few steps only: the reference for "the compiled loop is at least as fast")
  torch        tests/reference/lama_torch.refine: the original algorithm in PyTorch (2 threads)

Prints compile time, steady-state time per iteration, total time and peak RSS per variant,
then the ratios. Torch is a benchmark-only dependency.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT / "data" / "photos" / "mate-backgrounds" / "Garden.jpg"  # scripts/prepare_data.py


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def inputs(image_path, size):
    """(image (size, size, 3) float32 in [0, 1], mask (size, size) float32 {0, 1})."""
    from PIL import Image

    from jax_refine.masks import random_mask

    photo = Image.open(image_path).convert("RGB")
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    photo = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    mask = random_mask(np.random.default_rng(0), size, size, "thick")
    return np.asarray(photo, np.float32) / 255, mask.astype(np.float32)


def torch_reference(seed=0):
    sys.path.insert(0, str(ROOT / "tests"))
    from reference.lama_torch import FFCResNetGenerator, randomize

    return randomize(FFCResNetGenerator(ngf=64, n_downsampling=3, n_blocks=18), seed=seed).eval()


def jax_model():
    from jax_refine.convert import infer_config, model_from_flat, to_flax_state

    state = {k: v.numpy() for k, v in torch_reference().state_dict().items()}
    config = infer_config(state, None, "reference")
    return model_from_flat(to_flax_state(state, config, "reference"), config)


def compile_seconds():
    """A listener summing JAX's trace/lower/compile durations; returns the running total dict."""
    import jax

    total = {"s": 0.0}

    def listener(event, duration, **_):
        if event in ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                     "/jax/core/compile/jaxpr_trace_duration"):
            total["s"] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    return total


def run_jax(args):
    import jax_refine  # sets the XLA CPU flag before the backend starts
    from jax_refine import refine as refine_lib

    image, mask = inputs(args.image, args.size)
    model = jax_model()
    compiled = compile_seconds()
    stamps = []
    config = jax_refine.RefineConfig(n_iters=args.n_iters, min_side=args.min_side)
    start = time.perf_counter()
    _, scales = refine_lib.refine(model, image[None], mask[None, ..., None], config,
                                  on_iteration=lambda i, losses: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    steps = np.diff(stamps)  # iteration i-1 -> i: one Adam step + one forward/backward
    return dict(total_s=total, compile_s=compiled["s"], per_iter_s=float(np.median(steps)),
                scales=[(s.size, round(s.seconds, 2)) for s in scales], peak_rss_gib=peak_rss_gib(),
                final_loss=float(scales[-1].losses[-1, 0]))


def run_python_loop(args):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import jax_refine  # noqa: F401  (XLA flag)
    from jax_refine import refine as refine_lib

    image, mask = inputs(args.image, args.size)
    model = jax_model()
    config = jax_refine.RefineConfig(n_iters=args.n_iters, min_side=args.min_side)
    # the coarse scale's result, as refine() computes it: a plain forward at half size
    half = (args.size // 2, args.size // 2)
    small_image = np.asarray(jax_refine.pyramid.apply_separable(
        jnp.asarray(image[None]), *(jax_refine.pyramid.pyr_down_matrix(args.size).astype(np.float32),) * 2))
    small_mask = np.asarray(jax_refine.pyramid.round_up(jax_refine.pyramid.apply_separable(
        jnp.asarray(mask[None, ..., None]), *(jax_refine.pyramid.pyr_down_matrix(args.size).astype(np.float32),) * 2)))
    ref, _ = refine_lib.refine(model, small_image, small_mask, jax_refine.RefineConfig(min_side=args.size * 4))
    assert ref.shape[1:3] == half
    graphdef, state = nnx.split(model)
    hp = refine_lib.padded(args.size, config.modulo)
    image_p = refine_lib._pad(image[None], hp, hp, "reflect")
    mask_p = np.asarray(jax_refine.pyramid.round_up(refine_lib._pad(mask[None, ..., None], hp, hp, "reflect")))
    operands = refine_lib.scale_operands(ref, refine_lib.ScalePlan((args.size,) * 2, (hp, hp), True, 1.0), config.modulo)
    tx = refine_lib.adam(config.lr)

    @jax.jit
    def init(state, image_p, mask_p, operands):
        z, _ = refine_lib.scale_problem(graphdef, state, image_p, mask_p, *operands, erosion=config.erosion,
                                       remat=config.remat)
        return z, tx.init(z)

    @jax.jit
    def step(state, z, opt_state, image_p, mask_p, operands):
        _, loss_fn = refine_lib.scale_problem(graphdef, state, image_p, mask_p, *operands, erosion=config.erosion,
                                             remat=config.remat)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(z)
        updates, opt_state = tx.update(grads, opt_state, z)
        return optax.apply_updates(z, updates), opt_state, loss

    compiled = compile_seconds()
    z, opt_state = init(state, image_p, mask_p, operands)
    times = []
    for _ in range(args.python_steps):
        t = time.perf_counter()
        z, opt_state, loss = jax.block_until_ready(step(state, z, opt_state, image_p, mask_p, operands))
        times.append(time.perf_counter() - t)
    return dict(compile_s=compiled["s"], per_iter_s=float(np.median(times[1:])), step_times=times,
                peak_rss_gib=peak_rss_gib())


def run_torch(args):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from reference.lama_torch import refine

    torch.set_num_threads(2)
    image, mask = inputs(args.image, args.size)
    model = torch_reference()
    start = time.perf_counter()
    _, info = refine(model, image, mask, n_iters=args.n_iters, min_side=args.min_side)
    total = time.perf_counter() - start
    return dict(total_s=total, per_iter_s=None, scales=[(s["orig_hw"], s.get("seconds")) for s in info],
                peak_rss_gib=peak_rss_gib(), final_loss=info[-1]["losses"][-1])


VARIANTS = {"jax": run_jax, "python-loop": run_python_loop, "torch": run_torch}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--n-iters", type=int, default=15)
    parser.add_argument("--min-side", type=int, default=512)
    parser.add_argument("--python-steps", type=int, default=4)
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(VARIANTS[args.variant](args)), flush=True)
        return
    results = {}
    for name in args.only.split(","):
        cmd = [sys.executable, __file__, "--variant", name, "--image", str(args.image), "--size", str(args.size),
               "--n-iters", str(args.n_iters), "--min-side", str(args.min_side), "--python-steps", str(args.python_steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"{name}: failed\n{out.stderr[-3000:]}")
            continue
        results[name] = json.loads(lines[-1][len("RESULT "):])
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    print(f"\nBig-LaMa (random weights), {args.size}x{args.size}, thick mask, min_side {args.min_side}, {args.n_iters} iterations")
    for name, r in results.items():
        print(f"  {name:12s} compile {r.get('compile_s') or 0:7.1f} s   per iteration "
              f"{(r['per_iter_s'] or float('nan')):6.2f} s   total {r.get('total_s', float('nan')):7.1f} s   "
              f"peak RSS {r['peak_rss_gib']:5.2f} GiB   final loss {r.get('final_loss', float('nan')):.5f}")
    if "jax" in results and "torch" in results:
        j, t = results["jax"], results["torch"]
        print(f"  torch / jax total time: {t['total_s'] / j['total_s']:.2f}x; steady state (total - compile): "
              f"{t['total_s'] / (j['total_s'] - j['compile_s']):.2f}x; peak RSS jax / torch: "
              f"{j['peak_rss_gib'] / t['peak_rss_gib']:.2f}")
    if "jax" in results and "python-loop" in results:
        print(f"  per iteration, python loop / compiled loop: "
              f"{results['python-loop']['per_iter_s'] / results['jax']['per_iter_s']:.2f}x")


if __name__ == "__main__":
    main()
