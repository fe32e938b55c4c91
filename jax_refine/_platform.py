"""XLA settings applied at import: the CPU conv fix of docs/xla-cpu.md §1.

XLA-CPU in jaxlib 0.10.2 routes convolutions to YNNPACK fusions by default, and those are
2.7-3x slower for the VALID convs that reflect padding feeds (every FFC conv). Disabling the
YNN fusion types with `--xla_cpu_experimental_ynn_fusion_type=` restores the fast path.

The flag is experimental and an unknown flag in XLA_FLAGS aborts the process, so it is set
only for jaxlib versions it was tested with, only when the user's XLA_FLAGS does not mention
it already, and never when JAX_REFINE_XLA_FLAGS=0. XLA reads XLA_FLAGS when the first
backend starts, so import jax_refine before running JAX computations to get the fix.
"""

import importlib.metadata
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
TESTED_JAXLIB = ("0.10.2",)


def configure_xla() -> bool:
    """Append the YNN flag to XLA_FLAGS when it is known to be safe; True if it is set."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return YNN_FLAG in flags.split()
    if os.environ.get("JAX_REFINE_XLA_FLAGS", "1") == "0":
        return False
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return False
    if version not in TESTED_JAXLIB:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return True
