"""jax-refine: Big-LaMa inpainting in JAX with multi-scale feature refinement.

    import jax_refine
    jax_refine.configure_cpu()                           # on CPU: XLA's fast conv path (before any JAX computation)
    result = jax_refine.inpaint(image, mask)             # bundled default model
    result = jax_refine.inpaint(image, mask, "big-lama")  # Big-LaMa: downloaded and converted on first use
    model = jax_refine.load("big-lama")                  # or a converted checkpoint path, or None (bundled)
    result = jax_refine.inpaint(image, mask, model, config=jax_refine.RefineConfig(n_iters=10))
"""

__version__ = "0.1.0"

from ._platform import configure_cpu as configure_cpu
from .api import InpaintInfo as InpaintInfo
from .api import Progress as Progress
from .api import default_model as default_model
from .api import estimate as estimate
from .api import inpaint as inpaint
from .api import inpaint_batch as inpaint_batch
from .api import inpaint_batch_with_info as inpaint_batch_with_info
from .api import inpaint_with_info as inpaint_with_info
from .api import load as load
from .compile_cache import CompilationCacheWarning as CompilationCacheWarning
from .compile_cache import disable_compilation_cache as disable_compilation_cache
from .compile_cache import enable_compilation_cache as enable_compilation_cache
from .convert import convert as convert
from .images import LargeHoleWarning as LargeHoleWarning
from .jobs import JobInterrupted as JobInterrupted
from .jobs import JobSettings as JobSettings
from .jobs import JobSummary as JobSummary
from .jobs import inpaint_files as inpaint_files
from .checkpoint import save as save
from .checkpoint import CheckpointError as CheckpointError
from ._torch_pickle import UnsafePickleError as UnsafePickleError
from .model import BIG_LAMA as BIG_LAMA
from .model import TINY_LAMA as TINY_LAMA
from .model import Lama as Lama
from .model import LamaConfig as LamaConfig
from .memory import MemoryEstimate as MemoryEstimate
from .pix2pixhd import BIG_LAMA_REGULAR as BIG_LAMA_REGULAR
from .pix2pixhd import LAMA_REGULAR as LAMA_REGULAR
from .pix2pixhd import Pix2PixHD as Pix2PixHD
from .pix2pixhd import Pix2PixHDConfig as Pix2PixHDConfig
from .plan import RefineConfig as RefineConfig
from .refine import ScaleInfo as ScaleInfo

__all__ = [
    "BIG_LAMA", "BIG_LAMA_REGULAR", "LAMA_REGULAR", "TINY_LAMA", "CheckpointError", "CompilationCacheWarning",
    "InpaintInfo", "JobInterrupted", "JobSettings", "JobSummary", "Lama", "LamaConfig", "LargeHoleWarning", "MemoryEstimate",
    "Pix2PixHD", "Pix2PixHDConfig", "Progress", "RefineConfig", "ScaleInfo", "UnsafePickleError", "configure_cpu",
    "convert", "default_model", "disable_compilation_cache", "enable_compilation_cache", "estimate",
    "inpaint", "inpaint_batch", "inpaint_batch_with_info", "inpaint_files", "inpaint_with_info", "load", "save",
]
