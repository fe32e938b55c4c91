"""scripts/prepare_data.py without network: the copyright parser and the fixed split."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prepare_data.py"


@pytest.fixture(scope="module")
def prepare_data():
    spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_debian_copyright(prepare_data):
    text = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: X

Files: nature/A.jpg
       nature/B.jpg
Copyright: 2008, Someone <a@b.c>
           2009, Other
License: GPL-2+
Comment: see AUTHORS

License: GPL-2+
 This package is free software;
 .
 more text
"""
    stanzas = prepare_data.parse_debian_copyright(text)
    assert len(stanzas) == 3
    files = stanzas[1]
    assert files["Files"] == "nature/A.jpg nature/B.jpg"
    assert files["Copyright"] == "2008, Someone <a@b.c>\n2009, Other"
    assert files["License"] == "GPL-2+"
    assert stanzas[2]["License"].startswith("GPL-2+\nThis package")


def test_heldout_photos_are_fixed_and_known(prepare_data):
    mate = {f"{prepare_data.MATE_PACKAGE}/{Path(p).stem}" for p in prepare_data.MATE_PHOTOS}
    assert len(prepare_data.HELDOUT) >= 4 and set(prepare_data.HELDOUT) <= mate
    assert len(mate - set(prepare_data.HELDOUT)) >= 8
