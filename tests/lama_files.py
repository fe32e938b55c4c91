"""Big-LaMa's published formats, made from the golden tiny generator (tinylama.ckpt).

- `torchscript(path, canary=None)`: traced like LaMa's bin/to_jit.py (a JITWrapper whose
  `model` is the inpainting module holding `generator`, forward(image, mask) -> the
  composite), so the keys read `model.generator.model.1...`. With `canary`, the inpainting
  module also holds a scripted module whose TorchScript `__setstate__` creates the file
  `canary` when the archive is loaded by `torch.jit.load`. Needs torch.
- `lama_zip(path)`: LaMa's big-lama.zip layout (big-lama/config.yaml, big-lama/models/best.ckpt).
- `lama_folder(path)`: the folder that zip unpacks to.
- `safetensors(path)`: the generator tensors under `generator.`, through safetensors' numpy API.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from conftest import GOLDEN

CONFIG_YAML = "generator:\n  kind: ffc_resnet\n  ngf: 8\n  n_downsampling: 3\n  n_blocks: 2\n"


def golden_generator() -> dict[str, np.ndarray]:
    """The tiny generator's state_dict (keys without prefix), read by the converter's reader."""
    from jax_refine.convert import read_generator

    state, _ = read_generator(GOLDEN / "tinylama.ckpt")
    return {k: np.array(v) for k, v in state.items()}


def lama_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big-lama/config.yaml", CONFIG_YAML)
        z.write(GOLDEN / "tinylama.ckpt", "big-lama/models/best.ckpt")
    return path


def lama_folder(path: Path) -> Path:
    (path / "models").mkdir(parents=True)
    (path / "config.yaml").write_text(CONFIG_YAML)
    (path / "models" / "best.ckpt").write_bytes((GOLDEN / "tinylama.ckpt").read_bytes())
    return path


def safetensors(path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({f"generator.{k}": v for k, v in golden_generator().items()}, str(path))
    return path


def torchscript(path: Path, canary: Path | None = None) -> Path:
    from reference.lama_torch import FFCResNetGenerator

    generator = FFCResNetGenerator(ngf=8, n_downsampling=3, n_blocks=2)
    generator.load_state_dict({k: torch.from_numpy(v) for k, v in golden_generator().items()})
    scripted = None if canary is None else torch.jit.script(_Canary(str(canary)))
    wrapper = _JITWrapper(_Inpainting(generator, scripted)).eval()
    image, mask = torch.rand(1, 3, 64, 64), (torch.rand(1, 1, 64, 64) > 0.5).float()
    torch.jit.trace(wrapper, (image, mask), strict=False).save(str(path))
    return path


try:  # torch builds the TorchScript fixtures only; the other formats need none
    import torch
except ImportError:
    torch = None

if torch is not None:  # module-level classes: torch.jit.script reads their source

    class _Inpainting(torch.nn.Module):
        """Stands for LaMa's DefaultInpaintingTrainingModule in predict-only mode."""

        def __init__(self, generator, canary):
            super().__init__()
            self.generator = generator
            if canary is not None:
                self.canary = canary

        def forward(self, batch: dict[str, torch.Tensor]):
            image, mask = batch["image"], batch["mask"]
            predicted = self.generator(torch.cat([image * (1 - mask), mask], 1))
            return {"inpainted": mask * predicted + (1 - mask) * image}

    class _JITWrapper(torch.nn.Module):
        """LaMa's bin/to_jit.py wrapper."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, image, mask):
            return self.model({"image": image, "mask": mask})["inpainted"]

    class _Canary(torch.nn.Module):
        """A scripted module whose TorchScript __setstate__ creates the file `path`
        (torch.from_file with shared=True creates it) when torch.jit.load runs it."""

        def __init__(self, path: str):
            super().__init__()
            self.path = path
            self.weight = torch.nn.Parameter(torch.ones(2))

        def forward(self, x):
            return x * self.weight.sum()

        @torch.jit.export
        def __getstate__(self):
            return (self.path, self.weight, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, torch.Tensor, bool]):
            self.path = state[0]
            self.training = state[2]
            self.weight = state[1] + 0 * torch.from_file(state[0], shared=True, size=2)
