"""notebooks/quickstart.ipynb runs top to bottom offline (nbclient), unchanged; its install
cell works in a fresh environment.

jax_refine is importable in the kernel (this checkout on PYTHONPATH), so the install cell
installs nothing; `load("big-lama")` downloads from a loopback server serving LaMa's zip
layout of the golden tiny generator (JAX_REFINE_BIG_LAMA_URL / _SHA256) into a fresh cache;
outside Colab the inputs are the repository's example.
"""

import hashlib
import importlib.util
import os
from pathlib import Path

import pytest

import lama_files
from file_server import FileServer
from wheels import wheel

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
    if importlib.util.find_spec("anywidget") is not None:  # the mask widget shown; nothing drawn: the example's mask
        drawn = [o for c in nb.cells if "draw" in c.metadata.get("tags", []) for o in c.get("outputs", [])]
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in drawn)
    assert "examples/dune_mask.png (1024, 640)" in text


@pytest.mark.slow
@pytest.mark.parametrize("preloaded", [False, True])
def test_install_cell_in_a_fresh_environment(tmp_path, preloaded):
    """The install cell as a fresh Colab runs it: jax_refine absent, PACKAGE_SOURCE edited to
    a wheel; it installs it, and asks for a restart exactly when pip changed a package the
    Python had already imported (here pillow 1.0 -> 2.0, offline from local wheels)."""
    import subprocess
    import venv

    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    [cell] = [c for c in nb.cells if "install" in c.metadata.get("tags", [])]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    package = wheel(wheels, "jax-refine", "9.9.9", "jax_refine", requires=["pillow>=2"],
                    extra_files={"jax_refine/_install.py": (ROOT / "jax_refine" / "_install.py").read_text()})
    wheel(wheels, "pillow", "2.0", "PIL")
    assert cell.source.count("PACKAGE_SOURCE = None") == 1  # the one line a user edits
    source = cell.source.replace("PACKAGE_SOURCE = None", f"PACKAGE_SOURCE = {str(package)!r}")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {"PATH": os.environ["PATH"], "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HOME": str(tmp_path)}
    old_pillow = wheel(tmp_path, "pillow", "1.0", "PIL")
    subprocess.run([python, "-m", "pip", "install", "-q", old_pillow], check=True, env=env, timeout=300)
    script = ("import PIL\n" if preloaded else "") + source
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    if preloaded:
        assert "Restart the runtime now" in done.stdout and "pillow 1.0 -> 2.0" in done.stdout
    else:
        assert "No restart needed" in done.stdout
    check = subprocess.run([python, "-c", "import jax_refine; print(jax_refine.__version__)"], capture_output=True,
                           text=True, env=env, timeout=60, cwd=tmp_path)
    assert check.stdout.strip() == "9.9.9"
    unset = subprocess.run([python, "-c", cell.source], capture_output=True, text=True, env=env, timeout=60,
                           cwd=tmp_path)
    assert unset.returncode == 0 and "already installed" in unset.stdout  # a second run installs nothing
