"""Kernel introspection against the fixtures' truth.json: address translation, printk log,
kallsyms / System.map / vmlinux symbols, and the kernel/ view; hostile memory stays bounded."""

from __future__ import annotations

import errno
import random
import struct
import tarfile
from functools import lru_cache

import pytest

import fixturecache as fc
from conftest import time_limit
from dumpfs.arch import s390x, x86_64
from dumpfs.backends import open_dump
from dumpfs.arch.x86_64_paging import START_KERNEL_MAP, X86_64Paging, page_offset_base
from dumpfs.errors import (BtfError, KernelUnavailable, LogUnavailable, MemoryUnavailable,
                           TranslationError, Unavailable)
from dumpfs.kernel.address_space import IdentitySpace, KernelMemory, TableCache, kernel_memory
from dumpfs.kernel.btf import btf_from_memory, find_btf
from dumpfs.kernel.context import KernelContext
from dumpfs.kernel.image import ImageWindow
from dumpfs.kernel.kallsyms import (DIGIT_TOKENS, decode, expanded_names, find_tables, known_symbols, split_names,
                                   tables_from_vmcoreinfo)
from dumpfs.kernel.printk import format_dmesg, read_kernel_log
from dumpfs.kernel.symbols import (SymbolTable, from_kallsyms, from_system_map, from_vmlinux,
                                   kaslr_offset, kernel_symbols)
from dumpfs.model import Dump
from dumpfs.views import build_tree
from synthetic import synthetic_dump, x86_64_prstatus

FULL_DUMPS = [("x86_64-custom", "qemu-elf.vmcore.xz"), ("x86_64-debian", "qemu-elf.vmcore.xz"),
              ("s390x-custom", "qemu-dgm.elf.xz"), ("s390x-debian", "qemu-dgm.elf.xz"),
              ("x86_64-debian11", "qemu-elf.vmcore.xz")]
KALLSYMS_ALL = ["x86_64-custom", "x86_64-debian", "s390x-custom", "x86_64-debian11"]
# kernels whose VMCOREINFO lists the kallsyms tables (6.0+): one dump of each
VMCOREINFO_KALLSYMS = [("x86_64-custom", "qemu-elf.vmcore.xz"), ("x86_64-debian", "qemu-elf.vmcore.xz"),
                       ("s390x-custom", "qemu-dgm.elf.xz"), ("s390x-debian", "qemu-dgm.elf.xz"),
                       ("x86_64-debian-kdump", "kdump-mkdf-zlib-d31.kdump.xz"),
                       ("x86_64-debian-many", "mkdf-raw-d31.kdump.xz")]
CUSTOM = ["x86_64-custom", "s390x-custom"]


@lru_cache(maxsize=None)
def dump_of(folder: str, name: str) -> Dump:
    return open_dump(str(fc.unpacked(folder, name)))


def first_dump(folder: str) -> Dump:
    return dump_of(*next(d for d in FULL_DUMPS if d[0] == folder))


_contexts: dict[int, tuple[Dump, KernelContext]] = {}


def kernel_context(dump: Dump) -> KernelContext:
    """One context per dump, as one mount has (the dump is kept, so its id stays its own)."""
    if id(dump) not in _contexts:
        _contexts[id(dump)] = (dump, KernelContext(dump))
    return _contexts[id(dump)][1]


@lru_cache(maxsize=None)
def reference_kallsyms(folder: str) -> list[tuple[int, str, str]]:
    """/proc/kallsyms of the guest: kallsyms.txt, or the copy in ground-truth-bulk.tar.gz."""
    path = fc.FIXTURES / folder / "kallsyms.txt"
    if path.exists():
        text = path.read_text()
    else:
        with tarfile.open(fc.FIXTURES / folder / "ground-truth-bulk.tar.gz") as tar:
            text = tar.extractfile("./kallsyms").read().decode()
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((int(parts[0], 16), parts[1], parts[2]))
    return out




def read_file(tree, path: str) -> bytes:
    node = tree.walk(path)
    assert node is not None, path
    return node.read(0, node.size)


# ---------------------------------------------------------------------------
# kernel/ view on the real dumps
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("folder,name", FULL_DUMPS)
def test_kernel_log_release_and_symbols_view(folder, name):
    truth = fc.truth(folder)
    dump = dump_of(folder, name)
    tree = build_tree(dump, kernel_context(dump))
    log = read_file(tree, "kernel/log").decode()
    lines = log.splitlines()
    assert lines[-len(truth["log_tail_raw"]):] == truth["log_tail_raw"]
    assert lines[0].endswith(truth["banner"].rstrip("\n"))      # the boot's first line
    assert read_file(tree, "kernel/release").decode() == truth["kernel_release"] + "\n"
    symbols = read_file(tree, "kernel/symbols").decode().splitlines()
    by_name = {}
    for line in symbols:
        address, letter, symbol = line.split(" ", 2)
        assert len(address) == 16 and len(letter) == 1
        by_name.setdefault(symbol, int(address, 16))
    for symbol, address in truth["symbols"].items():
        if symbol != "swapper_pg_dir" or folder.startswith("s390x"):   # x86_64: a #define
            assert by_name.get(symbol) == address, symbol
    sources = read_file(tree, "kernel/sources").decode()
    assert "kallsyms in memory" in sources and "problem:" not in sources


@pytest.mark.parametrize("folder", ["x86_64-custom"])
def test_kernel_log_matches_makedumpfile_dump_dmesg(folder):
    """Single-line records: identical to `makedumpfile --dump-dmesg` (which indents
    continuation lines instead of repeating the prefix, as the guest's dmesg does)."""
    dump = first_dump(folder)
    ours = read_file(build_tree(dump, kernel_context(dump)), "kernel/log").decode().splitlines()
    theirs = (fc.FIXTURES / folder / "validation-mkdf-dmesg.txt").read_text().splitlines()
    assert ours == theirs


def test_multiline_record_gets_a_prefix_per_line_as_dmesg_shows():
    from dumpfs.kernel.printk import Record
    text = format_dmesg([Record(1, 1_848_452_000, b"Unstable clock\nIf you want"),
                         Record(2, 12_000_001_000, b"")])
    assert text == (b"[    1.848452] Unstable clock\n[    1.848452] If you want\n"
                    b"[   12.000001] \n")


def test_kernel_log_from_a_filtered_kdump():
    """makedumpfile -d 31 keeps kernel pages: the log reads the same."""
    dump = dump_of("x86_64-custom", "mkdf-lzo-d31.kdump.xz")
    lines = read_file(build_tree(dump, kernel_context(dump)), "kernel/log").decode().splitlines()
    assert lines[-40:] == fc.truth("x86_64-custom")["log_tail_raw"]


# ---------------------------------------------------------------------------
# Address translation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("folder,name", FULL_DUMPS)
def test_translation_of_truth_symbols(folder, name):
    dump = dump_of(folder, name)
    truth = fc.truth(folder)
    kmem = kernel_context(dump).memory
    if "linux_banner" in truth["symbols"]:
        banner = kmem.read_cstring(truth["symbols"]["linux_banner"], 512).decode()
        assert banner.startswith("Linux version") and banner == truth["banner"]
    if "init_task" in truth["symbols"]:
        # init_task is the idle task "swapper/0": its comm is somewhere in the first 4 KiB
        data = kmem.read(truth["symbols"]["init_task"], 8192)
        assert b"swapper/0\0" in data
    # the walk agrees with the page-table-free mappings of the kernel image
    for symbol, address in truth["symbols"].items():
        walked = kmem.space.first.translate(address)[0]
        assert walked == kmem.space.second.translate(address)[0], symbol


@pytest.mark.parametrize("folder", ["x86_64-custom", "x86_64-debian"])
def test_x86_64_direct_map_and_vmalloc(folder):
    dump = first_dump(folder)
    context = kernel_context(dump)
    kmem, symbols, info = context.memory, context.symbols, dump.vmcoreinfo
    page_offset, how = page_offset_base(kmem, symbols)
    assert how.startswith("page_offset_base")
    assert page_offset % (1 << 30) == 0 and page_offset >= 0xFF00000000000000
    # SYMBOL(mem_section) is a direct-map (memblock) address: page tables == __pa()
    mem_section = info.symbol("mem_section")
    assert kmem.translate(mem_section) == mem_section - page_offset
    # page_offset_base itself is an image symbol: page tables == __pa_symbol()
    address = symbols.address("page_offset_base")
    phys_base = info.number("NUMBER(phys_base)")
    assert kmem.translate(address) == (address - START_KERNEL_MAP + phys_base) % (1 << 64)
    # the printk descriptor ring lives in the image, the direct map, or vmalloc: wherever,
    # reading through the walk gives committed descriptors
    assert context.log.records
    # vmalloc: every busy vmap_area (vmap_area_list, bounded walk) is mapped, above
    # vmalloc_base, and its first page reads the same through the direct map
    head = info.symbol("vmap_area_list")
    vmalloc_base = kmem.read_u64(symbols.address("vmalloc_base"))
    node, seen, compared = kmem.read_pointer(head), 0, 0
    while node != head and seen < 10000:
        area = node - info.number("OFFSET(vmap_area.list)")
        va_start = kmem.read_u64(area + info.number("OFFSET(vmap_area.va_start)"))
        assert va_start >= vmalloc_base
        physical = kmem.translate(va_start)
        try:                        # RAM is in the direct map; ioremapped ACPI tables are not
            direct = kmem.read(page_offset + physical, 4096)
        except TranslationError:
            direct = None
        if direct is not None:
            assert kmem.read(va_start, 4096) == direct
            compared += 1
        node, seen = kmem.read_pointer(node), seen + 1
    assert seen > 10 and compared > 10
    # not canonical, and a hole in the kernel half: errors for that address only
    with pytest.raises(TranslationError, match="not canonical"):
        kmem.translate(0x0000800000000000)
    with pytest.raises(MemoryUnavailable):
        kmem.read(0xFFFFFE0000000000 - 0x1000 * 7, 16)
    assert kmem.read_cstring(symbols.address("linux_banner"), 16) == b"Linux version 6."


def test_x86_64_user_space_from_cr3():
    """A CPU's CR3 (possibly a process's) walks like init_top_pgt for the kernel half."""
    dump = first_dump("x86_64-custom")
    kmem = kernel_context(dump).memory
    banner = fc.truth("x86_64-custom")["symbols"]["linux_banner"]
    for cpu in dump.cpus.values():
        space = dump.arch.kernel.user_space(dump, cpu.registers["cr3"], TableCache(dump))
        assert space.translate(banner)[0] == kmem.translate(banner)


@pytest.mark.parametrize("folder", ["s390x-custom", "s390x-debian"])
def test_s390x_dat_matches_identity_map(folder):
    dump = first_dump(folder)
    kmem = kernel_context(dump).memory
    dat = kmem.space.first
    assert dat.origin == dump.vmcoreinfo.symbol("swapper_pg_dir")
    rng = random.Random(3)
    end = dump.memory.end
    checked = 0
    for _ in range(200):
        address = rng.randrange(0, end)
        try:
            physical = dat.translate(address)[0]
        except TranslationError:
            continue
        assert physical == address
        checked += 1
    assert checked > 150
    with pytest.raises(TranslationError):
        dat.translate(1 << 45)        # beyond a region-third table's 4 TiB


def test_synthetic_x86_64_page_tables_large_pages_and_5_levels():
    pages = {}

    def table(address, entries):
        page = bytearray(4096)
        for index, value in entries.items():
            struct.pack_into("<Q", page, index * 8, value)
        pages[address] = bytes(page)

    # 4-level: PGD 0x1000 -> PUD 0x2000 -> {1G page at 0x40000000, PMD 0x3000}
    # PMD 0x3000 -> {2M page at 0x200000, PT 0x4000}; PT -> 4K page 0x5000
    table(0x1000, {511: 0x2003})
    table(0x2000, {510: 0x40000083, 509: 0x3003})
    table(0x3000, {0: 0x200083, 1: 0x4003})
    table(0x4000, {2: 0x5003, 3: 0x6002})             # entry 3 not present
    # 5-level: PML5 0x7000 -> P4D 0x1000 (the 4-level PGD) at index 511
    table(0x7000, {511: 0x1003})

    dump = synthetic_dump(memory={0: b"".join(pages.get(page, bytes(4096)) for page in range(0, 0x8000, 0x1000))})
    cache = TableCache(dump, capacity=2)
    base4 = 0xFFFFFF8000000000      # PGD index 511
    four = X86_64Paging(cache, 0x1000, 4)
    assert four.translate(base4 + (510 << 30) + 0x12345) == (0x40012345, (1 << 30) - 0x12345)
    assert four.translate(base4 + (509 << 30) + 0x1234)[0] == 0x201234
    assert four.translate(base4 + (509 << 30) + (1 << 21) + 0x2ABC)[0] == 0x5ABC
    with pytest.raises(TranslationError, match="PTE entry"):
        four.translate(base4 + (509 << 30) + (1 << 21) + 0x3000)
    with pytest.raises(TranslationError, match="PGD entry"):
        four.translate(0xFFFF800000000000)
    five = X86_64Paging(cache, 0x7000, 5)
    base5 = 0xFFFFFF8000000000                        # PML5 index 511, P4D index 511
    assert five.translate(base5 + (510 << 30) + 7)[0] == 0x40000007
    with pytest.raises(TranslationError, match="PML5 entry"):
        five.translate(0xFF00000000000000)
    with pytest.raises(TranslationError, match="not canonical"):
        five.translate(0x0100000000000000)


# ---------------------------------------------------------------------------
# Symbols
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("folder", KALLSYMS_ALL + ["s390x-debian"])
def test_kallsyms_in_memory_equals_proc_kallsyms(folder):
    dump = first_dump(folder)
    ours = from_kallsyms(kernel_context(dump).memory, dump.vmcoreinfo)
    reference = reference_kallsyms(folder)
    assert sorted((s.address, s.type, s.name) for s in ours) == sorted(reference)
    if folder in KALLSYMS_ALL:
        table = SymbolTable(ours)
        for symbol, address in fc.truth(folder)["symbols"].items():
            if symbol in table:
                assert table.address(symbol) == address


@pytest.mark.parametrize("folder,name", VMCOREINFO_KALLSYMS)
def test_scanned_kallsyms_equal_the_vmcoreinfo_route(folder, name):
    """The image scan finds the very tables VMCOREINFO lists, and decodes them symbol for symbol."""
    dump = dump_of(folder, name)
    kmem = kernel_context(dump).memory
    listed = tables_from_vmcoreinfo(dump.vmcoreinfo)
    with time_limit(30):
        scanned, symbols = find_tables(kmem, dump.vmcoreinfo)
    for table in ("num_syms", "names", "token_table", "token_index", "offsets", "relative_base"):
        assert getattr(scanned, table) == getattr(listed, table), table
    assert scanned.addresses is None and listed.addresses is None
    assert symbols == decode(kmem, listed, known_symbols(dump.vmcoreinfo))


@lru_cache(maxsize=None)
def real_kallsyms_parts(folder: str = "x86_64-custom"):
    """A real kernel's tables as values: (count, names, token table, token index, offsets,
    relative base, symbols, VMCOREINFO symbols)."""
    dump = first_dump(folder)
    kmem, info = kernel_context(dump).memory, dump.vmcoreinfo
    tables = tables_from_vmcoreinfo(info)
    count = kmem.read_u32(tables.num_syms)
    token_index = kmem.array("H", tables.token_index, 256)
    token_table = kmem.read(tables.token_table, tables.token_index - tables.token_table)
    names = kmem.read(tables.names, tables.token_table - tables.names)
    spans = split_names(names, count)
    names = names[:spans[-1][0] + spans[-1][1]]
    offsets = kmem.array("i", tables.offsets, count)
    base = kmem.read_u64(tables.relative_base)
    known = known_symbols(info)
    return (count, names, token_table, token_index, offsets, base, decode(kmem, tables, known),
            {n: known[n] for n in ("_stext", "init_uts_ns", "node_online_map", "prb")})


# table layouts of scripts/kallsyms.c through the versions: (label, order, unsigned long counts)
KALLSYMS_LAYOUTS = [
    ("4.6-4.19", ["offsets", "relative_base", "num_syms", "names", "markers", "token_table",
                  "token_index"], True),
    ("4.0-4.5", ["addresses", "num_syms", "names", "markers", "token_table", "token_index"], True),
    ("4.20-6.1", ["offsets", "relative_base", "num_syms", "names", "markers", "token_table",
                  "token_index"], False),
    ("6.2-6.3", ["offsets", "relative_base", "num_syms", "names", "markers", "seqs_of_names",
                 "token_table", "token_index"], False),
    ("6.4+", ["num_syms", "names", "markers", "token_table", "token_index", "offsets",
              "relative_base", "seqs_of_names"], False),
]


@pytest.mark.parametrize("arch", [x86_64.ARCH, s390x.ARCH], ids=["little", "big"])
@pytest.mark.parametrize("label,order,long_counts", KALLSYMS_LAYOUTS, ids=[l[0] for l in KALLSYMS_LAYOUTS])
def test_kallsyms_scan_finds_every_table_layout(label, order, long_counts, arch):
    """A real kernel's tables laid out as each kernel version does, in either byte order."""
    count, names, token_table, token_index, offsets, base, symbols, known = real_kallsyms_parts()
    p = arch.struct_prefix
    word = "Q" if long_counts else "I"
    spans = split_names(names, count)
    markers = [spans[k][0] - 1 for k in range(0, count, 256)]
    addresses = {s[0]: s[1] for s in symbols}
    parts = {
        "offsets": struct.pack(f"{p}{count}i", *offsets),
        "relative_base": struct.pack(p + "Q", base),
        "addresses": struct.pack(f"{p}{count}Q", *[s[1] for s in symbols]),
        "num_syms": struct.pack(p + word, count),
        "names": names,
        "markers": struct.pack(f"{p}{len(markers)}{word}", *markers),
        "seqs_of_names": b"".join(i.to_bytes(3, "big") for i in range(count)),
        "token_table": token_table,
        "token_index": struct.pack(f"{p}256H", *token_index),
    }
    stext, high = known["_stext"], known["init_uts_ns"]
    image = bytearray(high - stext + 4096)
    at = (high - stext) // 2 - len(names)          # somewhere in .rodata
    for part in order:
        at = (at + 7) & ~7
        image[at:at + len(parts[part])] = parts[part]
        at += len(parts[part])
    dump = synthetic_dump(arch=arch, memory={0: bytes(image)},
                          vmcoreinfo="".join(f"SYMBOL({n})={a:x}\n" for n, a in known.items()).encode())
    with time_limit(60):
        _tables, found = find_tables(KernelMemory(dump, IdentitySpace(stext)), dump.vmcoreinfo)
    assert found == symbols
    assert all(addresses[n] == a for n, a in known.items() if n in addresses)


def test_kallsyms_names_cache_returns_the_expansion_and_ignores_a_bad_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(tmp_path))
    tokens = [bytes([i]) for i in range(256)]
    tokens[1] = b"init_"                                    # a token of several characters
    names = b"\x06T\x01task" + b"\x04tfoo"
    expected = b"Tinit_task\0tfoo"
    assert expanded_names(names, 2, tokens) == expected     # expanded, then cached
    [cached] = (tmp_path / "kallsyms").iterdir()
    assert cached.read_bytes() == expected
    cached.write_bytes(b"Tinit_task")                       # one name where there are two
    assert expanded_names(names, 2, tokens) == expected
    assert cached.read_bytes() == expected
    assert expanded_names(names[:-1] + b"x", 2, tokens) == b"Tinit_task\0tfox"    # other tables


def test_kallsyms_scan_of_many_token_tables_without_names_is_bounded():
    """Real token tables planted all over a zeroed image: each is examined, none proven."""
    _count, _names, token_table, token_index, _o, _b, _s, known = real_kallsyms_parts()
    planted = token_table + bytes(-len(token_table) % 8) + struct.pack("<256H", *token_index)
    image = bytearray(32 << 20)
    for at in range(1 << 20, len(image) - len(planted), 1 << 20):
        image[at:at + len(planted)] = planted
    dump = synthetic_dump(memory={0: bytes(image)},
                          vmcoreinfo=f"SYMBOL(_stext)=0\nSYMBOL(init_uts_ns)={len(image):x}\n".encode())
    with time_limit(60):
        with pytest.raises(Unavailable, match="8 token tables, none with names"):
            find_tables(KernelMemory(dump, IdentitySpace()), dump.vmcoreinfo)


def test_kallsyms_of_a_kernel_whose_vmcoreinfo_lists_none_are_found_in_the_image():
    dump = first_dump("x86_64-debian11")
    assert dump.vmcoreinfo.symbol("kallsyms_names") is None
    table = kernel_context(dump).symbols
    assert any(s.startswith("kallsyms in memory (found in the kernel image") for s in table.sources)
    for symbol in ("__start_BTF", "__stop_BTF", "init_task", "linux_banner", "_stext"):
        assert table.address(symbol) == fc.truth("x86_64-debian11")["symbols"][symbol], symbol


@pytest.mark.parametrize("folder", ["x86_64-debian11", "x86_64-custom", "s390x-custom", "x86_64-debian"])
def test_btf_found_in_the_image_is_the_one_between_start_and_stop_btf(folder):
    dump = first_dump(folder)
    kmem = kernel_context(dump).memory
    symbols = fc.truth(folder)["symbols"]
    address, types = find_btf(ImageWindow.of(kmem, dump.vmcoreinfo), kmem.prefix)
    assert address == symbols["__start_BTF"]
    assert len(types.blob) == symbols["__stop_BTF"] - symbols["__start_BTF"]


def test_an_image_without_kallsyms_or_btf_says_which_step_failed():
    """Random memory where VMCOREINFO places the image: kallsyms not found, no BTF in the
    image; both scans stay bounded even with token-table look-alikes planted everywhere."""
    rng = random.Random(8)
    memory = bytearray(rng.randbytes(8 << 20))
    for offset in range(0, len(memory) - 64, 4096):
        memory[offset:offset + len(DIGIT_TOKENS)] = DIGIT_TOKENS
        struct.pack_into("<HBBI", memory, offset + 2048, 0xEB9F, 1, 0, 24)
    dump = synthetic_dump(memory={0: bytes(memory)},
                          vmcoreinfo=b"OSRELEASE=5.10.0\nSYMBOL(_stext)=1000\nSYMBOL(init_uts_ns)=7ff000\n")
    kmem = KernelMemory(dump, IdentitySpace())
    with time_limit(60):
        table = kernel_symbols(dump, kmem)
        problem = next(p for p in table.problems if p.startswith("kallsyms: "))
        assert "not found" in problem and "no kallsyms tables in the kernel image (0x1000-0x7ff000:" in problem
        with pytest.raises(BtfError) as caught:
            btf_from_memory(kmem, table, dump.vmcoreinfo)
    message = str(caught.value)
    assert message.startswith("no BTF in the kernel image (0x1000-0x7ff000 searched; kallsyms not found (")
    assert "CONFIG_" not in message


def _unique(symbols) -> dict[str, int]:
    seen: dict[str, list[int]] = {}
    for s in symbols:
        seen.setdefault(s.name, []).append(s.address)
    return {name: addresses[0] for name, addresses in seen.items() if len(addresses) == 1}


@pytest.mark.parametrize("folder", CUSTOM)
def test_system_map_and_vmlinux_plus_kerneloffset_equal_kallsyms(folder):
    dump = first_dump(folder)
    kallsyms = _unique(from_kallsyms(kernel_context(dump).memory, dump.vmcoreinfo))
    offset = kaslr_offset(dump.vmcoreinfo)
    assert offset == fc.truth(folder)["kaslr_offset"]
    system_map = _unique(from_system_map(fc.FIXTURES / folder / "System.map-6.1.192-dumpfs", offset))
    vmlinux = _unique(from_vmlinux(fc.unpacked(folder, "vmlinux-6.1.192-dumpfs.xz"), offset))
    sample = random.Random(5).sample(sorted(kallsyms), 2000)
    for name in sample:
        if name in system_map:
            assert system_map[name] == kallsyms[name], name
        if name in vmlinux:
            assert vmlinux[name] == kallsyms[name], name
    assert sum(name in vmlinux for name in sample) > 1900
    # and the merged table names its sources
    table = kernel_symbols(dump, kernel_context(dump).memory,
                           system_map=fc.FIXTURES / folder / "System.map-6.1.192-dumpfs")
    assert any(s.startswith("System.map") for s in table.sources)
    assert table.lookup(kallsyms["init_task"] + 16)[0].name == "init_task"


def test_symbols_without_kernel_memory_say_why():
    dump = synthetic_dump(vmcoreinfo=b"OSRELEASE=6.1.0\nSYMBOL(_stext)=ffffffff81000000\n")
    table = kernel_symbols(dump, None)
    assert table.address("_stext") == 0xFFFFFFFF81000000
    assert any("kallsyms" in p for p in table.problems)


# ---------------------------------------------------------------------------
# Hostile memory
# ---------------------------------------------------------------------------

PRB = 0xFFFFFFFF80080000           # SYMBOL(prb): a pointer to the ring buffer


def printk_vmcoreinfo() -> bytes:
    keys = {
        "SIZE(printk_ringbuffer)": 88, "OFFSET(printk_ringbuffer.desc_ring)": 0,
        "OFFSET(printk_ringbuffer.text_data_ring)": 48, "OFFSET(printk_ringbuffer.fail)": 80,
        "OFFSET(prb_desc_ring.count_bits)": 0, "OFFSET(prb_desc_ring.descs)": 8,
        "OFFSET(prb_desc_ring.infos)": 16, "OFFSET(prb_desc_ring.head_id)": 24,
        "OFFSET(prb_desc_ring.tail_id)": 32, "SIZE(prb_desc)": 24,
        "OFFSET(prb_desc.state_var)": 0, "OFFSET(prb_desc.text_blk_lpos)": 8,
        "OFFSET(prb_data_blk_lpos.begin)": 0, "OFFSET(prb_data_blk_lpos.next)": 8,
        "SIZE(printk_info)": 88, "OFFSET(printk_info.seq)": 0, "OFFSET(printk_info.ts_nsec)": 8,
        "OFFSET(printk_info.text_len)": 16, "OFFSET(printk_info.caller_id)": 20,
        "OFFSET(printk_info.dev_info)": 24, "OFFSET(prb_data_ring.size_bits)": 0,
        "OFFSET(prb_data_ring.data)": 8, "OFFSET(prb_data_ring.head_lpos)": 16,
        "OFFSET(prb_data_ring.tail_lpos)": 24, "OFFSET(atomic_long_t.counter)": 0,
    }
    lines = ["OSRELEASE=6.1.0-hostile", "PAGESIZE=4096", f"SYMBOL(prb)={PRB:x}",
             "NUMBER(phys_base)=0"] + [f"{k}={v}" for k, v in keys.items()]
    return ("\n".join(lines) + "\n").encode()


def hostile_dump(count_bits: int, head_id: int, tail_id: int, descs: int, infos: int,
                 data: int, size_bits: int = 12, records=()) -> Dump:
    """Physical memory = one 1 MiB image mapped at __START_KERNEL_map (phys_base 0); no page
    tables (init_top_pgt absent), so translation uses the image map only."""
    image = bytearray(1 << 20)
    ring = PRB + 0x100 - START_KERNEL_MAP
    struct.pack_into("<Q", image, PRB - START_KERNEL_MAP, PRB + 0x100)
    struct.pack_into("<I", image, ring, count_bits)
    struct.pack_into("<QQQQ", image, ring + 8, descs, infos, head_id, tail_id)
    struct.pack_into("<IxxxxQ", image, ring + 48, size_bits, data)
    for index, (state_var, begin, next_lpos, seq, text, where) in enumerate(records):
        d = descs - START_KERNEL_MAP + index * 24
        struct.pack_into("<QQQ", image, d, state_var, begin, next_lpos)
        i = infos - START_KERNEL_MAP + index * 88
        struct.pack_into("<QQH", image, i, seq, 1000 * (index + 1), len(text))
        struct.pack_into("<Q", image, data - START_KERNEL_MAP + where, state_var & ((1 << 62) - 1))
        image[data - START_KERNEL_MAP + where + 8:data - START_KERNEL_MAP + where + 8 + len(text)] = text
    return synthetic_dump(memory={0: bytes(image)}, cpus={0: [x86_64_prstatus()]},
                          vmcoreinfo=printk_vmcoreinfo())


DESCS, INFOS, DATA = (START_KERNEL_MAP + 0x10000, START_KERNEL_MAP + 0x20000,
                      START_KERNEL_MAP + 0x40000)
FINAL = 2 << 62


def test_hostile_printk_good_records_then_damage():
    records = [(FINAL | 0, 0, 24, 0, b"first", 0), (FINAL | 1, 24, 48, 1, b"second", 24),
               (FINAL | 7, 48, 72, 2, b"wrong id", 48),                 # id mismatch: skipped
               (FINAL | 3, 4000, 4200, 3, b"x", 4000)]                   # bad block: skipped
    dump = hostile_dump(count_bits=4, head_id=3, tail_id=0, descs=DESCS, infos=INFOS,
                        data=DATA, records=records)
    with time_limit(10):
        log = read_kernel_log(dump, kernel_memory(dump)[0])
    assert [r.text for r in log.records] == [b"first", b"second"]
    assert log.problems


@pytest.mark.parametrize("case", [
    dict(count_bits=63, head_id=5, tail_id=0),                      # absurd count_bits
    dict(count_bits=0xFFFFFFFF, head_id=5, tail_id=0),
    dict(count_bits=20, head_id=(1 << 62) - 1, tail_id=0),          # whole id space: capped
    dict(count_bits=4, head_id=2, tail_id=3),                       # tail after head: a "cycle"
    dict(count_bits=4, head_id=3, tail_id=0, descs=0xDEAD000000000000),   # pointers into nowhere
    dict(count_bits=4, head_id=3, tail_id=0, data=0xFFFFFFFF00000000),
    dict(count_bits=4, head_id=3, tail_id=0, size_bits=200),
])
def test_hostile_printk_is_bounded(case):
    args = dict(descs=DESCS, infos=INFOS, data=DATA)
    args.update(case)
    dump = hostile_dump(**args)
    tree = build_tree(dump)
    with time_limit(20):
        try:
            log = read_kernel_log(dump, kernel_memory(dump)[0])
            assert len(log.records) <= 1 << 20
        except LogUnavailable:
            pass
        node = tree.walk("kernel/log")
        try:
            node.read(0, node.size)
        except OSError as exc:
            assert exc.errno == errno.EIO
    # the rest of the tree keeps working
    assert read_file(tree, "kernel/release") == b"6.1.0-hostile\n"
    assert tree.walk("info").read(0, 1 << 20)


def test_kernel_files_fail_with_eio_and_say_why():
    dump = synthetic_dump(vmcoreinfo=b"OSRELEASE=6.1.0-x\n")
    tree = build_tree(dump)
    with pytest.raises(OSError) as info:
        tree.walk("kernel/log").read(0, 100)
    assert info.value.errno == errno.EIO
    assert read_file(tree, "kernel/release") == b"6.1.0-x\n"
    sources = read_file(tree, "kernel/sources").decode()
    assert "problem: kernel log:" in sources
    assert any("kernel" in p for p in map(str, dump.meta.problems))
    with pytest.raises(KernelUnavailable):
        KernelContext(dump).log


def test_identity_space_and_kernel_memory_cstring_across_pages():
    data = bytearray(0x3000)
    data[0xFFA:0x1005] = b"hello world"
    dump = synthetic_dump(memory={0: bytes(data[:0x2000])})
    kmem = KernelMemory(dump, IdentitySpace())
    assert kmem.read_cstring(0xFFA, 100) == b"hello world"
    assert kmem.read_cstring(0xFFA, 5) == b"hello"
    with pytest.raises(MemoryUnavailable):
        kmem.read(0x1FF0, 0x20)


def test_synthetic_s390x_dat_large_pages_and_invalid_entries():
    from dumpfs.arch import s390x
    from dumpfs.arch.s390x_dat import DatSpace
    tables = bytearray(0x20000)

    def entry(table, index, value):
        struct.pack_into(">Q", tables, table + index * 8, value)
    for table in (0x4000, 0x8000):                   # all entries invalid by default
        for i in range(2048):
            entry(table, i, 0x20)
    # region-third table at 0x4000 (ASCE DT=1): entry 0 -> segment table 0x8000,
    # entry 1: a 2 GiB EDAT2 page at 0x80000000 (type R3 = 0x04, FC 0x400)
    entry(0x4000, 0, 0x8000 | 0x04 | 0x03)
    entry(0x4000, 1, 0x80000000 | 0x400 | 0x04)
    entry(0x8000, 0, 0x10000)                        # segment 0 -> page table 0x10000
    entry(0x8000, 1, 0x300000 | 0x400)               # segment 1: 1 MiB EDAT1 page at 3 MiB
    for i in range(256):
        struct.pack_into(">Q", tables, 0x10000 + i * 8, 0x400)   # PTEs invalid
    struct.pack_into(">Q", tables, 0x10000 + 5 * 8, 0x7000)      # page 5 -> 0x7000
    dump = synthetic_dump(arch=s390x.ARCH, memory={0: bytes(tables)})
    space = DatSpace.from_asce(TableCache(dump), 0x4000 | 0x04 | 0x03)
    assert space.translate(0x5123) == (0x7123, 0x1000 - 0x123)
    assert space.translate(0x100000 + 0x54321)[0] == 0x354321
    assert space.translate((1 << 31) + 0x1234567)[0] == 0x81234567
    with pytest.raises(TranslationError, match="page-table entry"):
        space.translate(0x6000)
    with pytest.raises(TranslationError, match="segment entry"):
        space.translate(0x200000)
    with pytest.raises(TranslationError, match="region-third entry"):
        space.translate(2 << 31)
    with pytest.raises(TranslationError, match="reach"):
        space.translate(1 << 42)


def test_pre_5_10_log_buf_records():
    """struct printk_log { u64 ts_nsec; u16 len, text_len, dict_len; u8 facility, flags; }"""
    buf, records = bytearray(0x1000), [(1_000_000, b"hello"), (2_500_000_000, b"two\nlines")]
    position = 0
    for ts, text in records:
        length = (16 + len(text) + 7) // 8 * 8
        struct.pack_into("<QHHHBB", buf, position, ts, length, len(text), 0, 0, 0)
        buf[position + 16:position + 16 + len(text)] = text
        position += length
    memory = bytearray(0x3000)
    memory[0x1000:0x2000] = buf
    struct.pack_into("<QIII", memory, 0x100, 0x1000, 0x1000, 0, position)
    info = ("SYMBOL(log_buf)=100\nSYMBOL(log_buf_len)=108\nSYMBOL(log_first_idx)=10c\n"
            "SYMBOL(log_next_idx)=110\nSIZE(printk_log)=16\nOFFSET(printk_log.ts_nsec)=0\n"
            "OFFSET(printk_log.len)=8\nOFFSET(printk_log.text_len)=10\n"
            "OFFSET(printk_log.dict_len)=12\n")
    dump = synthetic_dump(memory={0: bytes(memory)}, vmcoreinfo=info.encode())
    with time_limit(10):
        log = read_kernel_log(dump, KernelMemory(dump, IdentitySpace()))
    assert log.text() == (b"[    0.001000] hello\n[    2.500000] two\n[    2.500000] lines\n")


@pytest.mark.parametrize("num_syms", [0, 5_000_000, 3_000_000])
def test_hostile_kallsyms_is_bounded(num_syms):
    from dumpfs.errors import SymbolError
    rng = random.Random(num_syms)
    memory = bytearray(rng.randbytes(1 << 20))
    struct.pack_into("<I", memory, 0x1000, num_syms)
    info = ("SYMBOL(kallsyms_num_syms)=1000\nSYMBOL(kallsyms_names)=2000\n"
            "SYMBOL(kallsyms_token_table)=f0000\nSYMBOL(kallsyms_token_index)=f8000\n"
            "SYMBOL(kallsyms_offsets)=0\nSYMBOL(kallsyms_relative_base)=1008\n")
    dump = synthetic_dump(memory={0: bytes(memory)}, vmcoreinfo=info.encode())
    with time_limit(30):
        with pytest.raises(SymbolError):
            from_kallsyms(KernelMemory(dump, IdentitySpace()), dump.vmcoreinfo)
        table = kernel_symbols(dump, KernelMemory(dump, IdentitySpace()))
    assert table.address("kallsyms_names") == 0x2000 and table.problems


@pytest.mark.parametrize("folder,record", fc.all_dumps(), ids=lambda x: x if isinstance(x, str) else x["file"])
def test_kernel_log_and_release_of_every_fixture_dump(folder, record):
    """Every format (ELF, kdump, flattened, s390 stand-alone) and dump level gives the log."""
    dump = open_dump(str(fc.unpacked(folder, record["file"])))
    try:
        tree = build_tree(dump)
        truth = fc.truth(folder)
        lines = read_file(tree, "kernel/log").decode().splitlines()
        assert lines[-len(truth["log_tail_raw"]):] == truth["log_tail_raw"]
        assert read_file(tree, "kernel/release").decode() == truth["kernel_release"] + "\n"
    finally:
        dump.close()


# ---------------------------------------------------------------------------
# BTF enums: kind_flag says signed
# ---------------------------------------------------------------------------

def btf_blob(types: list[tuple[str, int, int, int, list[tuple[str, int]]]], prefix: str = "<") -> bytes:
    """A BTF blob of enums: (name, kind, kind_flag, size, [(enumerator, raw unsigned value)])."""
    strings = bytearray(b"\0")

    def name_off(name: str) -> int:
        strings.extend(name.encode() + b"\0")
        return len(strings) - len(name) - 1
    section = bytearray()
    for name, kind, kind_flag, size, values in types:
        info = kind << 24 | kind_flag << 31 | len(values)
        section += struct.pack(prefix + "III", name_off(name), info, size)
        for enumerator, value in values:
            if kind == 6:                                   # BTF_KIND_ENUM: u32 name, s32 val
                section += struct.pack(prefix + "II", name_off(enumerator), value)
            else:                                           # BTF_KIND_ENUM64: name, lo32, hi32
                section += struct.pack(prefix + "III", name_off(enumerator), value & 0xFFFFFFFF,
                                       value >> 32)
    header = struct.pack(prefix + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(section), len(section),
                         len(strings))
    return header + bytes(section) + bytes(strings)


@pytest.mark.parametrize("prefix", ["<", ">"])
def test_btf_enums_unsigned_unless_kind_flag(prefix):
    from dumpfs.kernel.btf import KIND_ENUM, KIND_ENUM64, BtfTypes
    btf = BtfTypes(btf_blob([
        ("unsigned32", KIND_ENUM, 0, 4, [("BIG", 0x80000000), ("TOP", 0xFFFFFFFF), ("ONE", 1)]),
        ("signed32", KIND_ENUM, 1, 4, [("MINUS_ONE", 0xFFFFFFFF), ("MAX", 0x7FFFFFFF)]),
        ("unsigned64", KIND_ENUM64, 0, 8, [("HUGE", 1 << 63), ("TOP", (1 << 64) - 1)]),
        ("signed64", KIND_ENUM64, 1, 8, [("MINUS_TWO", (1 << 64) - 2), ("FOUR", 4)]),
    ], prefix))
    assert btf.enum("unsigned32") == {"BIG": 2**31, "TOP": 2**32 - 1, "ONE": 1}
    assert btf.enum("signed32") == {"MINUS_ONE": -1, "MAX": 2**31 - 1}
    assert btf.enum("unsigned64") == {"HUGE": 2**63, "TOP": 2**64 - 1}
    assert btf.enum("signed64") == {"MINUS_TWO": -2, "FOUR": 4}


def test_layout_cache_write_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    from dumpfs.kernel.types import LayoutCache
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(tmp_path))
    cache = LayoutCache("dwarf", "6.1.0", "abcdef")
    with pytest.raises(TypeError):
        cache.save({"structs": {1, 2}})             # not JSON: the write fails half way
    assert list(cache.path.parent.iterdir()) == []
    cache.save({"structs": {}})
    assert [p.name for p in cache.path.parent.iterdir()] == [cache.path.name]
