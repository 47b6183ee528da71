"""The process's own command line without the secrets of a URL on it (ps, top, /proc/PID/cmdline).

Every user may read every process's command line, a mount daemon lives for
days, and a pre-signed URL's query is a credential.  The kernel shows the
bytes between the process's arg_start and arg_end (fields 48 and 49 of
/proc/self/stat), which lie in the process's own memory: they are
overwritten in place (as setproctitle does), each URL redacted as `info`
and findmnt show it, the rest of the area zeroed.
"""

from __future__ import annotations

import ctypes
import os

from dumpfs.url import is_url, redact

ARG_START_FIELD = 47        # 0-based index of arg_start in /proc/self/stat, counting pid and comm


def _arg_area() -> tuple[int, int] | None:
    """(address, length) of this process's argument strings, or None where the kernel
    does not say (before Linux 3.5, or no /proc)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(b")")[2].split()       # comm may hold spaces and parentheses
    at = ARG_START_FIELD - 2                         # pid and comm are before the ")"
    if len(fields) <= at + 1:
        return None
    start, end = int(fields[at]), int(fields[at + 1])
    return (start, end - start) if 0 < start < end else None


def _redacted(arg: bytes) -> bytes:
    """The argument as it may be shown, never longer than it is (it is rewritten in place)."""
    text = os.fsdecode(arg)
    if not is_url(text):
        return arg
    return os.fsencode(redact(text))[:len(arg)]


def redact_own_command_line() -> bool:
    """Rewrite this process's command line with every URL redacted; True if anything changed."""
    area = _arg_area()
    if area is None:
        return False
    start, length = area
    raw = ctypes.string_at(start, length)
    args = raw[:-1].split(b"\0") if raw.endswith(b"\0") else raw.split(b"\0")
    shown = [_redacted(arg) for arg in args]
    if shown == args:
        return False
    new = b"\0".join(shown)[:length - 1].ljust(length, b"\0")
    ctypes.memmove(start, new, length)
    return True
