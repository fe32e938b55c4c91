"""`python -m jax_refine ...` is the `jax-refine` command."""

import sys

from .cli import command

sys.exit(command())
