"""Peak memory and time of Big-LaMa refinement at full resolution, per remat policy and size.

    python benchmarks/memory.py [--sizes 1024,1536,2048] [--remat none,blocks,all] [--n-iters 2]

Big-LaMa configuration with random weights, `data/photos/mate-backgrounds/Garden.jpg`
(`python -m training.sources`; examples/dune.png without it) centre-cropped to S x S, LaMa's 'thick' mask (seed 0),
RefineConfig(px_budget=S*S, min_side 512, max_scales 3): 1024 -> 2 scales (512, 1024),
1536 -> 3 (384, 768, 1536), 2048 -> 3 (512, 1024, 2048), all refined at full resolution.
Each (size, policy) runs in a fresh process: peak RSS is the process's own, and
`jax_refine.estimate` (run first, in another fresh process) is compared with it.

The peak is reached in the first Adam step of the finest scale, so a few iterations measure
it; time per iteration is the finest scale's time (compilation excluded) over its iterations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compile_seconds, default_photo, peak_rss_gib, report, run_worker, square_inputs  # noqa: E402


def config_for(size: int, remat: str, n_iters: int):
    import jax_refine

    return jax_refine.RefineConfig(px_budget=size * size, n_iters=n_iters, remat=remat)


def big_lama(n_blocks: int):
    import dataclasses

    from flax import nnx

    import jax_refine
    from jax_refine.model import eval_mode

    config = dataclasses.replace(jax_refine.BIG_LAMA, n_blocks=n_blocks)
    return eval_mode(jax_refine.Lama(config, rngs=nnx.Rngs(0)))


def worker(args) -> dict:
    import jax_refine
    from jax_refine import refine

    model, config = big_lama(args.n_blocks), config_for(args.size, args.remat, args.n_iters)
    if args.task == "estimate":
        est = jax_refine.estimate((args.size, args.size), model, config=config)
        return dict(estimate_gib=est.peak_bytes / 2**30, program_gib=est.program_bytes / 2**30)
    compile_s = compile_seconds()
    image, mask = square_inputs(args.image, args.size)
    compiled_before = []  # compilation seconds so far at the start of each scale
    start = time.perf_counter()
    _, scales = refine.multiscale(model, image[None], mask[None, :, :, None], config,
                                  on_scale=lambda *_: compiled_before.append(compile_s["s"]))
    total = time.perf_counter() - start
    finest_compile = compile_s["s"] - compiled_before[-1]
    return dict(scales=[s.size[0] for s in scales], total_s=total - compile_s["s"], compile_s=compile_s["s"],
                finest_iteration_s=(scales[-1].seconds - finest_compile) / scales[-1].iterations,
                peak_rss_gib=peak_rss_gib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,1536,2048")
    parser.add_argument("--remat", default="none,blocks,all")
    parser.add_argument("--n-iters", type=int, default=2)
    parser.add_argument("--n-blocks", type=int, default=18, help="residual blocks (Big-LaMa: 18; fewer for a quick check)")
    parser.add_argument("--image", type=Path, default=default_photo())
    parser.add_argument("--task", help=argparse.SUPPRESS)  # internal: estimate | run, one (size, remat)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--remat-policy", dest="remat_one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        args.remat = args.remat_one
        report(worker(args))
        return
    rows = []
    for size in map(int, args.sizes.split(",")):
        for remat in args.remat.split(","):
            row = dict(size=size, remat=remat)
            for task in ("estimate", "run"):
                row.update(run_worker(__file__, ["--task", task, "--size", str(size), "--remat-policy", remat,
                                                 "--n-iters", str(args.n_iters), "--image", str(args.image),
                                                 "--n-blocks", str(args.n_blocks)]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| size | scales | remat | peak RSS GiB | estimate GiB (est / measured) | s / iteration at full size | total s (no compile) | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}² | {' → '.join(map(str, r['scales']))} | {r['remat']} | {r['peak_rss_gib']:.2f} | "
              f"{r['estimate_gib']:.2f} ({r['estimate_gib'] / r['peak_rss_gib']:.2f}) | {r['finest_iteration_s']:.1f} | "
              f"{r['total_s']:.0f} | {r['compile_s']:.0f} |")
    for size in sorted({r["size"] for r in rows}):
        base = next((r for r in rows if r["size"] == size and r["remat"] == "none"), None)
        for r in rows:
            if base and r["size"] == size and r is not base:
                print(f"{size}²: {r['remat']} / none: peak RSS {r['peak_rss_gib'] / base['peak_rss_gib']:.2f}x, "
                      f"time per iteration {r['finest_iteration_s'] / base['finest_iteration_s']:.2f}x")


if __name__ == "__main__":
    main()
