"""The book's structure: every chapter is in the table of contents, paired, and opens on Colab."""

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [c["file"] for c in part["chapters"]]
    return files


def test_every_chapter_is_in_the_toc_and_every_toc_entry_exists():
    listed = toc_files()
    for md in CHAPTERS:
        assert f"chapters/{md.stem}" in listed, f"{md.name} is not in _toc.yml"
    for entry in listed:
        assert (ROOT / f"{entry}.md").is_file(), f"_toc.yml lists {entry}, which does not exist"


def test_every_chapter_has_an_output_free_ipynb_with_the_colab_cell_first():
    assert CHAPTERS, "no chapter found"
    for md in CHAPTERS:
        nb_path = md.with_suffix(".ipynb")
        assert nb_path.is_file(), f"{md.name} has no paired .ipynb (Colab opens only .ipynb)"
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") for c in code), f"{nb_path.name} holds outputs"
        first = code[0]
        assert "remove-cell" in first["metadata"].get("tags", []), f"{nb_path.name}: first cell not remove-cell"
        assert "google.colab" in "".join(first["source"]), f"{nb_path.name}: first cell is not the Colab cell"


def test_launch_buttons_and_repository_are_configured():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert "binderhub_url" in config["launch_buttons"]  # `binder_url` would be silently ignored
    assert config["repository"]["url"].startswith("https://github.com/")
    assert "**.ipynb" in config["exclude_patterns"]
    assert config["execute"]["execute_notebooks"] == "cache"
