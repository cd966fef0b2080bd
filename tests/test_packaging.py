"""The wheel installs one top-level package, `parity`, and every module of the repository's packages."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_only_parity_is_installed_at_the_top_level():
    config = _setuptools()
    assert {p.split(".")[0] for p in config["packages"]} == {"parity"}
    assert {p.split(".")[0] for p in config["package-dir"]} == {"parity"}


def test_every_package_directory_is_listed():
    # The package-dir mapping makes setuptools' automatic discovery unusable,
    # so a new subpackage must be listed by hand: a missing one installs
    # editable (the finder maps whole trees) but not as a wheel.
    config = _setuptools()
    found = set()
    for package, directory in config["package-dir"].items():
        root = REPO / directory
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            if package == "parity" and rel and rel[0] in {d for p, d in config["package-dir"].items() if p != "parity"}:
                continue
            found.add(".".join((package, *rel)))
    assert found <= set(config["packages"]), sorted(found - set(config["packages"]))
