"""zlib decoding for the compressed dump formats: ISA-L where its wheel exists, else zlib.

CPython's zlib releases the GIL for every call, but a kdump page is one ~15 µs
call, so decoding threads mostly trade the GIL (two threads reach ~1.4x one);
ISA-L (`isal`, optional) decodes the same pages about twice as fast on one
thread.  The output of a valid stream is the same bytes whichever library
decodes it.  When ISA-L rejects a stream, CPython's zlib decodes it again: a
corrupt page fails exactly as it always did (zlib's error and message), and a
stream only ISA-L dislikes is still read.
"""

from __future__ import annotations

import zlib

try:
    from isal import isal_zlib
except ImportError:         # no wheel for this machine (s390x) or not installed
    isal_zlib = None

DECODER = "isal" if isal_zlib is not None else "zlib"     # the library doing the work
# decompress(data, wbits, bufsize) of that library, raising its own error class: for batches
# that fall back to `inflate`, page by page, when anything fails
decompress = isal_zlib.decompress if isal_zlib is not None else zlib.decompress


def inflate(raw, size: int) -> bytes:
    """One zlib stream (wbits 15) expected to hold `size` bytes (the output buffer's start
    size, not a limit); raises zlib.error as `zlib.decompress` does."""
    if isal_zlib is not None:
        try:
            return isal_zlib.decompress(raw, 15, size)
        except isal_zlib.error:
            pass
    return zlib.decompress(raw, 15, size)


def inflate_prefix(raw, size: int) -> bytes:
    """At most `size` bytes from the start of a zlib stream in `raw` (which may run on past
    the stream, or end before it does): what `zlib.decompressobj().decompress(raw, size)`
    returns; raises zlib.error as it does."""
    if isal_zlib is not None:
        try:
            return isal_zlib.decompressobj().decompress(raw, size)
        except isal_zlib.error:
            pass
    return zlib.decompressobj().decompress(raw, size)
