"""Compressed dump files (gzip, bzip2, xz, zstd) as a Source of the bytes inside them.

Recognised by magic bytes, so detection looks through the compression to the
dump format inside.  Two ways to random access, chosen per file by what its
format allows (measured in bench/compression_libs.py):

* xz with several blocks and zstd with several frames carry their own seek
  points: python-xz and indexed_zstd read them as they are, with no pass
  over the data and nothing cached on disk, when the blocks are small
  enough (NATIVE_MAX_BLOCK) for a random read to decode one quickly.  A
  random 4 KiB read then decodes half a block on average (1-4 ms for 1 MiB
  xz blocks or pzstd frames, against 0.03-0.1 ms from the cache), so this
  is used only where a pass would cost minutes: from NATIVE_MIN_SIZE of
  decompressed data on.  $DUMPFS_DECOMPRESS=cache or =native overrides.
* Everything else (gzip, bzip2, single-block xz, single-frame zstd, and
  those with huge blocks) has no seek point worth having: with their
  library indexes a random 4 KiB read of a dump still costs 4.5 ms
  (rapidgzip), 21 ms (indexed_gzip), 50-70 ms (bzip2: rapidgzip,
  indexed_bzip2), and an xz or zstd decoder state cannot be saved at all.
  Such a file is decompressed once, sequentially, with a progress bar, into
  a `chunkcache` file under the cache directory (subfolder decompress/),
  keyed by the compressed file's identity (device, inode, size, mtime);
  later opens reuse it and a random read decodes one 128 KiB chunk.

A compressed file that ends early or is corrupt still opens: the Source
holds what could be decompressed, so the dump format inside reports the
missing tail (its reads come back short), and `container` says why.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import threading

import indexed_zstd
import xz as python_xz
import zstandard

from dumpfs.cache import cache_dir
from dumpfs.chunkcache import CHUNK_SIZE, ChunkedReads, Progress, build_cache, open_cache
from dumpfs.errors import DumpError
from dumpfs.source import FileSource, Source
from dumpfs.sourcefile import SourceFile

NATIVE_MAX_BLOCK = 16 << 20     # larger xz blocks / zstd frames: decompress once into the cache
NATIVE_PIECE = 256 << 10        # decoded window cached per native read
NATIVE_MIN_SIZE = 8 << 30       # below this, one pass (~1 min) buys 10-50x faster random reads
MODES = ("auto", "cache", "native")

MAGICS = [
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
]


def compression_of(source: Source) -> str | None:
    """gzip, xz, zstd or bzip2 by the first bytes; None for anything else."""
    head = source.read(0, 6)
    for magic, kind in MAGICS:
        if head.startswith(magic):
            return kind
    if len(head) >= 4 and int.from_bytes(head[:4], "little") & ~0xF == 0x184D2A50:
        return "zstd"       # starts with a skippable frame (pzstd, seekable zstd)
    return None


class NativeReads(ChunkedReads):
    """A library file object per thread (the decoders release the GIL, so threads decode at once)."""

    def __init__(self, opener, size: int, name: str):
        self._opener = opener
        self.size = size
        self.name = name
        self.piece_size = NATIVE_PIECE
        self._local = threading.local()
        self._files: list = []
        self._files_lock = threading.Lock()
        self._init_pieces()

    def _decode(self, index: int) -> bytes:
        f = getattr(self._local, "file", None)
        if f is None:
            f = self._local.file = self._opener()
            with self._files_lock:
                self._files.append(f)
        f.seek(index * self.piece_size)
        return f.read(min(self.piece_size, self.size - index * self.piece_size))

    def close(self) -> None:
        with self._files_lock:
            for f in self._files:
                f.close()
            self._files.clear()


class CompressedSource(Source):
    """The decompressed bytes of `inner`; `container` describes the compression for `info`."""

    def __init__(self, inner: Source, kind: str, pieces, container: str):
        self.inner = inner
        self.kind = kind
        self.pieces = pieces
        self.size = pieces.size
        self.name = f"{inner.name} ({kind})"
        outer = getattr(inner, "container", None)      # a remote object holding the compressed file
        self.container = f"{outer}; {container}" if outer else container
        identity = getattr(inner, "identity", None)
        if identity is not None:
            self.identity = (kind, *identity)

    def read(self, offset: int, length: int) -> bytes:
        return self.pieces.read(offset, length)

    def close(self) -> None:
        self.pieces.close()
        self.inner.close()


def open_compressed(source_or_path: Source | str, *, progress: Progress | None = None,
                    mode: str | None = None) -> CompressedSource | None:
    """A Source of the decompressed bytes, or None if this is not a compressed file.

    A path is opened here (and closed again if it is not compressed); a
    Source given is owned by the result.  `progress(done, total)` follows
    the one-time pass, if there is one.  `mode` (default $DUMPFS_DECOMPRESS,
    else auto): "cache" always decompresses once into the cache, "native"
    uses the format's own seek points wherever it has usable ones, "auto"
    only for files of NATIVE_MIN_SIZE or more.
    """
    mode = mode or os.environ.get("DUMPFS_DECOMPRESS") or "auto"
    if mode not in MODES:
        raise DumpError(f"DUMPFS_DECOMPRESS={mode}: expected one of {', '.join(MODES)}")
    source = FileSource(source_or_path) if isinstance(source_or_path, str) else source_or_path
    try:
        kind = compression_of(source)
        if kind is None:
            if isinstance(source_or_path, str):
                source.close()
            return None
        native = None if mode == "cache" else _open_native(source, kind, mode == "native")
        if native is not None:
            pieces, container = native
        else:
            pieces, container = _open_cached(source, kind, progress)
        return CompressedSource(source, kind, pieces, container)
    except BaseException:
        if isinstance(source_or_path, str):
            source.close()
        raise


def _path_of(source: Source) -> str | None:
    """The file a library may open itself (faster than calls back into Python), if there is one."""
    return source.name if isinstance(source, FileSource) and not source.is_block_device else None


def _open_native(source: Source, kind: str, always: bool):
    """(NativeReads, container) for multi-block xz and multi-frame zstd with small blocks, else None.

    Not `always`: only for NATIVE_MIN_SIZE bytes or more.
    """
    path = _path_of(source)
    if kind == "xz":
        def opener():
            return python_xz.open(path if path else SourceFile(source))
        try:
            f = opener()
            try:
                starts = list(f.block_boundaries)
                size = f.seek(0, io.SEEK_END)
            finally:
                f.close()
        except Exception:           # noqa: BLE001 - no usable index (truncated?): the one pass says why
            return None
        library = "python-xz"
    elif kind == "zstd" and path is not None:
        try:
            f = indexed_zstd.IndexedZstdFile(path)
            try:
                if not f.is_multiframe():
                    return None
                offsets = f.block_offsets()
                size = f.size()
            finally:
                f.close()
        except Exception:           # noqa: BLE001 - a damaged frame table: the one pass says why
            return None
        starts = sorted(offsets.values())
        if zstd_end_problem(source, max(offsets)):
            return None             # cut short: the one pass keeps what is there and says why

        def opener():
            f = indexed_zstd.IndexedZstdFile(path)
            f.set_block_offsets(offsets)
            return f
        library = "indexed_zstd"
    else:
        return None
    ends = starts[1:] + [size]
    if not always and size < NATIVE_MIN_SIZE:
        return None
    if len(starts) < 2 or max(end - start for start, end in zip(starts, ends)) > NATIVE_MAX_BLOCK:
        return None
    what = "blocks" if kind == "xz" else "frames"
    return (NativeReads(opener, size, f"{source.name} ({kind})"),
            f"{kind}, {len(starts)} {what}: random access by {what[:-1]} ({library}), no cache")


DECODERS = {
    "gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    "bzip2": lambda f: bz2.BZ2File(f),
    "xz": lambda f: lzma.LZMAFile(f),
    "zstd": lambda f: zstandard.ZstdDecompressor().stream_reader(f, read_size=1 << 20,
                                                                  read_across_frames=True),
}


DECODER_ERRORS = (EOFError, OSError, ValueError, lzma.LZMAError, zstandard.ZstdError)
"""What the decoders raise for data cut short (EOFError) or corrupt (the rest)."""


def decompressed_head(source: Source, length: int) -> bytes:
    """The first `length` bytes inside a compressed file (fewer if it holds less or is cut
    short; b"" if it is not compressed), decoded from its start with no index and no cache:
    what telling the format inside costs (a dump directory's scan)."""
    kind = compression_of(source)
    if kind is None:
        return b""
    parts: list[bytes] = []
    got = 0
    try:
        with DECODERS[kind](SourceFile(source)) as f:
            while got < length:
                part = f.read(min(64 << 10, length - got))
                if not part:
                    break
                parts.append(part)
                got += len(part)
    except DECODER_ERRORS:
        pass                    # what was decoded before the damage is the head
    return b"".join(parts)


def zstd_end_problem(source: Source, at: int = 0) -> str:
    """Why the frames of a zstd file do not end where the file does ("" if they do).

    The zstd stream reader takes a cut-off frame as a quiet end, so the
    frames are walked by their block headers (3 bytes per block of up to
    128 KiB) after the pass, or from `at`, the last frame a frame index knows.
    """
    while at < source.size:
        head = source.read(at, 18)
        magic = int.from_bytes(head[:4], "little")
        if magic & ~0xF == 0x184D2A50 and len(head) >= 8:       # skippable frame
            at += 8 + int.from_bytes(head[4:8], "little")
            continue
        if magic != 0xFD2FB528:
            return f"no zstd frame at compressed offset {at:#x}: the data is corrupt"
        try:
            at += zstandard.frame_header_size(head)
            checksum = 4 if zstandard.get_frame_parameters(head).has_checksum else 0
        except zstandard.ZstdError:
            return f"the zstd frame at compressed offset {at:#x} is cut short or corrupt"
        while True:
            block = source.read(at, 3)
            if len(block) < 3:
                break
            value = int.from_bytes(block, "little")
            at += 3 + (1 if (value >> 1) & 3 == 1 else value >> 3)
            if value & 1:
                break
        if len(block) < 3 or at + checksum > source.size:
            return f"the compressed data ends early (truncated at {source.size:#x}, in a zstd frame)"
        at += checksum
    return "" if at == source.size else \
        f"the compressed data ends early (truncated at {source.size:#x}, in a zstd frame)"


def cache_path(source: Source, kind: str) -> str | None:
    """Where the decompressed cache of `source` lives: keyed by the file's identity, or None."""
    identity = getattr(source, "identity", None)
    if identity is None:
        return None
    key = hashlib.sha256(f"{kind}:{':'.join(map(str, identity))}".encode()).hexdigest()[:32]
    return str(cache_dir("decompress") / f"{key}.zc")


def _open_cached(source: Source, kind: str, progress: Progress | None):
    """(ChunkCache, container): the cache made by an earlier open, or made now in one pass."""
    path = cache_path(source, kind)
    identity = ":".join(map(str, getattr(source, "identity", ()))) or "anonymous"
    private = path is None
    if private:         # no identity to key it by: a cache for this open only
        path = str(cache_dir("decompress") / f"anonymous-{os.getpid()}-{id(source)}.zc")
    name = f"{source.name} ({kind})"
    cache = None if private else open_cache(path, identity, name)
    state = "reused"
    if cache is None:
        f = SourceFile(source)
        build_cache(path, identity, DECODERS[kind](f), source.size, f.tell, source.name, progress,
                    (lambda: zstd_end_problem(source)) if kind == "zstd" else None, DECODER_ERRORS)
        cache = open_cache(path, identity, name)
        if cache is None:
            raise DumpError(f"{source.name}: the decompressed cache {path} cannot be read back")
        state = "built now"
        if private:
            os.unlink(path)
    header = cache.header
    container = (f"{kind}, decompressed once into {'an unnamed cache' if private else path} "
                 f"({state}; {header.chunks} chunks of {CHUNK_SIZE >> 10} KiB)")
    if not header.complete:
        container += f"; incomplete: {header.note}, {header.size:,} bytes decompressed"
    return cache, container
