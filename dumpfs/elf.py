"""ELF64 core layouts shared by the ELF reader (backends/elf.py) and the vmcore view."""

from __future__ import annotations

import struct

from construct import Bytes, Const, Int8ub, Int16ub, Int16ul, Int32ub, Int32ul, Int64ub, Int64ul, Struct

PT_LOAD = 1
PT_NOTE = 4
ET_CORE = 4
PN_XNUM = 0xFFFF
PF_X, PF_W, PF_R = 1, 2, 4
EHDR_SIZE = 64
PHDR_SIZE = 56
SHDR_SIZE = 64

Ident = Struct(
    "magic" / Const(b"\x7fELF"),
    "ei_class" / Int8ub,            # 1 = 32-bit, 2 = 64-bit
    "ei_data" / Int8ub,             # 1 = little-endian, 2 = big-endian
    "ei_version" / Int8ub,          # 1
    "padding" / Bytes(9),
)


def _elf64_header(i16, i32, i64):
    return Struct(
        "e_ident" / Bytes(16),
        "e_type" / i16,         # 4 = ET_CORE
        "e_machine" / i16,      # 62 = x86_64, 22 = s390
        "e_version" / i32,      # 1
        "e_entry" / i64,        # 0 in a core
        "e_phoff" / i64,        # file offset of the program header table
        "e_shoff" / i64,        # file offset of the section header table
        "e_flags" / i32,
        "e_ehsize" / i16,       # header size (QEMU 7.2 writes 8)
        "e_phentsize" / i16,    # 56
        "e_phnum" / i16,        # program header count, or PN_XNUM
        "e_shentsize" / i16,    # 64
        "e_shnum" / i16,        # section count (0: in section 0's sh_size)
        "e_shstrndx" / i16,
    )


Elf64Header = {"little": _elf64_header(Int16ul, Int32ul, Int64ul),
               "big": _elf64_header(Int16ub, Int32ub, Int64ub)}

# Program and section headers are read and written in bulk with struct: a
# paging=true QEMU dump has more than 65535 of them.
PHDR_FORMAT = "IIQQQQQQ"    # p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
SHDR_FORMAT = "IIQQQQIIQQ"  # sh_name sh_type sh_flags sh_addr sh_offset sh_size sh_link sh_info sh_addralign sh_entsize
SHDR_INFO_OFFSET = 44       # sh_info within Elf64_Shdr


def core_headers_size(phnum: int) -> int:
    """Bytes of the ELF header, `phnum` program headers and (past PN_XNUM - 1) section header 0."""
    return EHDR_SIZE + PHDR_SIZE * phnum + (SHDR_SIZE if phnum >= PN_XNUM else 0)


def core_header(byteorder: str, machine: int, phnum: int) -> bytes:
    """The ET_CORE ELF header of a core with `phnum` program headers right after it; from
    PN_XNUM program headers on, the real count lives in section header 0's sh_info."""
    xnum = phnum >= PN_XNUM
    return Elf64Header[byteorder].build(dict(
        e_ident=b"\x7fELF" + bytes([2, 1 if byteorder == "little" else 2, 1]) + bytes(9),
        e_type=ET_CORE, e_machine=machine, e_version=1, e_entry=0,
        e_phoff=EHDR_SIZE, e_shoff=EHDR_SIZE + PHDR_SIZE * phnum if xnum else 0, e_flags=0,
        e_ehsize=EHDR_SIZE, e_phentsize=PHDR_SIZE, e_phnum=PN_XNUM if xnum else phnum,
        e_shentsize=SHDR_SIZE if xnum else 0, e_shnum=1 if xnum else 0, e_shstrndx=0))


def section_header_0(byteorder: str, phnum: int) -> bytes:
    """What follows the program headers: section header 0 holding their count past PN_XNUM - 1,
    else nothing."""
    if phnum < PN_XNUM:
        return b""
    return struct.pack(("<" if byteorder == "little" else ">") + SHDR_FORMAT, 0, 0, 0, 0, 0, 0, 0,
                       phnum, 0, 0)


def core_headers(byteorder: str, machine: int, phdrs: list[bytes]) -> bytes:
    """An ET_CORE ELF header followed by `phdrs` (and section header 0 when needed)."""
    phnum = len(phdrs)
    return core_header(byteorder, machine, phnum) + b"".join(phdrs) + section_header_0(byteorder, phnum)
