"""`python -m jax_refine ...` is the `jax-refine` command."""

import sys

from .cli import main

sys.exit(main())
