"""The one place jax-refine reaches into JAX's private modules (`jax._src`), where JAX has no
public API. Each use is imported when its feature runs, never at `import jax_refine`, and a JAX
without it makes only that feature raise UsageError ("unavailable"). tests/test_versions.py
checks both.
"""

from .files import UsageError


def coordination_client():
    """The key-value store client of jax.distributed's coordination service (the processes of a
    multi-process folder job compare plans and share summaries through it). JAX 0.8-0.10 have no
    public API for it: it is `jax._src.distributed.global_state.client`."""
    import jax

    try:
        from jax._src import distributed

        return distributed.global_state.client
    except (ImportError, AttributeError) as e:
        raise UsageError(f"multi-process folder jobs are unavailable with jax {jax.__version__}: they need "
                         f"jax._src.distributed.global_state.client, which this JAX lacks ({e})") from e
