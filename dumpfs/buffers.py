"""Reusable per-thread buffers for the bytes a FUSE reply copies out at once.

A fresh 1 MiB bytes object per request costs more than the copy into it:
its pages are faulted in and zeroed anew every time.  Reads served on the
FUSE event loop (inside `without_waiting()`) therefore fill one of a few
buffers this thread keeps and return a memoryview of it.  A buffer is reused
only when no view of it is alive any more (its reference count says so), so a
caller that keeps a result keeps valid bytes; it just gets a memoryview.
The buffers are anonymous mmaps: page-aligned, the kernel copies from the page
cache into them about three times faster than into a (misaligned) bytearray.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from typing import Sequence

from dumpfs.waiting import WouldBlock

POOL_SIZE = 16                  # buffers per thread (a request over many extents holds one per piece)
MIN_BUFFER = 1 << 20            # one FUSE request: small reads do not fill the pool with small buffers
_pools = threading.local()
# faulted in at once: the first requests of a mount do not pay a page fault per page
MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)

# a pooled buffer's references when nobody holds a view: the pool list, the loop
# variable, getrefcount's argument
_IDLE_REFERENCES = 3


def scratch(size: int) -> memoryview:
    """A writable view of `size` bytes that nobody else holds."""
    pool = getattr(_pools, "buffers", None)
    if pool is None:
        pool = _pools.buffers = []
    for buffer in pool:
        if len(buffer) >= size and sys.getrefcount(buffer) == _IDLE_REFERENCES:
            return memoryview(buffer)[:size]
    buffer = mmap.mmap(-1, max(size, MIN_BUFFER), flags=MAP_FLAGS)
    if len(pool) < POOL_SIZE:
        pool.append(buffer)
    else:
        for i, old in enumerate(pool):          # replace an idle one that was too small
            if sys.getrefcount(old) == _IDLE_REFERENCES:
                pool[i] = buffer
                break
    return memoryview(buffer)[:size]


def gather(parts: Sequence, total: int) -> memoryview:
    """`parts` (bytes-like, `total` bytes together) copied one after another into a scratch buffer."""
    view = scratch(total)
    position = 0
    for part in parts:
        end = position + len(part)
        view[position:end] = part
        position = end
    return view[:position]


def read_cached(fd: int, offset: int, length: int, name: str) -> memoryview:
    """`length` bytes at `offset` of `fd` in a scratch buffer if the page cache holds them all,
    else WouldBlock: one preadv(RWF_NOWAIT), for reads served on the FUSE event loop."""
    view = scratch(length)
    try:
        got = os.preadv(fd, [view], offset, os.RWF_NOWAIT)
    except OSError as e:        # BlockingIOError: not cached; EOPNOTSUPP: no RWF_NOWAIT
        raise WouldBlock(f"{name}: {e.strerror}") from None
    if got < length:
        raise WouldBlock(f"{name}: {offset + got:#x} is not in the page cache")
    return view
