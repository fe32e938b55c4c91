"""The CPU conv fix of docs/xla-cpu.md §1, as an explicit call: `jax_refine.configure_cpu()`.

XLA-CPU in jaxlib 0.10.2 routes convolutions to YNNPACK fusions by default, and those are
2.7-3x slower for the VALID convs that reflect padding feeds (every FFC conv). Disabling the
YNN fusion types with `--xla_cpu_experimental_ynn_fusion_type=` restores the fast path.

`import jax_refine` changes no environment variable; the `jax-refine` command calls
`configure_cpu()` itself, and users of the Python API call it before their first JAX
computation (XLA reads XLA_FLAGS once, when the first backend starts; a later call has no effect).
"""

import importlib.metadata
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
TESTED_JAXLIB = ("0.10.2",)


def configure_cpu() -> bool:
    """Append the YNN flag to the XLA_FLAGS environment variable when it is known to be safe;
    True if the flag is set. Call it before the first JAX computation.

    The flag is experimental and an unknown flag in XLA_FLAGS aborts the process, so it is
    set only for the jaxlib versions it was tested with (TESTED_JAXLIB), only when XLA_FLAGS
    does not mention it already (the user's choice wins), and never when
    JAX_REFINE_XLA_FLAGS=0. It only affects the CPU backend.
    """
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
