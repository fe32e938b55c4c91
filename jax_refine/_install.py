"""Install jax-refine's dependencies into a runtime that may already have JAX, never leaving
JAX and its accelerator plugin at different versions (the notebook's install cell runs this).

Standard library only: it runs before jax_refine is importable, as a script
(`python _install.py`) or through `runpy.run_path` (the notebook), after
`pip install --no-deps jax-refine` has put the package (and its requirements' metadata) in place.

- The installed JAX (jax, jaxlib and every accelerator plugin at jaxlib's version) satisfies
  jax-refine's lower bound: it is kept. The other requirements are installed with pip
  constraints that pin jax, jaxlib and the plugins at their installed versions.
- It does not: the whole stack is upgraded through the JAX extra of the plugin found
  (`jax[cuda12]`, `jax[cuda13]` or `jax[tpu]`; plain `jax` without a plugin), so pip moves
  jax, jaxlib and the plugin together.
- Plugins of two kinds (say CUDA 12 and TPU): nothing is installed; `InstallError` says
  exactly what to run.

It prints what changed and whether a restart is needed (a changed package was already imported
by the calling Python).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys
import tempfile

PACKAGE = "jax-refine"
# The accelerator plugins of each JAX extra: distributions whose version must equal jaxlib's
PLUGINS = {"cuda12": ("jax-cuda12-plugin", "jax-cuda12-pjrt"),
           "cuda13": ("jax-cuda13-plugin", "jax-cuda13-pjrt"),
           "tpu": ("libtpu",)}
LIBTPU = "libtpu"  # libtpu's versions (0.0.x) are its own: only its presence is read


class InstallError(RuntimeError):
    """The runtime's JAX cannot be brought in line automatically; the message says what to run."""


def installed() -> dict[str, str]:
    """{normalised distribution name: version} of everything installed (the first on sys.path,
    the one Python imports, where a name is installed twice)."""
    importlib.invalidate_caches()
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        if dist.metadata["Name"]:
            found.setdefault(_normalise(dist.metadata["Name"]), dist.version)
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version: "0.10.2" -> (0, 10, 2); "0.9.0.1" -> (0, 9, 0, 1)."""
    match = re.match(r"\d+(\.\d+)*", version)
    if match is None:
        raise InstallError(f"cannot read the version {version!r}")
    return tuple(int(part) for part in match.group().split("."))


def requirements(package: str = PACKAGE) -> list[str]:
    """The installed package's own requirements (no extras)."""
    try:
        found = importlib.metadata.requires(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise InstallError(f"{package} is not installed: run `pip install --no-deps SOURCE` first") from None
    return [r for r in found if not re.search(r"\bextra\s*==", r)]


def jax_bound(reqs: list[str]) -> str | None:
    """The lower bound of `jax` in the requirements ("jax>=0.8.1" -> "0.8.1"), None without one."""
    for req in reqs:
        match = re.fullmatch(r"jax\s*>=\s*([0-9.]+)\s*(;.*)?", req.strip())
        if match:
            return match.group(1)
    return None


def accelerators(versions: dict[str, str]) -> list[str]:
    """The JAX extras whose plugins are installed: "cuda12", "cuda13", "tpu"."""
    return [extra for extra, names in PLUGINS.items() if any(name in versions for name in names)]


def consistent(versions: dict[str, str], bound: str | None) -> str | None:
    """None when the installed JAX can be kept, else why not."""
    if "jax" not in versions:
        return "JAX is not installed"
    if bound is not None:
        for name in ("jax", "jaxlib"):
            if name in versions and release(versions[name]) < release(bound):
                return f"{name} {versions[name]} is older than {bound}"
    lib = versions.get("jaxlib")
    for extra in accelerators(versions):
        for name in PLUGINS[extra]:
            if name != LIBTPU and name in versions and versions[name] != lib:
                return f"{name} {versions[name]} differs from jaxlib {lib}"
    return None


def plan(versions: dict[str, str], reqs: list[str]) -> tuple[list[str], list[str], str]:
    """(pip requirements, pip constraints, what happens to JAX, in words)."""
    bound = jax_bound(reqs)
    why = consistent(versions, bound)
    if why is None:
        pins = [f"{name}=={versions[name]}" for name in ("jax", "jaxlib", *sum(PLUGINS.values(), ()))
                if name in versions]
        return reqs, pins, f"JAX is kept: {', '.join(pins)}"
    extras = accelerators(versions)
    spec = f">={bound}" if bound else ""
    if len(extras) > 1:
        raise InstallError(f"{why}, and plugins of {' and '.join(extras)} are installed, so the extra to upgrade "
                           f"with is unclear. Run the one of your accelerator, e.g. "
                           f"`pip install -U \"jax[{extras[0]}]{spec}\"`, then this install again.")
    if "jax" not in versions:
        return reqs, [], "No JAX installed before: pip installs the JAX that jax-refine requires"
    target = f"jax[{extras[0]}]{spec}" if extras else f"jax{spec}"
    return [*reqs, target], [], f"{why}: JAX and its plugin move to one version, as by `pip install \"{target}\"`"


def restart_needed(changed: list[str], loaded: set[str]) -> list[str]:
    """The changed distributions whose modules `loaded` (module names) holds."""
    owners = importlib.metadata.packages_distributions()
    hit = {_normalise(d) for module, dists in owners.items() if module in loaded for d in dists}
    return [name for name in changed if name in hit]


def ensure(loaded: set[str] = frozenset(), pip: tuple[str, ...] = ()) -> bool:
    """Install jax-refine's requirements as described above; print what happened. True when
    the caller must restart (a package it had imported changed). `pip`: extra pip options."""
    before = installed()
    reqs, pins, what = plan(before, requirements())
    print(what)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="jax-refine-pins-") as constraints:
        constraints.write("".join(f"{pin}\n" for pin in pins))
        constraints.flush()
        command = [sys.executable, "-m", "pip", "install", "-q", *pip, *reqs, "-c", constraints.name]
        done = subprocess.run(command)
    if done.returncode:
        raise InstallError(f"pip failed (exit {done.returncode}); the command was: {' '.join(command)}")
    after = installed()
    broken = consistent(after, jax_bound(reqs)) if "jax" in after else None
    if broken is not None:
        raise InstallError(f"after the install, {broken}: run `pip install -U \"jax[EXTRA]\"` with your "
                           f"accelerator's extra (cuda12, cuda13, tpu)")
    changed = sorted(name for name in after if before.get(name) != after[name])
    print("Changed:", ", ".join(f"{name} {before.get(name, '(none)')} -> {after[name]}" for name in changed)
          if changed else "nothing")
    stale = restart_needed(changed, loaded)
    if stale:
        print("Restart the runtime now (Colab: Runtime > Restart session), then run the notebook again from the "
              "next cell: pip changed packages this Python had already imported:", ", ".join(stale))
    else:
        print("No restart needed (no package this Python had already imported was changed).")
    return bool(stale)


if __name__ == "__main__":
    try:
        ensure(pip=tuple(sys.argv[1:]))
    except InstallError as e:
        sys.exit(f"jax-refine install: {e}")
