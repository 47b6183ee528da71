"""A decoding process: kdump zlib batches decoded into a shared buffer, free of the daemon's GIL.

A kdump page is one ~15 µs decoder call, so decoding threads in one process
mostly trade the GIL; processes do not.  Run as a script by
`dumpfs.decodepool` (never imported by the daemon: it needs nothing of dumpfs,
FUSE or trio, and starts in a few milliseconds): argv holds the dump file's
descriptor, the shared buffer's descriptor (a memfd, never a name in /dev/shm)
and the block size; requests arrive on stdin, one status byte answers each
on stdout.  stdin's end (the daemon closed it or died) ends the process.

Request: REQUEST (low, length, count) then `count` int64 data offsets (-1: the
shared zero page) and `count` uint64 size | flags << 32 words.  The process
preads [low, low + length) and writes page k at k * block_size of the buffer;
it answers OK, or FAILED for anything odd (a short read, a page that is not
raw or zlib, a corrupt page), which the daemon decodes itself and reports.
"""

import mmap
import os
import signal
import struct
import sys
import zlib

try:
    from isal.isal_zlib import decompress
except ImportError:
    decompress = zlib.decompress

REQUEST = struct.Struct("<qqI")
OK, FAILED = b"\0", b"\1"
FLAG_ZLIB = 0x01


def read_exactly(fd: int, length: int, offset: int | None = None) -> bytes:
    """`length` bytes from a pipe (offset None) or from the file at `offset`; fewer at the end."""
    parts, got = [], 0
    while got < length:
        part = os.read(fd, length - got) if offset is None else os.pread(fd, length - got, offset + got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def decode(source: int, out: mmap.mmap, block_size: int, request: bytes, words: bytes) -> bytes:
    """Serve one request into `out`; OK or FAILED."""
    low, length, count = REQUEST.unpack(request)
    table = memoryview(words).cast("q")
    offsets, sizes_flags = table[:count], memoryview(words).cast("Q")[count:]
    blob = memoryview(read_exactly(source, length, low))
    if len(blob) != length:
        return FAILED
    zero = bytes(block_size)
    position = 0
    for offset, size_flags in zip(offsets, sizes_flags):
        size, flags = size_flags & 0xFFFFFFFF, size_flags >> 32
        start = offset - low
        if offset < 0:
            page = zero
        elif start < 0 or start + size > length:
            return FAILED
        elif flags == FLAG_ZLIB:
            try:
                page = decompress(blob[start:start + size], 15, block_size)
            except Exception:       # noqa: BLE001 - corrupt: the daemon reports zlib's error
                return FAILED
        elif flags == 0:
            page = blob[start:start + size]
        else:
            return FAILED
        if len(page) != block_size:
            return FAILED
        out[position:position + block_size] = page
        position += block_size
    return OK


def main() -> None:
    source, buffer, block_size = map(int, sys.argv[1:4])
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the daemon's Ctrl-C is the daemon's
    out = mmap.mmap(buffer, 0)
    os.close(buffer)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        request = read_exactly(stdin, REQUEST.size)
        if len(request) != REQUEST.size:
            return              # the daemon closed the pipe, or died
        count = REQUEST.unpack(request)[2]
        words = read_exactly(stdin, 16 * count)
        if len(words) != 16 * count:
            return
        if count * block_size > len(out):
            answer = FAILED
        else:
            answer = decode(source, out, block_size, request, words)
        os.write(stdout, answer)


if __name__ == "__main__":
    main()
