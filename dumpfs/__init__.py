"""dumpfs: mount Linux kernel dumps as a lazy, read-only file tree."""

__version__ = "0.1.0"
