"""notebooks/quickstart.ipynb runs top to bottom offline (nbclient), unchanged.

jax_refine is importable in the kernel (this checkout on PYTHONPATH), so the install cell
installs nothing; `load("big-lama")` downloads from a loopback server serving LaMa's zip
layout of the golden tiny generator (JAX_REFINE_BIG_LAMA_URL / _SHA256) into a fresh cache;
outside Colab the inputs are the repository's example.
"""

import hashlib
import os
from pathlib import Path

import pytest

import lama_files
from test_hub import FileServer

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    data = lama_files.lama_zip(tmp_path / "served.zip").read_bytes()
    server = FileServer({"big-lama.pt": data})
    try:
        monkeypatch.setenv("JAX_REFINE_HOME", str(tmp_path / "cache"))
        monkeypatch.setenv("JAX_REFINE_BIG_LAMA_URL", server.url("big-lama.pt"))
        monkeypatch.setenv("JAX_REFINE_BIG_LAMA_SHA256", hashlib.sha256(data).hexdigest())
        # the kernel is a new process in tmp_path: make this checkout importable there too
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        (tmp_path / "examples").symlink_to(ROOT / "examples")
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        server.close()

    outputs = {tag: [o for c in nb.cells if tag in c.metadata.get("tags", []) for o in c.get("outputs", [])]
               for tag in ("install", "big-lama", "inputs", "results", "bundled")}
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert "nothing to install, no restart needed" in text
    assert "devices: [CpuDevice(id=0)]" in text
    assert server.requests == ["/big-lama.pt"]  # big-lama by name, downloaded once
    assert (tmp_path / "cache" / "models" / "big-lama" / "jax_refine.json").is_file()
    assert "examples/dune.png (1024, 640)" in text
    pictures = {tag: [o for o in outs if "image/png" in o.get("data", {})] for tag, outs in outputs.items()}
    assert len(pictures["results"]) == 1 and len(pictures["bundled"]) == 1  # input|mask|plain|refined; bundled
    assert "input | mask | plain LaMa | refined" in text
