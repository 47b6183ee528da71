"""Upper bounds on what a dump's headers may claim in total, shared by every backend.

A damaged header can claim anything; each bound keeps what dumpfs reads or
holds because of such a claim proportional to a real dump, never to the
claim.  They are generous for real machines: multi-terabyte memory and
thousands of CPUs (Linux' NR_CPUS is at most 8192 on x86_64, 512 on s390x).
Past a bound, the backend names the field in one line (DamagedDump), or
records a Problem and ignores the excess where the rest can still be served.
"""

from __future__ import annotations

MIB = 1 << 20

# CPUs: NR_CPUS is 8192 at most (x86_64 MAXSMP); twice that leaves room for any future kernel.
MAX_CPUS = 16384

# ELF notes, all PT_NOTE segments (or a kdump's note copy) together.  A kernel writes about
# 0.5 KiB per CPU (NT_PRSTATUS), QEMU about 1 KiB, s390x about 2 KiB (ten notes); the
# VMCOREINFO text is a few KiB.  MAX_CPUS CPUs at 4 KiB each is 64 MiB.
MAX_NOTE_BYTES = 64 * MIB

# Notes counted one by one: s390x writes ten per CPU; sixteen per CPU for MAX_CPUS CPUs.
MAX_NOTES = 16 * MAX_CPUS

# VMCOREINFO is a few KiB of `KEY=value` lines (about 4 KiB on 6.x); 1 MiB is plenty.
MAX_VMCOREINFO_BYTES = 1 * MIB

# ELF program headers.  The kernel writes one PT_LOAD per memory range (tens to thousands);
# QEMU paging=true one per contiguous virtual mapping (hundreds of thousands on big guests).
# 4 Mi headers are a 224 MiB table.
MAX_PROGRAM_HEADERS = 4 << 20

# Runs of pages a kdump's bitmaps describe (present, excluded), each a row of the memory run
# table (`dumpfs.model.Runs`: about 45 bytes and 1.5 µs with the scan).  makedumpfile -d 31
# gives one or two runs per MiB (the fixtures: 250-600 runs for 256-512 MiB); 8 Mi runs is
# 8 TiB at one run per MiB.  A bitmap of random bits makes up to four runs per byte: a 2 MiB
# file holds 1.8 million.
MAX_MEMORY_RUNS = 8 << 20

# Physical memory a dump may describe: 2^52 bytes (4 PiB), the architectural limit of x86_64
# and far above any s390x machine (z16: 40 TiB).
MAX_MEMORY_BYTES = 1 << 52
