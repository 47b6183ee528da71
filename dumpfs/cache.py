"""Where dumpfs keeps what it may recompute: $DUMPFS_CACHE_DIR, else $XDG_CACHE_HOME/dumpfs, else ~/.cache/dumpfs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(part: str) -> Path:
    """The cache directory for one kind of data (flattened indexes, tape copies, type layouts)."""
    if os.environ.get("DUMPFS_CACHE_DIR"):
        return Path(os.environ["DUMPFS_CACHE_DIR"]) / part
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "dumpfs" / part
