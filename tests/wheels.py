"""Minimal local wheels for offline pip tests (tests/test_notebook.py, tests/test_versions.py)."""

import base64
import hashlib
import zipfile


def wheel(directory, name, version, module, requires=(), extra_files=None, extras=()):
    """A minimal pure-Python wheel of distribution `name` providing `module` (and `extra_files`,
    {path in the wheel: text}); `requires`: Requires-Dist lines (with markers), `extras`: the
    Provides-Extra names."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {f"{module}/__init__.py": f"__version__ = {version!r}\n",
             f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                           + "".join(f"Provides-Extra: {e}\n" for e in extras)
                                           + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             **(extra_files or {})}
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(t.encode())}" for n, t in files.items()] + [f"{dist}.dist-info/RECORD,,"]
    path = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, t in files.items():
            z.writestr(n, t)
        z.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return path
