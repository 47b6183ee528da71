"""A decompressed stream kept on disk as independently compressed chunks: random access, bounded size.

Formats whose decoder state cannot be resumed in the middle (gzip without
an index, bzip2 with blocks that expand to tens of MiB, single-block xz,
single-frame zstd) are decompressed once, sequentially, into this file;
every later read decodes one chunk.  Layout (little endian):

    header      HEADER below; `note` says why the stream ended early, if it did
    chunks      CHUNK_SIZE bytes of the stream each, as one zstd frame (level 1,
                with its checksum, so a damaged chunk is an error, never wrong
                bytes); an all-zero chunk takes no bytes
    table       (chunks + 1) u64: where chunk i starts; chunk i ends where i + 1
                starts; the last entry is where the table starts

The size on disk is the stream's size at zstd level 1 (zero pages cost
nothing), about what the compressed input costs.  The file is written as
`<path>.tmp<pid>` with mode 0600 (it holds the dump's secrets) and renamed
into place when complete; `open_cache` checks magic, version, the source's
identity and the table's CRC before trusting it, so a stale or damaged file
is rebuilt.
"""

from __future__ import annotations

import array
import errno
import os
import sys
import threading
import zlib
from typing import Callable

import zstandard
from construct import Bytes, Const, Int32ul, Int64ul, PaddedString, Struct
from tqdm import tqdm

from dumpfs.buffers import read_cached
from dumpfs.errors import DumpError, Unavailable
from dumpfs.model import PageCache
from dumpfs.waiting import WouldBlock, waiting_forbidden

CHUNK_SIZE = 128 << 10      # a random read decodes this much: ~0.1 ms (256 KiB: ~0.5 ms, out of L2)
LEVEL = 1
VERSION = 1
NOTE_SIZE = 256
DECODED_CHUNKS = 128        # decoded chunks kept in memory per source (16 MiB)
NO_WAIT_DECODES = 2         # chunks one read on the FUSE event loop may decode (~0.05 ms each
                            # when the page cache holds them); a read needing more goes to a worker

HEADER = Struct(
    "magic" / Const(b"DUMPFSZC"),
    "version" / Int32ul,
    "chunk_size" / Int32ul,
    "size" / Int64ul,               # bytes of the decompressed stream held
    "chunks" / Int64ul,
    "complete" / Int32ul,           # 0: the compressed input ended early or is corrupt
    "table_crc" / Int32ul,
    "identity" / Bytes(64),         # the compressed file's identity, utf-8, zero padded
    "note" / PaddedString(NOTE_SIZE, "utf8"),  # fixed size: the header is rewritten at the end
)

Progress = Callable[[int, int], None]
"""progress(compressed bytes done, compressed bytes in all)."""


class ChunkedReads:
    """Reads over fixed-size decoded pieces, with an LRU of decoded pieces.

    Subclasses give `piece_size`, `size` and `_decode(index) -> bytes`, which
    must be safe to call from several threads at once.  Without waiting (the
    FUSE event loop) pieces already decoded are served, and those that
    `_decode_without_waiting` can decode at once.
    """

    piece_size: int
    size: int
    name: str

    def _init_pieces(self, capacity: int = DECODED_CHUNKS) -> None:
        self._decoded = PageCache(capacity)

    def _decode(self, index: int) -> bytes:
        raise NotImplementedError

    def _decode_without_waiting(self, index: int) -> bytes:
        """Piece `index` if it can be decoded at once (its bytes are in the page cache and
        cheap to decode), else WouldBlock.  By default nothing can."""
        raise WouldBlock(f"{self.name}: piece {index} is still to be decompressed")

    def _pieces(self, first: int, last: int) -> list[bytes]:
        """Pieces first..last, decoded now where the LRU lacks them.  Without waiting (the FUSE
        event loop) at most NO_WAIT_DECODES of them, each only if `_decode_without_waiting`
        can; otherwise WouldBlock and a worker thread decodes them."""
        pieces = [self._decoded.get(index) for index in range(first, last + 1)]
        missing = [at for at, piece in enumerate(pieces) if piece is None]
        if not missing:
            return pieces
        if waiting_forbidden():
            if len(missing) > NO_WAIT_DECODES:
                raise WouldBlock(f"{self.name}: {len(missing)} pieces are still to be decompressed")
            decode = self._decode_without_waiting
        else:
            decode = self._decode
        for at in missing:
            pieces[at] = decode(first + at)
            self._decoded.put(first + at, pieces[at])
        return pieces

    def read(self, offset: int, length: int) -> bytes:
        length = min(length, self.size - offset)
        if length <= 0 or offset < 0:
            return b""
        size = self.piece_size
        first, last = offset // size, (offset + length - 1) // size
        pieces = self._pieces(first, last)
        if first == last:
            start = offset - first * size
            return pieces[0][start:start + length]
        parts = []
        for index, piece in enumerate(pieces, first):
            piece = memoryview(piece)
            start = max(offset - index * size, 0)
            end = min(offset + length - index * size, len(piece))
            parts.append(piece[start:end])
        return b"".join(parts)


def _identity_bytes(identity: str) -> bytes:
    return identity.encode()[:64].ljust(64, b"\0")


class ChunkCache(ChunkedReads):
    """A complete, validated cache file, read chunk by chunk."""

    def __init__(self, path: str, name: str):
        self.path = path
        self.name = name
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._load()
        except BaseException:
            os.close(self.fd)
            raise
        self.piece_size = self.header.chunk_size
        self.size = self.header.size
        self._local = threading.local()
        self._init_pieces()

    def _load(self) -> None:
        file_size = os.fstat(self.fd).st_size
        head = os.pread(self.fd, 4096, 0)
        self.header = HEADER.parse(head)     # ConstError, StreamError: caught by the caller
        if self.header.version != VERSION:
            raise ValueError("cache version")
        count = self.header.chunks
        table_size = 8 * (count + 1)
        raw = os.pread(self.fd, table_size, file_size - table_size)
        if len(raw) != table_size or zlib.crc32(raw) != self.header.table_crc:
            raise ValueError("cache table damaged")
        self.table = array.array("Q")
        self.table.frombytes(raw)
        if sys.byteorder != "little":
            self.table.byteswap()
        if self.table[-1] != file_size - table_size or self.table[0] > self.table[-1] or \
                count != -(-self.header.size // self.header.chunk_size):
            raise ValueError("cache table inconsistent")

    def _decode(self, index: int) -> bytes:
        start, end = self.table[index], self.table[index + 1]
        if end == start:
            return bytes(self._expected(index))
        return self._decompress(index, os.pread(self.fd, end - start, start))

    def _decode_without_waiting(self, index: int) -> bytes:
        """The chunk if the page cache holds its compressed bytes: one preadv(RWF_NOWAIT) and a
        zstd decode of CHUNK_SIZE (~0.05 ms), cheaper than handing the read to a worker."""
        start, end = self.table[index], self.table[index + 1]
        if end == start:
            return bytes(self._expected(index))
        raw = read_cached(self.fd, start, end - start, f"{self.path}: chunk {index}")
        return self._decompress(index, raw)

    def _expected(self, index: int) -> int:
        return min(self.piece_size, self.size - index * self.piece_size)

    def _decompress(self, index: int, raw) -> bytes:
        expected = self._expected(index)
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = self._local.decompressor = zstandard.ZstdDecompressor()
        try:
            data = decompressor.decompress(raw, max_output_size=self.piece_size)
        except zstandard.ZstdError as e:
            data, reason = None, str(e)
        if data is None or len(data) != expected:
            reason = "wrong size" if data is not None else reason
            raise Unavailable(f"{self.name}: the decompressed cache {self.path} is damaged at chunk "
                              f"{index} ({reason}); delete it to rebuild")
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_cache(path: str, identity: str, name: str) -> ChunkCache | None:
    """The cache at `path` if it is complete, undamaged and made from this identity."""
    try:
        cache = ChunkCache(path, name)
    except FileNotFoundError:
        return None
    except Exception:                   # noqa: BLE001 - any damage means: rebuild
        return None
    if cache.header.identity != _identity_bytes(identity):
        cache.close()
        return None
    return cache


def build_cache(path: str, identity: str, reader, total: int, position: Callable[[], int],
                name: str, progress: Progress | None = None,
                check_end: Callable[[], str] | None = None,
                errors: tuple[type[Exception], ...] = (EOFError, OSError, ValueError)) -> None:
    """One sequential pass: `reader.read(n)` (a decompressing file object) into the cache at `path`.

    `position()` says how far into the compressed input the reader is, for
    the progress bar (tqdm on a terminal) and the `progress` callback.  A
    decoder error (one of `errors`) or an early end keeps what was decoded and records why;
    `check_end()` says what is wrong with an end the decoder took quietly.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    bar = _progress_bar(total, name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            header = dict(version=VERSION, chunk_size=CHUNK_SIZE, size=0, chunks=0, complete=0,
                          table_crc=0, identity=_identity_bytes(identity), note="")
            out.write(HEADER.build(header))
            table = array.array("Q", [out.tell()])
            compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
            zero = bytes(CHUNK_SIZE)
            size, note, done = 0, "", 0
            while True:
                try:
                    chunk = _read_full(reader, CHUNK_SIZE)
                except errors as e:
                    chunk, note = getattr(e, "partial", b""), _ended_early(e, position())
                if chunk:
                    if chunk != zero[:len(chunk)]:
                        out.write(compressor.compress(chunk))
                    table.append(out.tell())
                    size += len(chunk)
                now = position()
                if now != done:
                    if bar is not None:
                        bar.update(now - done)
                    if progress is not None:
                        progress(now, total)
                    done = now
                if note or len(chunk) < CHUNK_SIZE:
                    break
            if not note and check_end is not None:
                note = check_end()
            note = note.encode()[:NOTE_SIZE].decode(errors="ignore")
            if sys.byteorder != "little":
                table.byteswap()
            raw = table.tobytes()
            out.write(raw)
            header.update(size=size, chunks=len(table) - 1, complete=0 if note else 1,
                          table_crc=zlib.crc32(raw), note=note)
            out.seek(0)
            out.write(HEADER.build(header))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DumpError(f"{name}: no space left in {directory} for the decompressed cache "
                            f"(it needs about the compressed file's size; set DUMPFS_CACHE_DIR "
                            f"to a larger file system)") from None
        raise DumpError(f"{name}: cannot write the decompressed cache {tmp}: {e.strerror}") from None
    finally:
        if bar is not None:
            bar.close()
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_full(reader, length: int) -> bytes:
    """`length` bytes unless the stream ends; an error keeps the bytes read before it (`partial`)."""
    parts, got = [], 0
    while got < length:
        try:
            data = reader.read(length - got)
        except Exception as e:      # noqa: BLE001 - re-raised with what was read
            e.partial = b"".join(parts)
            raise
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _ended_early(error: Exception, at: int) -> str:
    if isinstance(error, EOFError) or "incomplete" in str(error).lower() or \
            "truncat" in str(error).lower():
        return f"the compressed data ends early (truncated near compressed offset {at:#x})"
    return (f"the compressed data is corrupt near compressed offset {at:#x}: {error} (a decoder "
            f"checks a block when it ends: the bytes just before may be wrong too)")


def _progress_bar(total: int, name: str):
    if not sys.stderr.isatty():
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc=f"decompressing {os.path.basename(name)} once", leave=False)
