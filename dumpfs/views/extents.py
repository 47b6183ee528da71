"""Tree files laid out as extents (`dumpfs.extents`): the vmcore ELF, `dump.s390`, per-process cores."""

from __future__ import annotations

from typing import Callable

from dumpfs.extents import ExtentFile
from dumpfs.waiting import may_wait
from dumpfs.tree import File


def lazy_extent_file(name: str, build: Callable[[], ExtentFile]) -> File:
    """A tree file whose extent layout is built on first stat or read, once."""
    layout: list[ExtentFile] = []

    def get() -> ExtentFile:
        if not layout:
            may_wait("building the file's layout")
            layout.append(build())
        return layout[0]

    return File(name, lambda: get().size, lambda offset, length: get().read(offset, length),
                inline=True)
