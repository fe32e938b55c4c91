"""Make the pix2pixhd_global golden fixtures with LaMa's own generator code.

    python tests/golden/make_pix2pixhd_golden.py LAMA_CHECKOUT [OUT_DIR]

LAMA_CHECKOUT is a checkout of github.com/advimman/lama at LAMA_COMMIT (its
`saicinpainting` package is imported from there); OUT_DIR defaults to this folder.
Needs torch and Pillow only: the two packages LaMa's generator modules import without
using them here (kornia, for the spatial transform of FFC blocks, and pytorch_lightning,
for `seed_everything`) are replaced by stubs that raise if called.

Writes
- `tinypix2pixhd.ckpt`: a Lightning-style checkpoint of LaMa's `GlobalGenerator` (the
  `pix2pixhd_global` generator of LaMa's lama-regular / big-lama-regular configs) in a
  tiny configuration, with seeded random weights and BatchNorm statistics
  (`tests/reference/lama_torch.randomize`), a `hyper_parameters.generator` entry as LaMa's
  training saves it, and one discriminator tensor that a converter must skip;
- `pix2pixhd_predict_<name>.npy` / `_predicted_image.npy` / `.json`: LaMa's plain
  prediction of that generator on the golden images (composite, raw generator output).

Prediction follows LaMa's bin/predict.py with its DefaultInpaintingTrainingModule: the
image (H, W, 3) and mask read as float32 / 255, both padded bottom/right to a multiple of 8
with numpy's 'symmetric' mode, mask = (mask > 0), generator on concat(image * (1 - mask),
mask), composite mask * predicted + (1 - mask) * image, crop to (H, W).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np

LAMA_COMMIT = "786f5936b27fb3dacd2b1ad799e4de968ea697e7"
SEED = 7
GENERATOR = dict(kind="pix2pixhd_global", input_nc=4, output_nc=3, ngf=8, n_downsampling=3, n_blocks=2,
                 conv_kind="default", add_out_act="sigmoid")
CASES = ["astronaut_251x317", "chelsea_240x296"]
MODULO = 8
HERE = Path(__file__).resolve().parent


def _stub(name: str, **attrs):
    def unavailable(*args, **kwargs):
        raise RuntimeError(f"{name} is a stub in make_pix2pixhd_golden.py")

    module = types.ModuleType(name)
    for attr in attrs:
        setattr(module, attr, unavailable)
    sys.modules.setdefault(name, module)


def lama_global_generator(lama_checkout: Path):
    """LaMa's GlobalGenerator class, imported from the checkout."""
    for name in ("kornia", "kornia.geometry"):
        _stub(name)
    _stub("kornia.geometry.transform", rotate=None)
    _stub("pytorch_lightning", seed_everything=None)
    sys.path.insert(0, str(lama_checkout))
    from saicinpainting.training.modules import make_generator

    return lambda **kwargs: make_generator(None, **kwargs)


def read_case(name: str):
    from PIL import Image

    image = np.asarray(Image.open(HERE / f"{name}.png").convert("RGB"), np.float32) / 255
    mask = np.asarray(Image.open(HERE / f"{name}_mask.png").convert("L"), np.float32) / 255
    return image, mask


def lama_predict(torch, generator, image, mask):
    """(inpainted, predicted), (H, W, 3) float32, as LaMa's predict path computes them."""
    h, w = image.shape[:2]
    pad = ((0, -h % MODULO), (0, -w % MODULO))
    image_t = torch.from_numpy(np.pad(image.transpose(2, 0, 1), ((0, 0),) + pad, mode="symmetric"))[None]
    mask_t = torch.from_numpy(np.pad(mask[None], ((0, 0),) + pad, mode="symmetric"))[None]
    mask_t = (mask_t > 0) * 1
    with torch.no_grad():
        predicted = generator(torch.cat([image_t * (1 - mask_t), mask_t], dim=1))
        inpainted = mask_t * predicted + (1 - mask_t) * image_t

    def hwc(t):
        return t[0, :, :h, :w].permute(1, 2, 0).numpy().astype(np.float32)

    return hwc(inpainted), hwc(predicted)


def main(lama_checkout: str, out_dir: str | None = None) -> None:
    import torch

    sys.path.insert(0, str(HERE.parent))
    from reference.lama_torch import randomize

    out = Path(out_dir) if out_dir else HERE
    torch.set_num_threads(2)
    make = lama_global_generator(Path(lama_checkout))
    generator = randomize(make(**GENERATOR), seed=SEED).eval()
    state = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    state["discriminator.model0.0.weight"] = torch.zeros(8, 3, 4, 4)  # not the generator's: skipped
    torch.save({"epoch": 1, "global_step": 10, "pytorch-lightning_version": "1.2.9", "state_dict": state,
                "hyper_parameters": {"generator": dict(GENERATOR)}}, out / "tinypix2pixhd.ckpt")
    parameters = sum(p.numel() for p in generator.parameters())
    for name in CASES:
        image, mask = read_case(name)
        inpainted, predicted = lama_predict(torch, generator, image, mask)
        np.save(out / f"pix2pixhd_predict_{name}.npy", inpainted)
        np.save(out / f"pix2pixhd_predict_{name}_predicted_image.npy", predicted)
        meta = {"image": f"{name}.png", "mask": f"{name}_mask.png", "checkpoint": "tinypix2pixhd.ckpt",
                "generator": GENERATOR, "parameters": parameters, "seed": SEED, "modulo": MODULO,
                "pad_mode": "symmetric", "lama_commit": LAMA_COMMIT, "torch": torch.__version__, "threads": 2}
        (out / f"pix2pixhd_predict_{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{parameters} parameters, {len(CASES)} cases written to {out}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.strip().splitlines()[2].strip())
    main(*sys.argv[1:])
