"""Every compiled program lowers for GPU and TPU: exported with jax.export for "cuda" and "tpu",
so a construct that only the CPU backend accepts fails here, without an accelerator.

The programs are those of `refine.programs`, which `memory.estimate_memory` compiles and
`refine.multiscale` / `refine.predict` run: the plain forward pass and a refined scale (its
while_loop of Adam steps, early stopping, the tiled decoder tail), on both kernel paths and in
both compute dtypes. The progress variant of a refined scale adds a `jax.debug.callback`,
which JAX supports on every backend but cannot lower for another platform than the one
present, so it is exported without it.
"""

import pytest
from flax import nnx
from jax import export

from jax_refine import RefineConfig, ops, refine
from jax_refine.model import TINY_LAMA, Lama, eval_mode


@pytest.mark.parametrize("kernels", ops.KERNELS)
@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.slow
def test_every_program_exports_for_cuda_and_tpu(kernels, compute_dtype):
    model = eval_mode(Lama(TINY_LAMA, rngs=nnx.Rngs(0), kernels=kernels))
    config = RefineConfig(min_side=32, n_iters=3, early_stop=0.01, tile_pixels=80 * 16, compute_dtype=compute_dtype)
    programs = refine.programs(model, 64, 80, config=config) + refine.programs(model, 64, 80, multiscale=False)
    assert [p.padded_size for p in programs] == [(32, 40), (64, 80), (64, 80)]
    for program in programs:
        kwargs = dict(program.kwargs, report=False) if "report" in program.kwargs else program.kwargs
        exported = export.export(program.function, platforms=("cuda", "tpu"))(*program.args, **kwargs)
        assert exported.platforms == ("cuda", "tpu") and exported.mlir_module_serialized
