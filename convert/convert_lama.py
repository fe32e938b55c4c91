#!/usr/bin/env python
"""Convert a LaMa PyTorch checkpoint into a jax-refine checkpoint directory, from a clone.

    python convert/convert_lama.py big-lama/models/best.ckpt weights/big-lama [--overwrite]

The same as `jax-refine convert SRC DST [--overwrite]` once the package is installed.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    # Use this clone's package (even if another version is installed).
    if (REPO / "jax_refine" / "__init__.py").is_file() and not any(
            Path(p or ".").resolve() == REPO for p in sys.path):
        sys.path.insert(0, str(REPO))
    from jax_refine.cli import main as cli_main

    args = sys.argv[1:] if argv is None else list(argv)
    return cli_main(["convert", *args])


if __name__ == "__main__":
    sys.exit(main())
