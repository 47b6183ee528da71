"""Test-side writer of NGDump partitions (ngdump.md): an ext4 image made by mkfs.ext4 -d from a
directory holding `ngdump.meta` and the dump file, no mount needed (e2fsprogs).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from fixturecache import sha256_of


def meta_text(file: str = "", sha256: str = "") -> str:
    return f"# written by zipl, completed by the NGDump dumper\nversion=1\nfile={file}\nsha256sum={sha256}\n"


def write_ngdump_partition(image: Path, workdir: Path, dump_writer, *, size: int,
                           file: str = "dumps/dump.elf", meta: str | None = None,
                           extra: dict[str, bytes] | None = None) -> dict:
    """ext4 image of `size` bytes; `dump_writer(f)` writes the dump file (None: no dump yet)."""
    root = workdir / "ngdump-root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    digest = ""
    if dump_writer is not None:
        target = root / file
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            dump_writer(f)
        digest = sha256_of(target)
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
    (root / "ngdump.meta").write_text(meta if meta is not None else
                                      meta_text(file if dump_writer else "", digest))
    if image.exists():
        image.unlink()
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d", str(root),
                    str(image), f"{size >> 10}k"], check=True, capture_output=True)
    shutil.rmtree(root)
    return {"file": file, "sha256": digest}


def write_lkcd_file_system(image: Path, workdir: Path, files: dict[str, object], *, size: int) -> None:
    """A zfcpdump v1/v2 (zipl --dumptofs) file system: LKCD files dump.N; writers by name."""
    root = workdir / "dumptofs-root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name, writer in files.items():
        with open(root / name, "wb") as f:
            writer(f)
    if image.exists():
        image.unlink()
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(root), str(image), f"{size >> 10}k"],
                   check=True, capture_output=True)
    shutil.rmtree(root)
