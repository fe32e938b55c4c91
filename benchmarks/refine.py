"""Refinement of a 1024x1024 photo with Big-LaMa: jax-refine vs a PyTorch reference, side by side.

    python benchmarks/refine.py [--image PHOTO] [--size 1024] [--n-iters 15] [--only jax,python-loop,torch]

Big-LaMa configuration with random weights (the same weights in both frameworks, built by the
PyTorch reference in tests/reference and converted), a thick stroke mask (LaMa's 'thick'
kind, seed 0), default RefineConfig (min_side 512 -> 2 scales at 1024 px). Each variant runs
in its own process so that its peak RSS is its own:

  jax          jax_refine.refine.multiscale: each scale one jitted program, iterations in a lax.while_loop
  python-loop  the same loss and Adam step jitted once and called from a Python loop
               (a few steps only: the reference for "the compiled loop is at least as fast")
  torch        tests/reference/lama_torch.refine: the original algorithm in PyTorch (2 threads)

Prints compile time, steady-state time per iteration, total time and peak RSS per variant,
then the ratios. Torch is a benchmark-only dependency.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, compile_seconds, default_photo, peak_rss_gib, report, run_worker, square_inputs  # noqa: E402


def torch_reference(n_blocks, seed=0):
    sys.path.insert(0, str(ROOT / "tests"))
    from reference.lama_torch import FFCResNetGenerator, randomize

    return randomize(FFCResNetGenerator(ngf=64, n_downsampling=3, n_blocks=n_blocks), seed=seed).eval()


def jax_model(n_blocks):
    from jax_refine.checkpoint import model_from_flat
    from jax_refine.convert import infer_config, to_flax_state

    state = {k: v.numpy() for k, v in torch_reference(n_blocks).state_dict().items()}
    config = infer_config(state, None, "reference")
    return model_from_flat(to_flax_state(state, config, "reference"), config)


def run_jax(args):
    import jax_refine
    from jax_refine import refine

    image, mask = square_inputs(args.image, args.size)
    model = jax_model(args.n_blocks)
    compiled = compile_seconds()
    stamps = []
    config = jax_refine.RefineConfig(n_iters=args.n_iters, min_side=args.min_side)
    start = time.perf_counter()
    _, scales = refine.multiscale(model, image[None], mask[None, ..., None], config,
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

    import jax_refine
    from jax_refine import pyramid, refine
    from jax_refine.plan import ScaleOperands, pad_bottom_right, plan_scales, reference_frame, scale_matrices

    image, mask = square_inputs(args.image, args.size)
    model = jax_model(args.n_blocks)
    config = jax_refine.RefineConfig(n_iters=args.n_iters, min_side=args.min_side)
    # the finest scale's problem as multiscale() builds it, from the coarse scale's plain forward
    coarse, finest = plan_scales(args.size, args.size, config, model.config.modulo)[-2:]
    small = [np.asarray(pyramid.apply_separable(jnp.asarray(x[None]), *(pyramid.pyr_down_matrix(args.size).astype(np.float32),) * 2))
             for x in (image, mask[..., None])]
    ref, _ = refine.multiscale(model, small[0], pyramid.round_up(small[1]), jax_refine.RefineConfig(min_side=args.size * 4))
    assert ref.shape[1:3] == coarse.size
    hp, wp = finest.padded_size
    image_p = pad_bottom_right(image[None], hp, wp, "reflect")
    mask_p = np.asarray(pyramid.round_up(pad_bottom_right(mask[None, ..., None], hp, wp, "reflect")))
    matrices = scale_matrices([finest], [coarse], config.modulo)
    frame = reference_frame(finest.padded_size, coarse.size, config.modulo)
    operands = ScaleOperands(image_p, mask_p, pad_bottom_right(ref, *frame, "constant"), *matrices[:4])
    graphdef, state = nnx.split(model)
    settings, tx = refine.ProgramSettings.of(config), refine.adam(config.lr)

    @jax.jit
    def init(state, operands):
        z = refine.initial_features(graphdef, state, operands, settings)
        return z, tx.init(z)

    @jax.jit
    def step(state, z, opt_state, operands):
        loss_fn = refine.scale_loss(graphdef, state, operands, settings)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(z)
        updates, opt_state = tx.update(grads, opt_state, z)
        return optax.apply_updates(z, updates), opt_state, loss

    compiled = compile_seconds()
    z, opt_state = init(state, operands)
    times = []
    for _ in range(args.python_steps):
        t = time.perf_counter()
        z, opt_state, loss = jax.block_until_ready(step(state, z, opt_state, operands))
        times.append(time.perf_counter() - t)
    return dict(compile_s=compiled["s"], per_iter_s=float(np.median(times[1:])), step_times=times,
                peak_rss_gib=peak_rss_gib())


def run_torch(args):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from reference.lama_torch import refine

    torch.set_num_threads(2)
    image, mask = square_inputs(args.image, args.size)
    model = torch_reference(args.n_blocks)
    start = time.perf_counter()
    _, info = refine(model, image, mask, n_iters=args.n_iters, min_side=args.min_side)
    total = time.perf_counter() - start
    return dict(total_s=total, per_iter_s=None, scales=[(s["orig_hw"], s.get("seconds")) for s in info],
                peak_rss_gib=peak_rss_gib(), final_loss=info[-1]["losses"][-1])


VARIANTS = {"jax": run_jax, "python-loop": run_python_loop, "torch": run_torch}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=default_photo())
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--n-iters", type=int, default=15)
    parser.add_argument("--min-side", type=int, default=512)
    parser.add_argument("--python-steps", type=int, default=4)
    parser.add_argument("--n-blocks", type=int, default=18, help="residual blocks (Big-LaMa: 18; fewer for a quick check)")
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args()
    if args.variant:
        report(VARIANTS[args.variant](args))
        return
    results = {}
    for name in args.only.split(","):
        results[name] = run_worker(__file__, ["--variant", name, "--image", str(args.image), "--size", str(args.size),
                                              "--n-iters", str(args.n_iters), "--min-side", str(args.min_side),
                                              "--python-steps", str(args.python_steps), "--n-blocks", str(args.n_blocks)])
        print(f"{name}: {results[name]}", flush=True)
    print(f"\nBig-LaMa (random weights, {args.n_blocks} blocks), {args.size}x{args.size}, thick mask, min_side {args.min_side}, {args.n_iters} iterations")
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
