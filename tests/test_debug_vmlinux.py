"""Distro debug vmlinux files (Debian's linux-image-*-dbg, hundreds of MB of DWARF) with their
dumps: BTF is used before DWARF (the vmlinux's .BTF section on Debian 11), DWARF where the
kernel has no BTF (Debian 12 s390x), and both give the same layouts.  The files are fetched
once by fixtures/fetch-debug-vmlinux.sh into a cache (fixturecache.debug_vmlinux)."""

from __future__ import annotations

import os

import pytest

import fixturecache as fc
from dumpfs.errors import TypeMissing
from dumpfs.kernel.btf import btf_from_file
from dumpfs.kernel.dwarf import HINT_UNITS, MAX_EXTRA_UNITS, WANTED_ENUMS, WANTED_STRUCTS, DwarfTypes

CASES = [("x86_64-debian11", "qemu-elf.vmcore.xz", "BTF in the .BTF section of"),
         ("s390x-debian", "qemu-dgm.elf.xz", "DWARF of")]


pytestmark = pytest.mark.usefixtures("private_type_cache")


@pytest.mark.parametrize("folder,name,source", CASES, ids=[c[0] for c in CASES])
def test_processes_with_the_distro_debug_vmlinux(mount, folder, name, source):
    root = mount("--vmlinux", fc.debug_vmlinux(folder), fc.unpacked(folder, name))
    sources = (root / "kernel" / "sources").read_text()
    assert f"types: {source}" in sources, sources
    truth = fc.truth(folder)
    listed = set(os.listdir(root / "proc"))
    for process in truth["processes"]:
        pid = process["pid"]
        if "ppid" not in process:              # a late kernel worker the snapshot missed
            continue
        assert str(pid) in listed, f"pid {pid} ({process['comm']}) not in proc/"
        assert (root / "proc" / str(pid) / "comm").read_text() == process["comm"] + "\n"
    env = truth["markers"]["env"]
    base = root / "proc" / str(env["pid"])
    assert env["string"].encode() in (base / "environ").read_bytes().split(b"\0")
    maps = {p["pid"]: p for p in truth["processes"]}[env["pid"]]["maps"]
    assert (base / "maps").read_text().splitlines() == maps


def test_dwarf_of_debian11_equals_its_btf(tmp_path, monkeypatch):
    """The DWARF reader, forced on a vmlinux that also has BTF, gives the BTF's layouts; the
    6.x-only maple types are absent after a bounded search, and the second use is cached."""
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(tmp_path))
    vmlinux = fc.debug_vmlinux("x86_64-debian11")
    btf = btf_from_file(vmlinux)
    dwarf = DwarfTypes(vmlinux, "5.10.0-32-amd64")
    assert not dwarf.from_cache
    dwarf.resolve_wanted()
    assert dwarf.cu_scanned <= len(HINT_UNITS) + MAX_EXTRA_UNITS
    for name in WANTED_STRUCTS:
        if btf.has_struct(name):
            assert dwarf.struct(name) == btf.struct(name), name
        else:
            assert name.startswith("maple_") and not dwarf.has_struct(name), name
    for name in WANTED_ENUMS:
        with pytest.raises(TypeMissing):
            btf.enum(name)
        with pytest.raises(TypeMissing):
            dwarf.enum(name)
    cached = DwarfTypes(vmlinux, "5.10.0-32-amd64")
    assert cached.from_cache
    for name in ("task_struct", "mm_struct", "vm_area_struct", "mount"):
        assert cached.struct(name) == btf.struct(name), name
    assert not cached.has_struct("maple_tree")
    assert cached.cu_scanned == 0


def test_dwarf_of_debian12_equals_its_btf(tmp_path, monkeypatch):
    """DWARF 5 (gcc 12) of Debian 12's amd64 kernel against its BTF, maple types included."""
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(tmp_path))
    vmlinux = fc.debug_vmlinux("x86_64-debian")
    btf = btf_from_file(vmlinux)
    dwarf = DwarfTypes(vmlinux, "6.1.0-56-amd64")
    dwarf.resolve_wanted()
    for name in WANTED_STRUCTS:
        assert dwarf.struct(name) == btf.struct(name), name
    assert dwarf.enum("maple_type") == btf.enum("maple_type")
