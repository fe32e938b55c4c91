"""Training checkpoints: the whole training state of a run, written atomically.

OUT/ckpt-<step>/ holds state.npz (every array of the state: generator, BatchNorm statistics,
optimisers, discriminator) and meta.json (step, training time, the keys of the arrays); the
last KEEP are kept. They restore a run exactly on the same machine (`--resume`). What goes
into the repository instead is an exported generator (`--init`): a fresh optimiser then
warms up again (see training/README.md).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

KEEP = 2


def _flat(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save(out: Path, state, meta: dict) -> Path:
    """Write ckpt-<step>/ atomically (a temporary folder, then rename); keep the last KEEP."""
    dst = out / f"ckpt-{meta['step']:08d}"
    tmp = out / f".{dst.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    flat = _flat(state)
    with open(tmp / "state.npz", "wb") as f:
        np.savez(f, **{f"a{i}": v for i, v in enumerate(flat.values())})
    (tmp / "meta.json").write_text(json.dumps(dict(meta, keys=list(flat)), indent=1) + "\n")
    if dst.exists():
        shutil.rmtree(dst)
    os.rename(tmp, dst)
    for old in found(out)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return dst


def found(out: Path) -> list[Path]:
    """The complete checkpoints of a run folder, oldest first."""
    return sorted(p for p in out.glob("ckpt-*") if p.is_dir() and (p / "meta.json").is_file())


def load(path: Path, template):
    """(state with the structure of `template`, meta) from a checkpoint folder."""
    meta = json.loads((path / "meta.json").read_text())
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    keys = [jax.tree_util.keystr(p) for p, _ in leaves]
    if keys != meta["keys"]:
        raise SystemExit(f"{path}: the checkpoint does not match this model/optimiser structure")
    with np.load(path / "state.npz") as z:
        arrays = [z[f"a{i}"] for i in range(len(keys))]
    for (p, leaf), a in zip(leaves, arrays):
        if tuple(leaf.shape) != a.shape:
            raise SystemExit(f"{path}: {jax.tree_util.keystr(p)} has shape {a.shape}, expected {leaf.shape}")
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template),
                                         [jnp.asarray(a, leaf.dtype) for (_, leaf), a in zip(leaves, arrays)])
    return state, meta
