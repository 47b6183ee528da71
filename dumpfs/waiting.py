"""Reads that must not wait: how the FUSE event loop serves page-cache copies itself.

Inside `without_waiting()` a read either returns at once or raises
WouldBlock; the FUSE layer then hands it to a worker thread.  Such reads may
return a memoryview of a reused buffer (`dumpfs.buffers`) instead of bytes:
what a FUSE reply copies out at once needs no bytes object of its own.
"""

from __future__ import annotations

import threading


class WouldBlock(Exception):
    """A read made `without_waiting()` would have had to wait for the disk or a decompression."""


_no_waiting = threading.local()


class _WithoutWaiting:
    """without_waiting()'s context manager: a class, not @contextmanager's generator (the
    FUSE layer enters it up to three times per request)."""

    __slots__ = ()

    def __enter__(self) -> None:
        _no_waiting.active = True

    def __exit__(self, *exc_info) -> None:
        _no_waiting.active = False


_WITHOUT_WAITING = _WithoutWaiting()


def without_waiting() -> _WithoutWaiting:
    """Reads inside may not block: data not in the page cache, or still to be decompressed,
    raises WouldBlock.  The FUSE layer serves such reads on its event loop and hands the
    rest to worker threads, which spares the thread hop for the common, cached case."""
    return _WITHOUT_WAITING


def waiting_forbidden() -> bool:
    return getattr(_no_waiting, "active", False)


def may_wait(what: str) -> None:
    """Backends call this before work that takes long (decompression, waiting on a lock)."""
    if getattr(_no_waiting, "active", False):
        raise WouldBlock(what)
