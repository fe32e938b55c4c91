"""jax-refine: Big-LaMa inpainting in JAX with multi-scale feature refinement."""

__version__ = "0.1.0"
