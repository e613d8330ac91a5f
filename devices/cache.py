"""The one on-disk cache edgecloud keeps: `$EDGECLOUD_CACHE`, else `~/.cache/edgecloud`.

Why one function: the host profile and the exported models used to read the variable differently (one
as the cache root, one as the models folder), so pointing it somewhere put the two in different places.
Everything cached lives in a named sub-folder or file of this root.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: $EDGECLOUD_CACHE if set and non-empty, else ~/.cache/edgecloud."""
    return Path(os.environ.get("EDGECLOUD_CACHE") or Path.home() / ".cache" / "edgecloud")
