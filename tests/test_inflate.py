"""dumpfs.inflate: ISA-L where installed, with exactly zlib's results and errors."""

from __future__ import annotations

import random
import zlib

import pytest

from dumpfs import inflate

PAGE = 4096


def page(seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"inflate ", b"page ", b"%d " % seed, b"\0\0\0\0"]
    return b"".join(rng.choice(words) for _ in range(PAGE))[:PAGE]


def corrupted(packed: bytes) -> dict[str, bytes]:
    return {"bad checksum": packed[:-1] + bytes([packed[-1] ^ 1]),
            "truncated": packed[:-3],
            "bad header": b"\0" + packed[1:],
            "flipped bit": packed[:40] + bytes([packed[40] ^ 0x10]) + packed[41:],
            "empty": b""}


def zlib_outcome(call):
    try:
        return call()
    except zlib.error as e:
        return ("zlib.error", str(e))


def test_valid_streams_decode_to_the_same_bytes():
    for seed in range(20):
        data = page(seed)
        for level in (1, 6, 9):
            packed = zlib.compress(data, level)
            assert inflate.inflate(packed, PAGE) == data
            assert inflate.inflate(memoryview(packed), PAGE) == data
            assert inflate.inflate_prefix(packed + b"more", PAGE) == data
            assert inflate.inflate_prefix(packed, 100) == data[:100]


@pytest.mark.parametrize("name", ["bad checksum", "truncated", "bad header", "flipped bit", "empty"])
def test_corrupt_streams_fail_as_zlib_does(name):
    raw = corrupted(zlib.compress(page(1), 1))[name]
    assert zlib_outcome(lambda: inflate.inflate(raw, PAGE)) == \
        zlib_outcome(lambda: zlib.decompress(raw, 15, PAGE))
    assert zlib_outcome(lambda: inflate.inflate_prefix(raw, PAGE)) == \
        zlib_outcome(lambda: zlib.decompressobj().decompress(raw, PAGE))


def test_the_decoder_is_named():
    assert inflate.DECODER in ("isal", "zlib")
    assert (inflate.DECODER == "isal") == (inflate.isal_zlib is not None)
