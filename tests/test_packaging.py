"""The installed package must contain every module: pyproject lists packages by hand."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_python_folder_is_a_listed_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {name: ROOT / folder for name, folder in config.get("package-dir", {}).items()}
    found = set()
    for init in (ROOT / "dumpfs").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    for name, folder in mapped.items():
        assert (folder / "__init__.py").exists(), f"{name} maps to {folder}, which is no package"
        found.add(name)
    assert found == listed, f"packages on disk {sorted(found)} vs pyproject {sorted(listed)}"
    assert "backends" not in listed, "backends must install as dumpfs.backends"
