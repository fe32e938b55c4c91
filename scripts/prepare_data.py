#!/usr/bin/env python
"""Fetch the training and evaluation photographs of the bundled default model into data/.

    python scripts/prepare_data.py               # data/ beside this script's repository
    python scripts/prepare_data.py --data DIR --no-skimage

Sources (both from package registries, nothing else is downloaded):

* Debian's `mate-backgrounds` (GPL-2+): its 12 `nature/` wallpapers are real photographs
  (macro shots of flowers, leaves, water, a landscape, a storm, wood). The `abstract/`
  and `desktop/` wallpapers are graphics or paintings (stripes, gradients, logos, the
  "Elephants" painting) and are not used. Fetched with `apt-get download` + `dpkg -x`.
* scikit-image's bundled sample images (each CC0 or public domain per its docstring):
  the colour photos astronaut, chelsea, coffee, rocket and the greyscale photos camera,
  brick, grass, gravel. Fetched with `pip download --no-deps scikit-image==VERSION` and
  read from the wheel, so scikit-image is never installed. Skipped with --no-skimage.

Split: the photos in HELDOUT (4 mate-backgrounds photos, 1680-2560 px long side: a water
drop, flowers with a ladybird, a dune landscape with sea and sky, a wood texture) are for
evaluation only and must never be trained on; all others are for training.

Writes data/photos/<source>/<file> (the packaged files, byte for byte), data/licenses/
(the packages' copyright files) and data/manifest.json listing every photo with its path,
source package and version, copyright, license, size, sha256 and split. Running it again
downloads nothing when the files are already there and rewrites the same manifest.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MANIFEST_VERSION = 1
REPO = Path(__file__).resolve().parents[1]

MATE_PACKAGE = "mate-backgrounds"
MATE_DIR = "usr/share/backgrounds/mate"
MATE_COPYRIGHT = "usr/share/doc/mate-backgrounds/copyright"
# every photograph of the package (its nature/ folder), by path below MATE_DIR
MATE_PHOTOS = [
    "nature/Aqua.jpg", "nature/Blinds.jpg", "nature/Dune.jpg", "nature/FreshFlower.jpg",
    "nature/Garden.jpg", "nature/GreenMeadow.jpg", "nature/LadyBird.jpg", "nature/RainDrops.jpg",
    "nature/Storm.jpg", "nature/TwoWings.jpg", "nature/Wood.jpg", "nature/YellowFlower.jpg",
]

SKIMAGE_PACKAGE = "scikit-image"
SKIMAGE_VERSION = "0.26.0"
# file in skimage/data -> (copyright / provenance, license), from the skimage.data docstrings
SKIMAGE_PHOTOS = {
    "astronaut.png": ("NASA (Eileen Collins), NASA Great Images database", "public domain"),
    "chelsea.png": ("Stefan van der Walt", "CC0"),
    "coffee.png": ("Rachel Michetti", "CC0"),
    "rocket.jpg": ("SpaceX (Falcon 9 / DSCOVR launch)", "public domain"),
    "camera.png": ("Lav Varshney", "CC0"),
    "brick.png": ("CC0Textures Bricks25, transformed by scikit-image", "CC0"),
    "grass.png": ("CC0Textures, cropped by scikit-image", "CC0"),
    "gravel.png": ("CC0Textures Gravel04, rescaled by scikit-image", "CC0"),
}

# Held out for evaluation: never used for training (names as in the manifest).
HELDOUT = ["mate-backgrounds/Aqua", "mate-backgrounds/LadyBird", "mate-backgrounds/Dune", "mate-backgrounds/Wood"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data", help="output folder (default: %(default)s)")
    parser.add_argument("--no-skimage", action="store_true", help="leave out scikit-image's sample photos")
    args = parser.parse_args(argv)
    data = args.data.absolute()
    entries = fetch_mate(data)
    if not args.no_skimage:
        entries += fetch_skimage(data)
    manifest = build_manifest(data, entries)
    (data / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    counts = {split: sum(p["split"] == split for p in manifest["photos"]) for split in ("train", "heldout")}
    print(f"{data / 'manifest.json'}: {counts['train']} training photos, {counts['heldout']} held out")
    return 0


# --------------------------------------------------------------------------------------
# mate-backgrounds (Debian)
# --------------------------------------------------------------------------------------


def fetch_mate(data: Path) -> list[dict]:
    out = data / "photos" / MATE_PACKAGE
    source_file = out / "SOURCE.json"
    wanted = [out / Path(p).name for p in MATE_PHOTOS]
    if not (source_file.is_file() and all(f.is_file() for f in wanted)):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            deb = _apt_download(MATE_PACKAGE, tmp)
            version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                                     text=True).stdout.strip()
            root = tmp / "x"
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
            out.mkdir(parents=True, exist_ok=True)
            for rel in MATE_PHOTOS:
                shutil.copyfile(root / MATE_DIR / rel, out / Path(rel).name)
            licenses = data / "licenses"
            licenses.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / MATE_COPYRIGHT, licenses / f"{MATE_PACKAGE}.copyright")
            source_file.write_text(json.dumps({"package": MATE_PACKAGE, "kind": "debian", "version": version,
                                               "deb": deb.name}, indent=2) + "\n")
    source = json.loads(source_file.read_text())
    stanzas = parse_debian_copyright((data / "licenses" / f"{MATE_PACKAGE}.copyright").read_text())
    entries = []
    for rel in MATE_PHOTOS:
        stanza = next((s for s in stanzas if any(fnmatch.fnmatch(rel, pat) for pat in s.get("Files", "").split())),
                      None)
        if stanza is None:
            raise SystemExit(f"{MATE_PACKAGE}: no copyright stanza for {rel}")
        entries.append(dict(
            name=f"{MATE_PACKAGE}/{Path(rel).stem}", path=str((out / Path(rel).name).relative_to(data)),
            source=MATE_PACKAGE, source_kind="debian", version=source["version"],
            original_path=f"/{MATE_DIR}/{rel}", copyright=" / ".join(stanza["Copyright"].splitlines()),
            license=stanza["License"].splitlines()[0], license_file=f"licenses/{MATE_PACKAGE}.copyright"))
    return entries


def _apt_download(package: str, folder: Path) -> Path:
    """`apt-get download package` into folder (running `apt-get update` once if needed)."""
    def download():
        return subprocess.run(["apt-get", "download", package], cwd=folder, capture_output=True, text=True)

    result = download()
    if result.returncode != 0:
        print(f"apt-get download {package} failed ({result.stderr.strip()}); running apt-get update", file=sys.stderr)
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        result = download()
        if result.returncode != 0:
            raise SystemExit(f"apt-get download {package} failed: {result.stderr.strip()}")
    debs = sorted(folder.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise SystemExit(f"apt-get download {package}: expected one .deb in {folder}, found {debs}")
    return debs[0]


def parse_debian_copyright(text: str) -> list[dict]:
    """The paragraphs of a machine-readable debian/copyright file as {field: value} dicts
    (continuation lines joined with newlines, the ' .' blank-line marker kept)."""
    stanzas, current, field = [], {}, None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                stanzas.append(current)
            current, field = {}, None
        elif line[0] in " \t" and field:
            current[field] += "\n" + line.strip()
        elif ":" in line:
            field, value = line.split(":", 1)
            current[field] = value.strip()
    for s in stanzas:  # "Files: a\n b" -> space-separated patterns
        if "Files" in s:
            s["Files"] = " ".join(s["Files"].split())
        if "Copyright" in s:
            s["Copyright"] = "\n".join(x for x in s["Copyright"].splitlines() if x)
    return stanzas


# --------------------------------------------------------------------------------------
# scikit-image (PyPI wheel, read without installing)
# --------------------------------------------------------------------------------------


def fetch_skimage(data: Path) -> list[dict]:
    out = data / "photos" / SKIMAGE_PACKAGE
    source_file = out / "SOURCE.json"
    if not (source_file.is_file() and all((out / name).is_file() for name in SKIMAGE_PHOTOS)):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            f"{SKIMAGE_PACKAGE}=={SKIMAGE_VERSION}", "-d", tmp], check=True)
            wheels = sorted(Path(tmp).glob("scikit_image-*.whl"))
            if len(wheels) != 1:
                raise SystemExit(f"pip download {SKIMAGE_PACKAGE}: expected one wheel, found {wheels}")
            out.mkdir(parents=True, exist_ok=True)
            licenses = data / "licenses"
            licenses.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheels[0]) as z:
                for name in SKIMAGE_PHOTOS:
                    (out / name).write_bytes(z.read(f"skimage/data/{name}"))
                license_name = next(n for n in z.namelist() if n.endswith(".dist-info/LICENSE.txt"))
                (licenses / f"{SKIMAGE_PACKAGE}.LICENSE.txt").write_bytes(z.read(license_name))
            source_file.write_text(json.dumps({"package": SKIMAGE_PACKAGE, "kind": "pypi", "version": SKIMAGE_VERSION,
                                               "wheel": wheels[0].name}, indent=2) + "\n")
    source = json.loads(source_file.read_text())
    return [dict(name=f"{SKIMAGE_PACKAGE}/{Path(name).stem}", path=str((out / name).relative_to(data)),
                 source=SKIMAGE_PACKAGE, source_kind="pypi", version=source["version"],
                 original_path=f"skimage/data/{name}", copyright=holder, license=license,
                 license_file=f"licenses/{SKIMAGE_PACKAGE}.LICENSE.txt (code; images: see skimage.data docstrings)")
            for name, (holder, license) in SKIMAGE_PHOTOS.items()]


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def build_manifest(data: Path, entries: list[dict]) -> dict:
    from PIL import Image

    names = {e["name"] for e in entries}
    missing = sorted(set(HELDOUT) - names)
    if missing:
        raise SystemExit(f"held-out photos missing from the sources: {missing}")
    photos = []
    for entry in entries:
        path = data / entry["path"]
        with Image.open(path) as img:
            width, height, mode = img.width, img.height, img.mode
        photos.append(dict(entry, width=width, height=height, mode=mode, sha256=_sha256(path),
                           split="heldout" if entry["name"] in HELDOUT else "train"))
    small = [p["name"] for p in photos if p["split"] == "heldout" and max(p["width"], p["height"]) < 1600]
    if small:
        raise SystemExit(f"held-out photos must be at least 1600 px on the long side: {small}")
    return {"format": "jax-refine-photos", "format_version": MANIFEST_VERSION, "heldout": HELDOUT, "photos": photos}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
