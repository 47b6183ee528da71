"""Where dumpfs keeps what it may recompute: $DUMPFS_CACHE_DIR, else $XDG_CACHE_HOME/dumpfs, else ~/.cache/dumpfs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def cache_dir(part: str) -> Path:
    """The cache directory for one kind of data (flattened indexes, tape copies, type layouts)."""
    if os.environ.get("DUMPFS_CACHE_DIR"):
        return Path(os.environ["DUMPFS_CACHE_DIR"]) / part
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "dumpfs" / part


def write_cache_file(path: Path, write: Callable[[BinaryIO], object]) -> bool:
    """`write(file)` into `path` whole or not at all (a temporary file renamed over it), so a
    reader never sees half a file; False when it could not be written (the data is then only
    not cached).  Whatever `write` raises besides OSError is the caller's: no file is left."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return False
    saved = False
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
        saved = True
    except OSError:
        pass
    finally:
        if not saved:               # a failed write leaves no temporary file behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return saved
