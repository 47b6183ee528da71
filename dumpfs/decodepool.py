"""kdump batches decoded in worker processes (`dumpfs.decodeworker`), free of the GIL.

Two threads decoding 4 KiB zlib pages reach ~1.4x one thread in one process:
each page is one short decoder call and the GIL changes hands around every
one.  Worker processes decode whole batches instead; each gets the dump file's
open descriptor and a memfd of one batch (no name in /dev/shm, so nothing to
leak or to guess, and nothing another user can open), and the daemon copies a
batch out of the buffer once.  Workers start when a sequential stream first
needs a batch (random readers never start them), as subprocesses of
`sys.executable` running the worker file (fork+exec: safe with the daemon's
threads, and none of the daemon's modules is imported again); they end when
the pool is closed or when their stdin reaches EOF, which is also what the
daemon's death gives them.  Anything odd - a worker that fails to start, dies
or answers FAILED - makes `decode` return None: the caller decodes the batch
itself, and reports its errors exactly as without the pool.

On by default where there is more than one CPU; DUMPFS_DECODE_PROCESSES=0 in
the daemon's environment turns it off (=1 forces it on).  Measured on a
2-CPU machine (issue 10, bench/RESULTS.md): in-process 449-495 against
330-359 MB/s for the threads when the second CPU was free, 5-15% ahead
through the mount at load 1-2, level within noise when another job held a
CPU (every process decodes at the same CPU cost per byte as a thread).
Threads stop gaining at ~1.4x one thread however many CPUs there are;
processes keep gaining with each free CPU.
"""

from __future__ import annotations

import logging
import mmap
import os
import queue
import subprocess
import sys
import threading
from array import array
from pathlib import Path

from dumpfs import decodeworker

log = logging.getLogger(__name__)

WORKER = Path(decodeworker.__file__)
ENABLED = os.environ.get("DUMPFS_DECODE_PROCESSES", "1" if (os.cpu_count() or 1) > 1 else "0") == "1"


class Worker:
    """One decoding process and its batch buffer."""

    def __init__(self, source_fd: int, block_size: int, batch_bytes: int):
        memfd = os.memfd_create("dumpfs-decode", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memfd, batch_bytes)
            self.buffer = mmap.mmap(memfd, batch_bytes)
            self.process = subprocess.Popen(
                [sys.executable, "-I", str(WORKER), str(source_fd), str(memfd), str(block_size)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(source_fd, memfd),
                bufsize=0)
        finally:
            os.close(memfd)
        self.requests, self.answers = self.process.stdin.fileno(), self.process.stdout.fileno()
        self.closed = False

    def decode(self, low: int, length: int, offsets: list[int], sizes_flags: list[int],
               block_size: int) -> bytes | None:
        """The batch's pages back to back, or None if the worker failed it."""
        count = len(offsets)
        message = decodeworker.REQUEST.pack(low, length, count) + array("q", offsets).tobytes() \
            + array("Q", sizes_flags).tobytes()
        view = memoryview(message)
        while view:
            view = view[os.write(self.requests, view):]
        answer = os.read(self.answers, 1)
        if not answer:
            raise EOFError(f"decoding process {self.process.pid} ended")
        if answer != decodeworker.OK:
            return None
        return self.buffer[:count * block_size]

    def close(self) -> None:
        """End the process (EOF on its stdin; killed if it does not go) and free the buffer."""
        if self.closed:
            return
        self.closed = True
        process = self.process
        try:
            process.stdin.close()
            process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        process.stdout.close()
        self.buffer.close()


class DecodePool:
    """Up to `workers` decoding processes for one open dump file, started on first use."""

    def __init__(self, source_fd: int, block_size: int, batch_pages: int, workers: int | None = None):
        self.source_fd = source_fd
        self.block_size = block_size
        self.batch_bytes = batch_pages * block_size
        self.workers = workers or os.cpu_count() or 1
        self._idle: queue.SimpleQueue[Worker | None] = queue.SimpleQueue()
        self._all: list[Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.broken = False          # a worker could not start: the callers decode themselves

    def decode(self, low: int, length: int, offsets: list[int], sizes_flags: list[int]) -> bytes | None:
        """Decode one batch in a worker: pages of `offsets` (-1: the zero page) and their
        size | flags << 32 words, stored within [low, low + length) of the file; their bytes
        back to back, or None (the caller decodes it itself)."""
        worker = self._checkout()
        if worker is None or worker.closed:
            return None
        try:
            data = worker.decode(low, length, offsets, sizes_flags, self.block_size)
        except (OSError, EOFError, ValueError) as e:     # the worker died, or the pool was closed
            log.debug("decoding process %d failed: %s", worker.process.pid, e)
            with self._lock:
                if worker in self._all:
                    self._all.remove(worker)    # a new one may start in its place
                    self._idle.put(None)        # wakes a caller waiting for a worker
            worker.close()
            return None
        self._idle.put(worker)
        return data

    def _checkout(self) -> Worker | None:
        try:
            worker = self._idle.get_nowait()
            if worker is not None:
                return worker
        except queue.Empty:
            pass
        with self._lock:
            if self._closed or self.broken:
                return None
            start = len(self._all) < self.workers
            if start:
                try:
                    worker = Worker(self.source_fd, self.block_size, self.batch_bytes)
                except OSError as e:
                    log.warning("cannot start a decoding process, decoding in threads: %s", e)
                    self.broken = True
                    return None
                self._all.append(worker)
                return worker
        return self._idle.get()     # None: woken to start a new one, or closed

    def close(self) -> None:
        """End every worker; decoding after this returns None."""
        with self._lock:
            self._closed = True
            workers, self._all = self._all, []
        for worker in workers:
            worker.close()
            self._idle.put(None)        # wakes a caller waiting for a worker
