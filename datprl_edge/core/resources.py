"""Where the top-level resource folders are found, and their TOML files by name or path.

The folders: `calibration/` (calibration recipes), `export/` (target profiles) and `recipes/`
(pipeline recipes). In a source checkout (or an editable install) they are the repository's
folders; a regular install puts copies under `<prefix>/share/datprl-edge/<name>` (pyproject's
data-files).
"""

from __future__ import annotations

import site
import sys
from pathlib import Path

from datprl_edge.core.errors import InputNotFoundError, UnknownChoiceError

RESOURCES = ("calibration", "export", "recipes")


def resource_dir(name: str) -> Path:
    """The folder of resource `name` (one of RESOURCES); it need not exist (a partial install)."""
    if name not in RESOURCES:
        raise ValueError(f"unknown resource folder {name!r}; known: {', '.join(RESOURCES)}")
    root = Path(__file__).resolve().parents[2]
    # pyproject.toml marks a source checkout: in site-packages, parents[2] is site-packages itself
    if (root / "pyproject.toml").is_file() and (root / name).is_dir():
        return root / name
    installed = [Path(p) / "share" / "datprl-edge" / name for p in (sys.prefix, site.getuserbase())]
    return next((d for d in installed if d.is_dir()), installed[0])


def list_resources(name: str) -> dict[str, Path]:
    """Stem -> path of every .toml in resource folder `name`, sorted by stem."""
    folder = resource_dir(name)
    return dict(sorted((p.stem, p) for p in folder.glob("*.toml"))) if folder.is_dir() else {}


def find_resource(name: str, name_or_path, what: str) -> Path:
    """A .toml of resource folder `name` by its stem, or any .toml by path.

    A value ending in .toml, holding a path separator or naming an existing file is a path;
    anything else is a name. `what` ("calibration recipe") names the kind in the errors."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix == ".toml" or "/" in text or "\\" in text or path.is_file():
        if not path.is_file():
            raise InputNotFoundError(f"{what} not found: {path}")
        return path
    known = list_resources(name)
    if text not in known:
        raise UnknownChoiceError(what, text, known or ["(none installed)"])
    return known[text]
