"""The kernel's own symbol table (kallsyms): where its tables are, and what they say.

scripts/kallsyms.c writes these tables into .rodata, each 8-byte aligned:

    kallsyms_num_syms       u32 (unsigned long before 4.20)
    kallsyms_names          per symbol a length byte (two if the high bit is set, 6.1+)
                            and that many token indexes
    kallsyms_markers        u32 per 256 symbols (unsigned long before 4.20): offset into names
    kallsyms_seqs_of_names  3 bytes per symbol (6.2 and 6.3 only here)
    kallsyms_token_table    256 NUL-terminated tokens
    kallsyms_token_index    256 u16: where each token starts
    kallsyms_offsets        s32 per symbol, relative to kallsyms_relative_base (u64);
    kallsyms_relative_base  before 6.4 both precede num_syms, from 6.4 on they follow
    kallsyms_addresses      the token index; kallsyms_addresses (u64) replaces both on
                            kernels without CONFIG_KALLSYMS_BASE_RELATIVE (before 4.6)

Kernels 6.0+ list the tables in VMCOREINFO (`tables_from_vmcoreinfo`).  For older
ones `find_tables` scans the kernel image below init_uts_ns (.data follows .rodata):
every character a symbol uses stays a one-character token at its own index, so
"0\\0" .. "9\\0" lie side by side in the token table; from there the token index,
markers, names and num_syms are found by what they must satisfy, and a candidate
counts only when its decoded names resolve to the addresses VMCOREINFO gives.
"""

from __future__ import annotations

import hashlib
import struct
from codecs import charmap_decode
from dataclasses import dataclass
from operator import itemgetter

from dumpfs.cache import cache_dir, write_cache_file
from dumpfs.errors import KernelUnavailable, MemoryUnavailable
from dumpfs.kernel.image import ImageWindow, vmcoreinfo_symbols

MAX_SYMBOLS = 4_000_000
MIN_SYMBOLS = 1_000                     # a kernel has more; fewer is not a kallsyms table
MAX_NAMES = 64 << 20
MAX_ENTRY = 2 + 512                     # length bytes + KSYM_NAME_LEN tokens (6.1+)
MARKERS_SPAN = 4 << 20                  # markers (+ 6.2's seqs_of_names) before the token table
DIGIT_TOKENS = b"".join(bytes([c, 0]) for c in b"0123456789")
ZERO_OR_NOT = b"0" + b"1" * 255         # bytes.translate table: NUL -> "0", anything else -> "1"
MAX_TOKEN_TABLES = 8                    # token tables examined further (bounds hostile images)


@dataclass(frozen=True)
class KallsymsTables:
    """Addresses of the tables (offsets + relative_base, or addresses)."""

    num_syms: int
    names: int
    token_table: int
    token_index: int
    markers: int | None = None
    offsets: int | None = None
    relative_base: int | None = None
    addresses: int | None = None


def _align8(value: int) -> int:
    return (value + 7) & ~7


def known_symbols(info) -> dict[str, int]:
    """VMCOREINFO's SYMBOL(...) entries but the tables': what a decoded table must agree with."""
    return {name: address for name, address in vmcoreinfo_symbols(info).items()
            if not name.startswith("kallsyms_")}


def tables_from_vmcoreinfo(info) -> KallsymsTables:
    """The tables VMCOREINFO lists (kernels 6.0 and later)."""
    if info is None:
        raise KernelUnavailable("no VMCOREINFO to find the kallsyms tables with")
    sym = info.symbol
    needed = ("kallsyms_names", "kallsyms_num_syms", "kallsyms_token_table", "kallsyms_token_index")
    missing = [n for n in needed if sym(n) is None]
    if missing or (sym("kallsyms_offsets") is None and sym("kallsyms_addresses") is None):
        raise KernelUnavailable("VMCOREINFO lacks SYMBOL(" + ", ".join(missing or ["kallsyms_offsets"])
                                + ")")
    return KallsymsTables(num_syms=sym("kallsyms_num_syms"), names=sym("kallsyms_names"),
                          token_table=sym("kallsyms_token_table"),
                          token_index=sym("kallsyms_token_index"), markers=sym("kallsyms_markers"),
                          offsets=sym("kallsyms_offsets"),
                          relative_base=sym("kallsyms_relative_base"),
                          addresses=sym("kallsyms_addresses"))


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------

def read_tokens(kmem, tables: KallsymsTables) -> list[bytes]:
    token_index = kmem.array("H", tables.token_index, 256)
    table = kmem.read(tables.token_table, max(token_index) + 256)
    tokens = []
    for start in token_index:
        end = table.find(b"\0", start)
        if end < 0:
            raise KernelUnavailable("kallsyms_token_table: a token runs past the table")
        tokens.append(table[start:end])
    return tokens


def count_of(first: int, second: int, prefix: str) -> int | None:
    """kallsyms_num_syms from its two 32-bit words: a u32 and padding, or an unsigned
    long before 4.20; None if neither reading fits (the other word must be 0)."""
    if prefix == ">" and first == 0:
        return second               # big-endian unsigned long
    return first if second == 0 else None


def read_count(kmem, address: int) -> int:
    count = count_of(*kmem.array("I", address, 2), kmem.prefix)
    if count is None:
        raise KernelUnavailable(f"kallsyms_num_syms at {address:#x} is not a count")
    return count


def split_names(names: bytes, count: int) -> list[tuple[int, int]]:
    """(start, length) of each symbol's token string in kallsyms_names."""
    spans = []
    pos, end = 0, len(names)
    for i in range(count):
        if pos >= end:
            raise KernelUnavailable(f"kallsyms_names ends after {i} of {count} symbols")
        length = names[pos]
        pos += 1
        if length & 0x80:                        # "big" symbol: 2-byte length (6.1+)
            if pos >= end:
                raise KernelUnavailable(f"kallsyms_names: symbol {i} runs past the table")
            length = (length & 0x7F) | (names[pos] << 7)
            pos += 1
        if pos + length > end:
            raise KernelUnavailable(f"kallsyms_names: symbol {i} runs past the table")
        spans.append((pos, length))
        pos += length
    return spans


def expand_names(names: bytes, spans, tokens: list[bytes]) -> bytes:
    """Type letter + name of each symbol, NUL-separated (no token holds a NUL).  Each name
    is expanded by the charmap codec, whose C loop maps every token index to its token
    (as Latin-1 text, one character per byte): twice the speed of a join over the bytes."""
    table = tuple(token.decode("latin-1") for token in tokens)
    return "\0".join([charmap_decode(names[start:start + length], None, table)[0]
                      for start, length in spans]).encode("latin-1")


def expanded_names(names: bytes, count: int, tokens: list[bytes]) -> bytes:
    """`expand_names`' text of these tables, from the cache when a kernel with the very same
    tables was seen before: expanding 100,000 names is most of a first `ls proc/`'s time.
    The key is a digest of all the expansion depends on (names, count, tokens)."""
    digest = hashlib.blake2b(names, digest_size=20)
    digest.update(count.to_bytes(8, "little") + b"\0".join(tokens))
    path = cache_dir("kallsyms") / f"{digest.hexdigest()}.names"
    try:
        joined = path.read_bytes()
        if joined.count(b"\0") + 1 == count:
            return joined
    except OSError:
        pass
    joined = expand_names(names, split_names(names, count), tokens)
    write_cache_file(path, lambda f: f.write(joined))
    return joined


def address_decoders(kmem, tables: KallsymsTables, count: int):
    """(label, values, reading) for each way the table's values may be read, the machine's
    usual reading first: relative to kallsyms_relative_base, or with
    CONFIG_KALLSYMS_ABSOLUTE_PERCPU (`KernelArch.kallsyms_absolute_percpu`; gone in 6.15:
    non-negative values are absolute per-CPU offsets); absolute addresses.  `reading(value)`
    is a symbol's address (None: the value is), so that only the chosen reading is applied
    to every symbol."""
    if tables.offsets is not None and tables.relative_base is not None:
        offsets = kmem.array("i", tables.offsets, count)
        base = kmem.read_u64(tables.relative_base)
        percpu_first = kmem.dump.arch.kernel.kallsyms_absolute_percpu
        for absolute_percpu in (percpu_first, not percpu_first):
            if absolute_percpu:
                yield "absolute per-CPU", offsets, \
                    lambda o: o if o >= 0 else (base - 1 - o) % (1 << 64)
            else:
                yield "relative", offsets, lambda o: (base + (o & 0xFFFFFFFF)) % (1 << 64)
    if tables.addresses is not None:
        yield "absolute", kmem.array("Q", tables.addresses, count), None


def known_indexes(expanded: list[bytes], known: dict[str, int]) -> dict[bytes, list[int]]:
    """Where each of VMCOREINFO's symbols is in the table (every index: a static symbol's
    name may be listed more than once); one pass, no slicing of the names."""
    wanted = [name.encode() for name in known]
    candidates = {bytes([letter]) + name for name in wanted for letter in range(1, 256)}
    found: dict[bytes, list[int]] = {}
    for index, raw in enumerate(expanded):
        if raw in candidates:
            found.setdefault(raw[1:], []).append(index)
    return found


def agreement_at(indexes: dict[bytes, list[int]], addresses,
                 known: dict[str, int]) -> tuple[int, int]:
    """(VMCOREINFO symbols the table confirms, ones it contradicts), from `known_indexes` and
    `addresses` (index -> address: a list, or a dict of those indexes): a name listed more
    than once agrees when one of its addresses does."""
    wanted = {name.encode(): address for name, address in known.items()}
    agree = sum(wanted[name] in {addresses[i] for i in at} for name, at in indexes.items())
    return agree, len(indexes) - agree


def agreement(expanded: list[bytes], addresses: list[int], known: dict[str, int]) -> tuple[int, int]:
    """(VMCOREINFO symbols the table confirms, ones it contradicts)."""
    return agreement_at(known_indexes(expanded, known), addresses, known)


def decode(kmem, tables: KallsymsTables, known: dict[str, int]) -> list[tuple[str, int, str]]:
    """(name, address, type letter) of every symbol, by the reading of the address table
    that VMCOREINFO's SYMBOL entries confirm best (on a tie, the machine's usual one)."""
    try:
        count = read_count(kmem, tables.num_syms)
        if not 0 < count <= MAX_SYMBOLS:
            raise KernelUnavailable(f"kallsyms_num_syms is absurd ({count})")
        tokens = read_tokens(kmem, tables)
        end = tables.markers or tables.token_table
        span = end - tables.names if end > tables.names else MAX_NAMES
        names = kmem.read(tables.names, min(span, MAX_NAMES))
        joined = expanded_names(names, count, tokens)
        indexes = known_indexes(joined.split(b"\0"), known)
        best = None
        wanted = [i for at in indexes.values() for i in at]
        for _label, values, reading in address_decoders(kmem, tables, count):
            sample = {i: values[i] if reading is None else reading(values[i]) for i in wanted}
            agree, disagree = agreement_at(indexes, sample, known)
            if best is None or agree - disagree > best[0]:
                best = (agree - disagree, values, reading)
    except MemoryUnavailable as exc:
        raise KernelUnavailable(f"kallsyms tables unreadable: {exc}") from None
    if best is None:
        raise KernelUnavailable("kallsyms: neither offsets + relative base nor addresses")
    _score, values, reading = best
    return symbol_tuples(joined, list(values) if reading is None else list(map(reading, values)))


def symbol_tuples(joined: bytes, addresses: list[int]) -> list[tuple[str, int, str]]:
    """(name, address, type letter) of each non-empty entry of `expand_names`' text, at C
    speed: one UTF-8 decode of the whole text (a NUL ends any broken sequence, as it would
    end a name decoded alone), no per-symbol Python code."""
    texts = joined.decode("utf-8", "replace").split("\0")
    if "" in texts:
        pairs = [(text, address) for text, address in zip(texts, addresses) if text]
        texts, addresses = [text for text, _ in pairs], [address for _, address in pairs]
    return list(zip(map(itemgetter(slice(1, None)), texts), addresses, map(itemgetter(0), texts)))


# ---------------------------------------------------------------------------
# Finding the tables in the image
# ---------------------------------------------------------------------------

def _token_table_at(window: ImageWindow, digits: int, prefix: str):
    """(token table, token index) around the "0".."9" tokens at `digits`, or None: the
    tokens 0x30..0xff run to the table's end, the index follows 8-aligned and must point
    at every token, token 0x30 ("0") included."""
    after = window.read(digits, (256 - 0x30) * 256)
    pos = 0
    for _ in range(256 - 0x30):
        nul = after.find(b"\0", pos)
        if nul <= pos:
            return None
        pos = nul + 1
    index = _align8(digits + pos)
    raw = window.read(index, 512)
    if len(raw) < 512:
        return None
    offsets = list(struct.unpack(prefix + "256H", raw))
    table = digits - offsets[0x30]
    if offsets[0] != 0 or table % 8 or table < window.low:
        return None
    tokens = window.read(table, digits + pos - table)
    starts, at = [], 0
    while at < len(tokens):
        nul = tokens.find(b"\0", at)
        if nul <= at:
            return None
        starts.append(at)
        at = nul + 1
    return (table, index) if starts == offsets else None


def _marker_runs(data: bytes, base: int, prefix: str, width: int):
    """(address, markers) of each run of increasing markers in data, from the top down.
    A run starts with a zero word at an 8-aligned address and goes on with a non-zero
    one: only the ends of zero runs are looked at, found at C speed by marking every
    byte zero ("0") or not ("1") and searching for "01"."""
    fmt = struct.Struct(prefix + ("I" if width == 4 else "Q"))
    zero = bytes(width)
    flags = data.translate(ZERO_OR_NOT)
    last = None
    end = len(flags)
    while (q := flags.rfind(b"01", 0, end)) >= 0:
        end = q + 1
        pos = (base + q + 1) // width * width - width - base   # the word before the non-zero one
        if pos == last or pos < 0 or (base + pos) % 8 or data[pos:pos + width] != zero:
            continue
        last = pos
        markers = [0]
        at = pos + width
        while at + width <= len(data):
            value = fmt.unpack_from(data, at)[0]
            if not 2 * 256 <= value - markers[-1] <= MAX_ENTRY * 256:
                break
            markers.append(value)
            at += width
        if len(markers) * 256 >= MIN_SYMBOLS:
            yield base + pos, markers


def _names_before(window: ImageWindow, markers_at: int, markers: list[int], prefix: str):
    """(num_syms address, symbol count) whose names land on the markers and end
    just before them, or None."""
    last_block = markers[-1]
    lowest = max(window.low, markers_at - last_block - 8 - MAX_ENTRY * 256 - 8)
    data = window.read(lowest, markers_at - lowest)
    first_block_end = markers[1]
    limit = markers_at - last_block - 8 - 2
    candidate = limit - limit % 8
    while candidate >= lowest:
        at = candidate - lowest
        count = count_of(*struct.unpack_from(prefix + "II", data, at), prefix)
        if count is not None and 256 * (len(markers) - 1) < count <= 256 * len(markers):
            names_at = candidate + 8
            names = window.read(names_at, markers_at - names_at)
            try:
                spans = split_names(names, min(256, count))
                if _entry_end(spans) == first_block_end:
                    spans = split_names(names, count)
                    starts = [spans[k * 256][0] - _length_bytes(spans[k * 256]) for k in
                              range(len(markers))]
                    if starts == markers and markers_at - 8 < names_at + _entry_end(spans) <= markers_at:
                        return candidate, count
            except KernelUnavailable:
                pass
        candidate -= 8
    return None


def _length_bytes(span: tuple[int, int]) -> int:
    return 2 if span[1] > 0x7F else 1


def _entry_end(spans) -> int:
    start, length = spans[-1]
    return start + length


def _layouts(num_syms: int, token_index: int, count: int):
    """Where the address table may be: before num_syms (up to 6.3), after the token index (6.4+)."""
    relative_base = num_syms - 8
    yield dict(offsets=relative_base - _align8(4 * count), relative_base=relative_base)
    yield dict(addresses=num_syms - 8 * count)
    after = _align8(token_index + 512)
    yield dict(offsets=after, relative_base=_align8(after + 4 * count))
    yield dict(addresses=after)


def find_tables(kmem, info) -> tuple[KallsymsTables, list[tuple[str, int, str]]]:
    """Scan the kernel image for the kallsyms tables and prove them by decoding:
    the tables and their (name, address, type letter) symbols."""
    known = known_symbols(info)
    window = ImageWindow.of(kmem, info)
    tried = 0
    for digits in window.find_all(DIGIT_TOKENS):
        tokens = _token_table_at(window, digits, kmem.prefix)
        if tokens is None:
            continue
        tried += 1
        found = _tables_around(window, kmem, *tokens, kmem.prefix, known)
        if found is not None:
            return found
        if tried == MAX_TOKEN_TABLES:
            break
    raise KernelUnavailable(f"no kallsyms tables in the kernel image ({window}: "
                            f"{tried} token tables, none with names and addresses VMCOREINFO confirms)")


def _tables_around(window, kmem, token_table, token_index, prefix, known):
    """The tables around one token table, proven, and their symbols; or None."""
    below = max(window.low, token_table - MARKERS_SPAN)
    data = window.read(below, token_table - below)
    for width in (4, 8):
        for markers_at, markers in _marker_runs(data, below, prefix, width):
            names = _names_before(window, markers_at, markers, prefix)
            if names is None:
                continue
            num_syms, count = names
            for layout in _layouts(num_syms, token_index, count):
                tables = KallsymsTables(num_syms=num_syms, names=num_syms + 8, token_table=token_table,
                                        token_index=token_index, markers=markers_at, **layout)
                symbols = _proven(kmem, tables, known)
                if symbols is not None:
                    return tables, symbols
            return None
    return None


def _proven(kmem, tables: KallsymsTables, known: dict[str, int]):
    """The decoded symbols if their addresses are mostly sorted and confirm VMCOREINFO's
    symbols (at least one, more than they contradict), else None."""
    try:
        symbols = decode(kmem, tables, known)
    except (KernelUnavailable, MemoryUnavailable):
        return None
    if len(symbols) < MIN_SYMBOLS:
        return None
    addresses = [address for _, address, _ in symbols]
    agree, disagree = agreement([(letter + name).encode() for name, _, letter in symbols],
                                addresses, known)
    ascending = sum(a <= b for a, b in zip(addresses, addresses[1:]))
    if agree >= 1 and agree > disagree and ascending >= 0.9 * (len(addresses) - 1):
        return symbols
    return None
