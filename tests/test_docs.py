"""The README and the manual in docs/: their links lead somewhere, their generated tables are current,
and the README's Python example runs as written (on fewer steps)."""

import re
from pathlib import Path

import numpy as np

from napari_medit import catalogue
from napari_medit.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_links_to_files_that_exist():
    """The strict docs build checks docs/ itself; the README lives outside it, so it is checked here."""
    targets = [t.split("#")[0] for t in LINK.findall(README.read_text()) if not t.startswith(("http", "#"))]
    assert targets and [t for t in targets if not (ROOT / t).exists()] == []


def test_the_manual_gets_the_methods_table_when_it_is_built():
    """The command-line page holds a marker the docs build (docs/hooks.py) replaces with the table
    `napari-medit methods --markdown` prints; the README holds the table itself."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (ROOT / "docs" / "command-line.md").read_text()
    assert hooks.METHODS_TABLE in page
    assert catalogue.markdown_table() in hooks.on_page_markdown(page)
    assert hooks.on_page_markdown("no marker") == "no marker"


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert main(["sample", "brain", "--out", str(tmp_path / "data")]) == 0
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(code.replace("steps=250", "steps=2"), scope)
    result, t1 = scope["result"], scope["t1"]
    np.testing.assert_array_equal(result.image.affine, t1.affine)
    assert result.provenance["method"] == "mededit" and result.provenance["parameters"]["steps"] == 2
    # the plane demo-brain was trained on, as the CLI and the manifest default to: what changed lies in
    # the axial slices the provenance lists (the voxel axis running inferior-superior)
    assert result.provenance["axis"] == "axial"
    axial = int(np.argmax(np.abs(t1.affine[2, :3])))
    changed = (result.image.array != t1.array).any(axis=tuple(a for a in range(3) if a != axial))
    assert 0 < changed.sum() <= len(result.provenance["slices"])
