"""The shared fixtures, decompressed once into a cache outside the repository.

The cache lives in $DUMPFS_FIXTURE_CACHE, else $XDG_CACHE_HOME/dumpfs/fixtures,
else ~/.cache/dumpfs/fixtures; a file is unpacked to a temporary name and
renamed, so an interrupted run never leaves a half file behind, and it is
checked against truth.json's raw_size (and raw_sha256 when first unpacked).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("DUMPFS_SHARED", HERE.parent.parent / "shared"))
FIXTURES = SHARED / "fixtures"
ORACLE = SHARED / "oracle" / "zgetdump"


def cache_dir() -> Path:
    if "DUMPFS_FIXTURE_CACHE" in os.environ:
        return Path(os.environ["DUMPFS_FIXTURE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "dumpfs" / "fixtures"


@lru_cache(maxsize=None)
def truth(folder: str) -> dict:
    return json.loads((FIXTURES / folder / "truth.json").read_text())


def _missing(what: str) -> FileNotFoundError:
    """The shared fixtures are not where the tests look: fail loudly, never skip."""
    return FileNotFoundError(f"{what} (set DUMPFS_SHARED to the directory holding fixtures/)")


def folders() -> list[str]:
    """Every fixture folder; none found is an error (a test run without fixtures proves nothing)."""
    found = sorted(p.parent.name for p in FIXTURES.glob("*/truth.json"))
    if not found:
        raise _missing(f"no fixture folder with a truth.json under {FIXTURES}")
    return found


def dumps(folder: str) -> list[dict]:
    """truth.json's dump records; a record whose file is absent fails where it is used."""
    return truth(folder).get("dumps", [])


def all_dumps() -> list[tuple[str, dict]]:
    return [(folder, d) for folder in folders() for d in dumps(folder)]


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def unpacked(folder: str, name: str) -> Path:
    """The decompressed file for fixtures/<folder>/<name> (name may end in .xz)."""
    src = FIXTURES / folder / name
    if not src.exists():
        raise _missing(f"fixture {folder}/{name} not found under {FIXTURES}")
    if not name.endswith(".xz"):
        return src
    target = cache_dir() / folder / name[:-3]
    record = next((d for d in truth(folder).get("dumps", []) if d["file"] == name), {})
    size = record.get("raw_size")
    if target.exists() and (size is None or target.stat().st_size == size):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as out:
        subprocess.run(["xz", "-T0", "-dc", str(src)], stdout=out, check=True)
    if size is not None and tmp.stat().st_size != size:
        tmp.unlink()
        raise RuntimeError(f"{src}: unpacked to {tmp.stat().st_size} bytes, truth says {size}")
    if record.get("raw_sha256") and sha256_of(tmp) != record["raw_sha256"]:
        tmp.unlink()
        raise RuntimeError(f"{src}: sha256 of the unpacked file differs from truth.json")
    os.replace(tmp, target)
    return target


def recompressed(folder: str, name: str, suffix: str, command: list[str]) -> Path:
    """The unpacked fixture compressed by `command` (given the file, writing to stdout), made
    once into the cache beside it and reused by later sessions: the name holds the unpacked
    file's size and mtime and a hash of the command, so a new unpack or a new level rebuilds."""
    plain = unpacked(folder, name)
    st = plain.stat()
    recipe = hashlib.sha256("\0".join(command).encode()).hexdigest()[:8]
    target = cache_dir() / folder / "recompressed" / \
        f"{plain.name}.{st.st_size}-{st.st_mtime_ns}-{recipe}.{suffix}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as out:
        subprocess.run(command + [str(plain)], stdout=out, check=True)
    os.replace(tmp, target)
    return target


# the distro debug vmlinux of each fixture's kernel: (release, Debian architecture, suite)
DEBUG_VMLINUX = {
    "x86_64-debian11": ("5.10.0-32-amd64", "amd64", "bullseye"),
    "s390x-debian": ("6.1.0-50-s390x", "s390x", "bookworm"),
    "x86_64-debian": ("6.1.0-56-amd64", "amd64", "bookworm-security"),
    "x86_64-debian-many": ("6.1.0-57-amd64", "amd64", "bookworm-security"),
}


def debug_vmlinux(folder: str) -> Path:
    """The distro debug vmlinux of a fixture's kernel (hundreds of MB: too big to ship),
    downloaded once by fixtures/fetch-debug-vmlinux.sh into a cache next to the dumps'."""
    release, arch, suite = DEBUG_VMLINUX[folder]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    done = subprocess.run([str(FIXTURES / "fetch-debug-vmlinux.sh"), release, arch, suite,
                           str(Path(base) / "dumpfs" / "debug-vmlinux")],
                          capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"fetch-debug-vmlinux.sh {release}: {done.stderr.strip()[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    # Unpack everything (CI calls this once, before the tests, to warm the cache).
    for folder, record in all_dumps():
        print(unpacked(folder, record["file"]))
    for path in FIXTURES.glob("*/vmlinux-*.xz"):
        print(unpacked(path.parent.name, path.name))
