"""The extent primitive, checked against flat byte strings built independently."""

from __future__ import annotations

import random
from array import array

import pytest

from dumpfs.errors import MemoryUnavailable
from dumpfs.extents import Extent, ExtentFile, SourceRange, Unreadable, overlay


def random_bytes(rng: random.Random, length: int) -> bytes:
    return rng.randbytes(length)


def test_runlist_reading_across_record_headers_matches_the_flat_file():
    """Pieces of one stream with short gaps between them, as a flattened dump's records."""
    rng = random.Random(11)
    stream, flat = bytearray(), bytearray()
    starts, lengths, wheres = array("q"), array("q"), array("q")
    calls = []

    def read(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        return bytes(stream[offset:offset + length])

    for _ in range(300):
        if rng.random() < 0.2:
            flat += bytes(rng.choice([1, 100, 5000]))            # never written: zeros
        stream += random_bytes(rng, rng.choice([0, 16, 16, 9000]))   # header or foreign data
        data = random_bytes(rng, rng.randrange(1, 6000))
        starts.append(len(flat))
        lengths.append(len(data))
        wheres.append(len(stream))
        stream += data
        flat += data
    file = ExtentFile.runlist(read, starts, lengths, wheres, len(flat), read_across=4096)
    assert file.read(0, len(flat)) == bytes(flat)
    assert len(calls) < len(starts) // 2, "neighbouring pieces were fetched together"
    for _ in range(2000):
        offset = rng.randrange(0, len(flat) + 10)
        length = rng.randrange(0, 30000)
        assert file.read(offset, length) == bytes(flat[offset:offset + length])


def test_a_short_source_ends_the_read():
    source = bytes(range(100))
    file = ExtentFile([Extent(0, 50, b"x" * 50),
                       Extent(50, 200, SourceRange(lambda o, n: source[o:o + n], 10))])
    assert file.read(0, 250) == b"x" * 50 + source[10:100]
    assert file.read(140, 100) == b""


def test_unreadable_extents_and_gaps_raise_at_the_first_unreadable_byte():
    file = ExtentFile([Extent(0x1000, 0x1000, None), Extent(0x2000, 0x1000, Unreadable("excluded")),
                       Extent(0x4000, 0x1000, b"a" * 0x1000)], size=1 << 64, gap=Unreadable("not here"))
    assert file.read(0x1800, 0x800) == bytes(0x800)
    with pytest.raises(MemoryUnavailable, match="0x2000: excluded") as error:
        file.read(0x1800, 0x1000)
    assert error.value.address == 0x2000 and error.value.reason == "excluded"
    with pytest.raises(MemoryUnavailable, match="0x3000: not here"):
        file.read(0x3000, 0x1001)
    with pytest.raises(MemoryUnavailable, match="0x5000: not here"):
        file.read(0x4000, 0x1001)
    assert file.read(0x4000, 0x1000) == b"a" * 0x1000
    assert file.extent_index(0x2fff) == 1 and file.extent_index(0x3000) is None


def test_overlay_patches_win_and_later_patches_win_over_earlier():
    rng = random.Random(5)
    base = random_bytes(rng, 20000)
    flat = bytearray(base)
    extents = [Extent(0, 7000, SourceRange(lambda o, n: base[o:o + n], 0)),
               Extent(7000, 6000, lambda o, n: base[7000 + o:7000 + o + n]),
               Extent(13000, 7000, base[13000:])]
    patches = []
    for _ in range(40):
        start = rng.randrange(0, 19000)
        data = random_bytes(rng, rng.randrange(1, 1000))
        patches.append(Extent(start, len(data), data))
        flat[start:start + len(data)] = data
    file = ExtentFile(overlay(extents, patches), size=len(flat))
    assert file.read(0, len(flat)) == bytes(flat)
    for _ in range(500):
        offset = rng.randrange(0, len(flat))
        length = rng.randrange(0, 3000)
        assert file.read(offset, length) == bytes(flat[offset:offset + length])
