"""Where the top-level `export/` profiles and `recipes/` pipeline recipes are found.

In a source checkout (or an editable install) they are the repository's folders; a regular
install puts copies under `<prefix>/share/datprl-edge/` (pyproject's data-files)."""

from __future__ import annotations

import sys
from pathlib import Path


def resource_dir(name: str) -> Path:
    source = Path(__file__).resolve().parent.parent / name
    if source.is_dir():
        return source
    return Path(sys.prefix) / "share" / "datprl-edge" / name
