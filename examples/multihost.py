"""Inpaint a LaMa-layout folder (x.png + x_mask*.png) on every host of a TPU pod or GPU
cluster, scripted: `jax_refine.inpaint_files`, the code path of `jax-refine inpaint --distributed`.

    # on every host, the same command (Cloud TPU and SLURM are detected by jax.distributed):
    python examples/multihost.py IN_DIR OUT_DIR --model big-lama --distributed
    # one machine, all its devices:
    python examples/multihost.py IN_DIR OUT_DIR --model big-lama

Each process inpaints its share of the folder on its local devices; finished outputs are kept
when the job is started again (skip_existing). The CLI does the same:
`jax-refine inpaint IN_DIR -o OUT_DIR --model big-lama --batch-size 8 --distributed --skip-existing`.
"""

import argparse
import sys

import jax_refine


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--model", help="converted checkpoint directory (default: the bundled model)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per run on this host's devices")
    parser.add_argument("--distributed", action="store_true", help="split the folder over the processes")
    args = parser.parse_args(argv)
    jax_refine.configure_cpu()  # on CPU hosts: XLA's fast conv path; before the first JAX computation
    settings = jax_refine.JobSettings(batch_size=args.batch_size, skip_existing=True)
    summary = jax_refine.inpaint_files(args.input, args.output, model=args.model, settings=settings,
                                       distributed=args.distributed, verbose=True)
    if summary.process == 0:
        print(summary)
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
