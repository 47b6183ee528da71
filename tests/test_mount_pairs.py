"""Two dumps of the same guest, each mounted for real: pages both hold read the same.

Different writers (QEMU ELF, QEMU kdump, makedumpfile kdump/lzo/raw/flattened/ELF)
of one memory snapshot must agree on every page both of them kept; the pages
come out of each mount's `memory/` files, so this runs through FUSE end to end.
"""

from __future__ import annotations

import random

import pytest

import fixturecache as fc

PAGE = 4096
SAMPLES = 400


def pairs():
    result = []
    for folder in fc.folders():
        records = [d for d in fc.dumps(folder) if d["format"] in ("elf", "kdump", "flattened")]
        if len(records) < 2:
            continue
        # the QEMU writer's dump of the guest (ELF where there is one) against every other
        records.sort(key=lambda d: (d["writer"].split()[0] != "qemu", d["format"] != "elf"))
        reference = records[0]
        result += [(folder, reference["file"], other["file"]) for other in records[1:]]
    return result


PAIRS = pairs()


def present_ranges(mountpoint) -> list[tuple[int, int]]:
    ranges = []
    for line in (mountpoint / "memory" / "map").read_text().splitlines():
        bounds, state = line.split()[:2]
        if state == "present":
            start, end = (int(x, 16) for x in bounds.split("-"))
            ranges.append((start, end))
    return ranges


def range_files(mountpoint) -> list[tuple[int, int, str]]:
    files = []
    for name in (mountpoint / "memory").iterdir():
        if name.name != "map":
            start, end = (int(x, 16) for x in name.name.split("-"))
            files.append((start, end, str(name)))
    return sorted(files)


def read_page(files, address: int) -> bytes:
    for start, end, path in files:
        if start <= address < end:
            with open(path, "rb") as f:
                f.seek(address - start)
                return f.read(PAGE)
    raise AssertionError(f"{address:#x} is in no memory/ file")


def common_pages(a, b) -> list[int]:
    pages, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            pages.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return pages


@pytest.mark.parametrize("folder,first,second", PAIRS, ids=[f"{f}:{a}~{b}" for f, a, b in PAIRS])
def test_pages_in_both_dumps_read_the_same(mount, folder, first, second):
    mount_a = mount(fc.unpacked(folder, first))
    mount_b = mount(fc.unpacked(folder, second))
    shared = common_pages(present_ranges(mount_a), present_ranges(mount_b))
    assert shared, "the two dumps share no present page"
    total = sum(end - start for start, end in shared) // PAGE
    assert total >= 512, f"only {total} pages in common"
    rng = random.Random(f"{folder}{first}{second}")
    addresses = set()
    for start, end in shared:
        addresses |= {start, end - PAGE}
    while len(addresses) < min(SAMPLES, total):
        start, end = rng.choice(shared)
        addresses.add(start + rng.randrange((end - start) // PAGE) * PAGE)
    files_a, files_b = range_files(mount_a), range_files(mount_b)
    differing = [hex(a) for a in sorted(addresses) if read_page(files_a, a) != read_page(files_b, a)]
    assert not differing, f"{len(differing)} of {len(addresses)} pages differ: {differing[:10]}"
