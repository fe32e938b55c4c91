"""The JAX versions jax-refine supports: private JAX APIs stay optional (jax_refine/_compat.py),
and installing into a runtime that has JAX never leaves JAX and its plugin apart
(jax_refine/_install.py, which the notebook's install cell runs).
"""

import ast
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from jax_refine import _install
from jax_refine.files import UsageError
from wheels import wheel

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jax_refine"


def _private_jax_imports():
    """{(file name, module, inside a function)} of every jax._src import in jax_refine."""
    found = set()
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(n) for f in functions for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jax._src"):
                names = [f"{node.module}.{a.name}" if node.module == "jax._src" else node.module for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("jax._src")]
            else:
                continue
            found |= {(path.name, name, id(node) in nested) for name in names}
    return found


def test_private_jax_apis_only_in_compat_and_imported_lazily():
    found = _private_jax_imports()
    assert found == {("_compat.py", "jax._src.distributed", True)}


def test_import_works_without_the_private_jax_modules():
    """`import jax_refine` with every jax._src module it uses made unavailable: a meta-path hook
    refuses them (after `import jax`, which imports them itself; jax keeps its own references).
    Only the feature that needs one (multi-process folder jobs) reports that it is unavailable."""
    blocked = sorted(name for _, name, _ in _private_jax_imports())
    script = f"""
import importlib.abc, sys
import jax
blocked = {blocked!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in blocked:
            raise ImportError(f"{{name}} is unavailable (test)")
sys.meta_path.insert(0, Refuse())
for name in blocked:
    sys.modules.pop(name)
    parent, _, child = name.rpartition(".")
    delattr(sys.modules[parent], child)
import jax_refine
from jax_refine import _compat, jobs
print("imported", jax_refine.__version__)
print("single process:", jobs._Group(True, "job").count)
try:
    _compat.coordination_client()
except jax_refine.files.UsageError as e:
    print("UsageError:", e)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[:2] == ["imported 0.1.0", "single process: 1"]
    assert lines[2].startswith("UsageError: multi-process folder jobs are unavailable with jax ")
    assert "jax._src.distributed.global_state.client" in lines[2] and "unavailable (test)" in lines[2]


def test_coordination_client_is_found_on_this_jax():
    from jax_refine import _compat

    assert _compat.coordination_client() is None  # jax.distributed is not initialised here


def test_lower_bounds_are_the_oldest_versions_ci_tests():
    """pyproject.toml's lower bounds, its extras' and .ci/oldest.txt (CI's second venv) agree."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    oldest = dict(line.split("==") for line in (ROOT / ".ci" / "oldest.txt").read_text().splitlines()
                  if line and not line.startswith("#"))
    bounds = dict(re.findall(r'"(jax|flax|optax|orbax-checkpoint)>=([0-9.]+)"', pyproject))
    assert bounds == {name: version for name, version in oldest.items() if name != "jaxlib"}
    assert oldest["jaxlib"] == oldest["jax"]
    extras = re.findall(r'(\w+) = \["jax\[(\w+)\]>=([0-9.]+)"\]', pyproject)
    assert extras == [(e, e, oldest["jax"]) for e in ("cuda12", "cuda13", "tpu")]


CUDA12_OLD = {"jax": "0.7.2", "jaxlib": "0.7.2", "jax-cuda12-plugin": "0.7.2", "jax-cuda12-pjrt": "0.7.2"}


def test_plan_keeps_a_jax_that_satisfies_the_bound():
    versions = {**{name: "0.10.2" for name in CUDA12_OLD}, "numpy": "2.0.0"}
    reqs, pins, what = _install.plan(versions, ["jax>=0.8.1", "numpy>=2.0"])
    assert reqs == ["jax>=0.8.1", "numpy>=2.0"]
    assert pins == ["jax==0.10.2", "jaxlib==0.10.2", "jax-cuda12-plugin==0.10.2", "jax-cuda12-pjrt==0.10.2"]
    assert what.startswith("JAX is kept")


@pytest.mark.parametrize("versions, target", [
    (CUDA12_OLD, "jax[cuda12]>=0.8.1"),
    ({"jax": "0.7.2", "jaxlib": "0.7.2", "jax-cuda13-plugin": "0.7.2"}, "jax[cuda13]>=0.8.1"),
    ({"jax": "0.7.2", "jaxlib": "0.7.2", "libtpu": "0.0.17"}, "jax[tpu]>=0.8.1"),
    ({"jax": "0.7.2", "jaxlib": "0.7.2"}, "jax>=0.8.1"),
    ({**CUDA12_OLD, "jax": "0.10.2", "jaxlib": "0.10.2"}, "jax[cuda12]>=0.8.1"),  # a plugin left behind
])
def test_plan_moves_jax_with_its_plugin(versions, target):
    reqs, pins, what = _install.plan(versions, ["jax>=0.8.1", "numpy>=2.0"])
    assert reqs == ["jax>=0.8.1", "numpy>=2.0", target] and pins == []
    assert f'pip install "{target}"' in what


def test_plan_stops_when_the_accelerator_is_unclear():
    with pytest.raises(_install.InstallError, match=r'cuda12 and tpu .*pip install -U "jax\[cuda12\]>=0.8.1"'):
        _install.plan({**CUDA12_OLD, "libtpu": "0.0.17"}, ["jax>=0.8.1"])


def _jax_stand_ins(folder, version):
    """Stand-ins of jax, jaxlib, jax-cuda12-plugin and jax-cuda12-pjrt `version`, with the
    version coupling of the real wheels' metadata (jax 0.8.1's and jax-cuda12-plugin 0.10.2's
    Requires-Dist): jax pins jaxlib to its own version, its extras pin the plugin, the plugin
    pins its pjrt; jax's third-party dependencies (numpy, scipy, ml_dtypes, ...) are left out."""
    pin = f"<={version},>={version}"
    wheel(folder, "jax", version, "jax", extras=["cuda12", "cuda13", "tpu"], requires=[
        f"jaxlib{pin}",
        f'jaxlib{pin}; extra == "cuda12"', f'jax-cuda12-plugin[with-cuda]{pin}; extra == "cuda12"',
        f'jaxlib{pin}; extra == "cuda13"', f'jax-cuda13-plugin[with-cuda]{pin}; extra == "cuda13"',
        f'jaxlib{pin}; extra == "tpu"', 'libtpu==0.0.30.*; extra == "tpu"'])
    wheel(folder, "jaxlib", version, "jaxlib")
    wheel(folder, "jax-cuda12-plugin", version, "jax_cuda12_plugin", extras=["with-cuda"], requires=[
        f"jax-cuda12-pjrt=={version}",
        'nvidia-cublas-cu12>=12.1.3.1; sys_platform == "linux" and extra == "with-cuda"'])
    wheel(folder, "jax-cuda12-pjrt", version, "jax_plugins")


@pytest.mark.slow
def test_install_never_leaves_jax_and_its_plugin_apart(tmp_path):
    """A runtime with an old JAX and its CUDA 12 plugin, offline against a folder of wheels.

    The wheels are small stand-ins built here, not the real ones: the real jaxlib and
    jax-cuda12-pjrt wheels are 85 and 175 MB per version (two versions, plus nvidia-* wheels of
    GBs for the plugin's `with-cuda` extra), too much for CI to fetch and install for a test of
    which versions pip picks. _install.py only reads installed versions and requirements, and
    pip resolves the stand-ins' metadata exactly as it would the real wheels' (see
    `_jax_stand_ins`). jax-refine's stand-in requires the `jax>=` lower bound of pyproject.toml.

    1. The old JAX, its plugin and libtpu: two accelerators, so nothing changes and the logic
       says what to run. 2. Without libtpu: jax, jaxlib, plugin and pjrt all move to the new
       version. 3. Run again: the JAX that now satisfies the bound is kept, nothing changes.
    A plain `pip install jax-refine` would upgrade jax and jaxlib alone (checked first, dry run).
    """
    bound = re.search(r'"jax>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    old, new = "0.7.2", bound
    assert _install.release(old) < _install.release(bound)
    wheels, before = tmp_path / "wheels", tmp_path / "installed"
    wheels.mkdir()
    before.mkdir()
    _jax_stand_ins(wheels, new)
    wheel(wheels, "nvidia-cublas-cu12", "12.9.1.4", "nvidia_cublas_cu12")
    _jax_stand_ins(before, old)
    wheel(before, "libtpu", "0.0.17", "libtpu")
    package = wheel(tmp_path, "jax-refine", "0.1.0", "jax_refine", requires=[f"jax>={bound}"],
                    extra_files={"jax_refine/_install.py": (PACKAGE / "_install.py").read_text()})
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def run(*args):
        return subprocess.run([python, *args], capture_output=True, text=True, env=env, timeout=300)

    def versions():
        listed = run("-m", "pip", "list", "--format=freeze").stdout.split()
        return dict(line.split("==") for line in listed
                    if line.startswith(("jax", "libtpu")) and not line.startswith("jax-refine=="))

    assert run("-m", "pip", "install", "-q", "--no-deps", *before.iterdir(), package).returncode == 0
    installed = versions()
    naive = run("-m", "pip", "install", "--dry-run", package)
    assert f"Would install jax-{new} jaxlib-{new}\n" in naive.stdout  # the plugin would stay at 0.7.2

    found = run("-c", "import importlib.util as u; print(*u.find_spec('jax_refine').submodule_search_locations)")
    install = [str(Path(found.stdout.strip()) / "_install.py")]  # as the notebook's install cell finds it
    stop = run(*install)
    assert stop.returncode == 1 and versions() == installed
    assert "cuda12 and tpu are installed" in stop.stderr and f'pip install -U "jax[cuda12]>={bound}"' in stop.stderr

    assert run("-m", "pip", "uninstall", "-q", "-y", "libtpu").returncode == 0
    upgrade = run(*install)
    assert upgrade.returncode == 0, upgrade.stderr
    assert versions() == {"jax": new, "jaxlib": new, "jax-cuda12-plugin": new, "jax-cuda12-pjrt": new}
    assert f"jax {old} -> {new}" in upgrade.stdout and f"jax-cuda12-plugin {old} -> {new}" in upgrade.stdout
    assert "No restart needed" in upgrade.stdout

    again = run(*install)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].startswith(f"JAX is kept: jax=={new}, jaxlib=={new}, jax-cuda12-plugin=={new}")
    assert "Changed: nothing" in again.stdout
