"""notebooks/quickstart.ipynb runs top to bottom on the bundled model (nbclient).

Only the download cell (tag "download") is replaced: instead of fetching big-lama.zip it puts
a small checkpoint in LaMa's own layout (the golden tinylama.ckpt) where the zip would unpack
best.ckpt, so the conversion and loading cells run for real.
"""

import os
from pathlib import Path

import pytest

from conftest import GOLDEN

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    download = [c for c in nb.cells if "download" in c.metadata.get("tags", [])]
    assert len(download) == 1
    download[0].source = ("import os, shutil\nos.makedirs('big-lama/models', exist_ok=True)\n"
                          f"shutil.copy({str(GOLDEN / 'tinylama.ckpt')!r}, 'big-lama/models/best.ckpt')")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    # the kernel is a new process in tmp_path: make this checkout importable there too
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    assert (tmp_path / "big-lama-jax" / "jax_refine.json").is_file()
    pictures = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if "image/png" in o.get("data", {})]
    assert len(pictures) == 3  # bundled model before/after, plain vs refined, converted model
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
