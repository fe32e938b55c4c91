"""The memory estimate of a job, from XLA's own buffer assignment, before running it."""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
from flax import nnx

from .contract import Generator
from .plan import RefineConfig, padded as pad, plan_scales
from .refine import Program, trace

@dataclasses.dataclass
class MemoryEstimate:
    """Expected peak memory of one inpaint/refine call, from XLA's own buffer assignment.

    On CPU all of it is host memory and `peak_bytes` is the process's expected peak resident
    set (`baseline_bytes`, what is resident now: interpreter, libraries, loaded weights, plus
    the largest program's working set and the host-side images and results). On GPU/TPU `peak_bytes` is
    device memory: the weights plus the largest program's working set.
    """

    backend: str
    peak_bytes: int
    baseline_bytes: int        # resident now (CPU) / the weights (accelerators)
    program_bytes: int         # largest program: XLA temporaries + outputs + non-weight arguments
    host_bytes: int            # images and results on the host (outside the programs)
    scales: list[tuple[tuple[int, int], int]]  # (padded size, program bytes) per scale

    def __str__(self):
        gib = 2.0**30
        return (f"{self.peak_bytes / gib:.2f} GiB peak on {self.backend} "
                f"({'resident now' if self.backend == 'cpu' else 'weights'} {self.baseline_bytes / gib:.2f}, "
                f"program {self.program_bytes / gib:.2f}, "
                f"host images {self.host_bytes / gib:.2f})")


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak so far is an upper bound
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def estimate_memory(model: Generator, height: int, width: int, *, batch: int = 1, multiscale: bool = True,
                    config: RefineConfig = RefineConfig()) -> MemoryEstimate:
    """Peak memory of `refine.multiscale` (or, with multiscale=False, `refine.predict`) on `batch`
    images of height x width, without running it: `refine.trace` drives the run on shape
    structs and every program it calls is compiled (XLA's compilation cache makes the real
    call's compilation cheap afterwards) and its buffer assignment read."""
    weights = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
    used = []  # (scale or None, bytes) per program call

    def compile_program(program: Program):
        lowered = program.lower()
        stats = lowered.compile().memory_analysis()
        if stats is None:
            raise RuntimeError(f"the {jax.default_backend()} backend reports no memory statistics")
        total = (stats.temp_size_in_bytes + stats.output_size_in_bytes + stats.argument_size_in_bytes
                 - stats.alias_size_in_bytes)  # outputs in donated arguments' buffers count once
        used.append((program.scale, total - (weights if program.scale is not None else 0)))
        return lowered.out_info

    trace(model, height, width, compile_program, batch=batch, multiscale=multiscale, config=config,
          upscale=multiscale and config.full_size_output)
    padded = ([s.padded_size for s in plan_scales(height, width, config)] if multiscale
              else [(pad(height, model.config.modulo), pad(width, model.config.modulo))])
    per_scale = {}  # a refined scale runs several programs: the largest counts
    for scale, b in used:
        if scale is not None:
            per_scale[scale] = max(per_scale.get(scale, 0), b)
    scales = list(zip(padded, [per_scale[k] for k in sorted(per_scale)]))
    # the caller's input, its float32 copy and the results on the host; the pyramid and each
    # scale's batch live on the device, inside the programs' arguments
    host = 3 * 16 * height * width * batch
    program_bytes = max(b for _, b in used)
    if jax.default_backend() == "cpu":
        baseline = _resident_bytes()
        return MemoryEstimate("cpu", baseline + program_bytes + host, baseline, program_bytes, host, scales)
    return MemoryEstimate(jax.default_backend(), weights + program_bytes, weights, program_bytes, host, scales)
