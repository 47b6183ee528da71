"""Decoding ahead of a sequential reader, on every CPU, within a bounded window.

Compressed dumps decode at 200-400 MB/s per core; zlib, zstd and LZO release
the GIL, so a sequential reader (dd, cp, `dumpfs convert`) is served faster
when the units after the one it reads are decoded in parallel while it reads.
crash and drgn read small pieces all over the dump: a read that does not
continue near where the stream got to ends the stream and drops every fetch
not started yet, and nothing is fetched until a stream has covered `trigger`
positions, so random reads never start a storm of decoding.

Positions are the backend's linear order of reading (kdump: page descriptor
numbers, s390_ext: addresses); a unit is `unit` positions (a batch of pages,
a compression entry).  `fetch(unit)` decodes one unit into the backend's
cache; it must decode each unit once however many threads ask (backends keep
an in-flight registry, so a reader needing a unit being fetched waits for
it), and must swallow errors: the reader meets them itself later.  A
stream's reader decodes the unit it needs itself when no worker has started
it; the workers meanwhile decode the units after it (`note` says whether a
read belongs to a stream).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

log = logging.getLogger(__name__)

READ_AHEAD_BYTES = 16 << 20     # decoded bytes a stream may be ahead of its reader, per dump


class ReadAhead:
    """Fetches `window` units ahead of a sequential stream with os.cpu_count() threads."""

    def __init__(self, fetch: Callable[[int], None], unit: int, window: int, units: int,
                 name: str, trigger: int | None = None, workers: int | None = None):
        """`units`: how many units exist (fetching stops there); `trigger`: positions a stream
        covers before fetching starts (default two units)."""
        self._fetch = fetch
        self.unit = unit
        self.window = window
        self.units = units
        self.name = name
        self.trigger = 2 * unit if trigger is None else trigger
        self.workers = workers or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._stream_start = self._frontier = -1 << 62
        self._last: tuple[int, int] | None = None
        self._scheduled = -1                # highest unit handed to the workers in this stream
        self._pending: dict[int, Future] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    def note(self, start: int, end: int) -> bool:
        """A read of positions [start, end): continue or restart the stream, fetch ahead.
        True if the read is part of a stream being fetched ahead."""
        with self._lock:
            if self._closed:
                return False
            if (start, end) == self._last:      # the same request again (retried in a worker thread)
                return self._frontier - self._stream_start >= self.trigger
            self._last = (start, end)
            slack = max(self.unit, self.trigger // 2)     # FUSE requests may overtake each other
            # a reader of a stream being fetched may also skip forward into what is fetched
            # (a copy that jumps over holes, the ranges of one region): the same stream
            fetching = self._frontier - self._stream_start >= self.trigger
            ahead = (self._scheduled + 1) * self.unit if fetching else self._frontier
            if self._frontier - slack <= start <= max(self._frontier, ahead) + slack:
                self._frontier = max(self._frontier, end)
            else:
                self._restart(start, end)
            if self._frontier - self._stream_start < self.trigger:
                return False
            first = max(self._scheduled + 1, self._frontier // self.unit)
            last = min(self._frontier // self.unit + self.window, self.units - 1)
            for unit in range(first, last + 1):
                self._submit(unit)
            self._scheduled = max(self._scheduled, last)
            return True

    def _restart(self, start: int, end: int) -> None:
        self._stream_start, self._frontier = start, end
        self._scheduled = end // self.unit
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    def _submit(self, unit: int) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.workers,
                                                thread_name_prefix=f"{self.name}-ahead")
        future = self._executor.submit(self._run, unit)
        self._pending[unit] = future

    def _run(self, unit: int) -> None:
        try:
            self._fetch(unit)
        except Exception as exc:    # noqa: BLE001 - the reader meets the error itself
            log.debug("%s: fetching unit %d ahead failed: %s", self.name, unit, exc)
        finally:
            with self._lock:
                self._pending.pop(unit, None)

    def close(self) -> None:
        """Stop fetching; waits for the fetches under way (closing the dump does)."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
            self._pending.clear()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
