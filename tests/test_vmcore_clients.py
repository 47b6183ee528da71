"""Real clients on a mounted `vmcore`: pyelftools, readelf, zgetdump, drgn, crash, gdb, convert.

Every check compares what a client sees through the mount with truth.json or
with an independent reader of the same memory -- pyelftools on the source ELF,
the QEMU ELF of the same guest, libkdumpfile (through drgn) on the source --
never with dumpfs's own output.

The sources are truth.json's dump records (fixturecache.dumps), so a new
fixture is picked up without editing this file.  A missing client is a test
failure naming the package that provides it, never a skip.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

import fixturecache as fc

PAGE = 4096

# Formats whose vmcore these tests cover.  zgetdump's "s390" format (-f s390
# output) is tracked by its own issue and its own tests.
VMCORE_FORMATS = {"elf", "kdump", "flattened"}

SOURCES = [(folder, record) for folder, record in fc.all_dumps()
           if record["format"] in VMCORE_FORMATS]


def source_id(item) -> str:
    folder, record = item
    return f"{folder}/{record['file']}"


def sources(where=lambda folder, record: True) -> list:
    return [pytest.param(folder, record, id=source_id((folder, record)))
            for folder, record in SOURCES if where(folder, record)]


# Package that provides each external client (Debian names; drgn from pip).
PACKAGES = {
    "readelf": "binutils (apt-get install binutils)",
    "crash": "crash (apt-get install crash)",
    "gdb": "gdb (apt-get install gdb)",
    "gdb-multiarch": "gdb-multiarch (apt-get install gdb-multiarch)",
    "cmp": "diffutils (apt-get install diffutils)",
}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: install {PACKAGES[tool]}")
    return path


def need_drgn() -> None:
    probe = subprocess.run([sys.executable, "-c", "import drgn"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"drgn is not importable ({probe.stderr.strip().splitlines()[-1:]}): "
                    f"pip install drgn")


def need_oracle() -> Path:
    if not os.access(fc.ORACLE, os.X_OK):
        pytest.fail(f"{fc.ORACLE} missing or not executable (the shared zgetdump oracle)")
    return fc.ORACLE


def vmlinux(folder: str) -> Path | None:
    names = sorted(p.name for p in (fc.FIXTURES / folder).glob("vmlinux-*"))
    return fc.unpacked(folder, names[0]) if names else None


@pytest.fixture
def vmcore_of(mount, fixture_path):
    """vmcore_of(folder, record) -> Path of `vmcore` in that source's (shared) mount."""
    def get(folder: str, record: dict) -> Path:
        path = Path(mount(fixture_path(folder, record["file"]))) / "vmcore"
        assert path.is_file(), f"{path}: no vmcore in the mount"
        return path
    return get


def run(command, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(c) for c in command], capture_output=True, text=True,
                              timeout=timeout, errors="replace", **kwargs)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, command))}: no answer within {timeout} s")


# -- ELF reading, independent of dumpfs -------------------------------------

def pt_loads(path: Path) -> list[tuple[int, int, int, int]]:
    """(p_paddr, p_offset, p_filesz, p_memsz) of every PT_LOAD, as pyelftools reads them."""
    with open(path, "rb") as f:
        elf = ELFFile(f)    # honours e_phoff (QEMU puts the section headers first)
        return [(s.header.p_paddr, s.header.p_offset, s.header.p_filesz, s.header.p_memsz)
                for s in elf.iter_segments() if s.header.p_type == "PT_LOAD"]


class ElfReference:
    """Physical memory as an ELF core's own PT_LOADs hold it (beyond p_filesz: zeros)."""

    def __init__(self, path: Path):
        self.path = path
        self.loads = sorted(pt_loads(path))
        self.starts = [load[0] for load in self.loads]
        self.file = open(path, "rb")

    def read(self, address: int, size: int) -> bytes | None:
        """The bytes at [address, address+size), or None when a part is in no PT_LOAD."""
        parts = []
        end = address + size
        while address < end:
            i = bisect.bisect_right(self.starts, address) - 1
            if i < 0:
                return None
            paddr, offset, filesz, memsz = self.loads[i]
            if address >= paddr + memsz:
                return None
            stop = min(end, paddr + memsz)
            inner = address - paddr
            in_file = max(0, min(stop - paddr, filesz) - inner)
            if in_file:
                self.file.seek(offset + inner)
                parts.append(self.file.read(in_file))
            parts.append(bytes(stop - address - in_file))
            address = stop
        return b"".join(parts)

    def close(self):
        self.file.close()


DRGN_READER = r"""
import hashlib, json, sys
import drgn
path, requests = sys.argv[1], json.loads(sys.stdin.read())
prog = drgn.Program()
prog.set_core_dump(path)
out = []
for address, size in requests:
    try:
        out.append(hashlib.sha256(prog.read(address, size, True)).hexdigest())
    except drgn.FaultError:
        out.append(None)
print(json.dumps(out))
"""


def drgn_reference_hashes(path: Path, requests: list[tuple[int, int]]) -> list[str | None]:
    """sha256 of each physical range as libkdumpfile (drgn's kdump reader) reads the source."""
    need_drgn()
    done = run([sys.executable, "-c", DRGN_READER, path], timeout=600,
               input=json.dumps(requests))
    assert done.returncode == 0, f"drgn reading {path} failed: {done.stderr[-2000:]}"
    return json.loads(done.stdout)


def qemu_elf_of(folder: str) -> Path | None:
    """The QEMU ELF dump of the same guest: the full-memory reference for kdump files."""
    for record in fc.dumps(folder):
        if record["format"] == "elf" and record.get("writer", "").startswith("qemu"):
            return fc.unpacked(folder, record["file"])
    return None


def sample_pages(filesz: int, spread: int) -> list[int]:
    """Page offsets inside a PT_LOAD: the first, the last and `spread` in between."""
    pages = (filesz + PAGE - 1) // PAGE
    if pages <= spread + 2:
        return list(range(pages))
    chosen = {0, pages - 1}
    chosen.update(round(i * (pages - 1) / (spread + 1)) for i in range(1, spread + 1))
    return sorted(chosen)


def sampled_ranges(loads) -> list[tuple[int, int, int]]:
    """(physical address, vmcore file offset, length) samples over every PT_LOAD.

    ~50 pages per PT_LOAD plus first and last, fewer per PT_LOAD when a filtered
    dump has thousands of them (about 6000 reads in all), and one read that
    straddles a page boundary at an odd offset per PT_LOAD.
    """
    with_data = [load for load in loads if load[2] > 0]
    spread = max(1, min(50, 6000 // max(1, len(with_data))))
    samples = []
    for paddr, offset, filesz, _memsz in with_data:
        for page in sample_pages(filesz, spread):
            length = min(PAGE, filesz - page * PAGE)
            samples.append((paddr + page * PAGE, offset + page * PAGE, length))
        if filesz > 2 * PAGE:
            middle = (filesz // PAGE // 2) * PAGE - 100
            samples.append((paddr + middle, offset + middle, 333))
    return samples


def covered(ranges, address: int, end: int) -> bool:
    """Is [address, end) inside the union of the sorted (start, end) ranges?"""
    for start, stop in ranges:
        if start <= address < stop:
            address = stop
            if address >= end:
                return True
    return address >= end


def merged(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for start, stop in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return [tuple(r) for r in out]


# -- pyelftools and readelf --------------------------------------------------

EM = {"x86_64": "EM_X86_64", "s390x": "EM_S390"}


@pytest.mark.parametrize("folder, record", sources())
def test_pyelftools_reads_headers_and_notes(folder, record, vmcore_of):
    truth = fc.truth(folder)
    vmcore = vmcore_of(folder, record)
    size = vmcore.stat().st_size
    with open(vmcore, "rb") as f:
        elf = ELFFile(f)
        assert elf.header.e_type == "ET_CORE"
        assert elf.header.e_machine == EM[truth["arch"]]
        segments = list(elf.iter_segments())
        assert [s.header.p_type for s in segments].count("PT_NOTE") == 1
        notes = [n for s in segments if s.header.p_type == "PT_NOTE" for n in s.iter_notes()]
    loads = sorted(pt_loads(vmcore))
    assert loads, "no PT_LOAD"
    for paddr, offset, filesz, memsz in loads:
        assert filesz <= memsz
        assert offset + filesz <= size, f"PT_LOAD {paddr:#x} runs past the end of the file"
    for before, after in zip(loads, loads[1:]):
        assert before[0] + before[3] <= after[0], f"PT_LOADs overlap at {after[0]:#x}"
    prstatus = [n for n in notes if n["n_type"] == "NT_PRSTATUS"]
    assert len(prstatus) == truth["cpu_count"], "one NT_PRSTATUS per CPU"
    vmcoreinfo = [n for n in notes if n["n_name"] == "VMCOREINFO"]
    assert len(vmcoreinfo) == 1, "a /proc/vmcore-style core carries one VMCOREINFO note"
    desc = vmcoreinfo[0]["n_desc"]
    text = desc.decode("ascii", "replace") if isinstance(desc, bytes) else str(desc)
    assert f"OSRELEASE={truth['kernel_release']}\n" in text
    assert f"PAGESIZE={PAGE}\n" in text


@pytest.mark.parametrize("folder, record", sources())
def test_readelf_without_warnings(folder, record, vmcore_of):
    truth = fc.truth(folder)
    vmcore = vmcore_of(folder, record)
    done = run([need("readelf"), "-h", "-l", "-n", "-W", vmcore], timeout=120)
    assert done.returncode == 0, done.stderr
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if line.startswith("readelf:")]
    assert not complaints, "\n".join(complaints[:20])
    assert re.search(r"^\s*Type:\s+CORE", done.stdout, re.M)
    loads = re.findall(r"^\s*LOAD\s", done.stdout, re.M)
    assert len(loads) == len(pt_loads(vmcore))
    assert done.stdout.count("NT_PRSTATUS") == truth["cpu_count"]
    assert re.search(r"^\s*VMCOREINFO\s+0x", done.stdout, re.M), "no VMCOREINFO note listed"


# -- memory: PT_LOAD bytes against an independent reader ---------------------

@pytest.mark.parametrize("folder, record", sources())
def test_pt_loads_hold_the_source_memory(folder, record, vmcore_of, fixture_path):
    vmcore = vmcore_of(folder, record)
    loads = sorted(pt_loads(vmcore))
    samples = sampled_ranges(loads)
    assert samples, "no PT_LOAD with data"
    got, short = [], []
    with open(vmcore, "rb") as f:
        for address, offset, length in samples:
            data = os.pread(f.fileno(), length, offset)
            if len(data) != length:
                short.append((hex(address), hex(offset)))
            got.append(hashlib.sha256(data).hexdigest())
    assert not short, f"{len(short)} short reads at (address, offset) {short[:5]}"

    if record["format"] == "elf":
        reference_path = Path(fixture_path(folder, record["file"]))
    else:
        reference_path = qemu_elf_of(folder)
    if reference_path is not None:
        reference = ElfReference(reference_path)
        try:
            expected = [None if (data := reference.read(address, length)) is None
                        else hashlib.sha256(data).hexdigest()
                        for address, _offset, length in samples]
        finally:
            reference.close()
        reference_name = f"{reference_path.name} (pyelftools)"
    else:
        # No full-memory ELF of this guest: libkdumpfile reads the source itself.
        reference_path = Path(fixture_path(folder, record["file"]))
        expected = drgn_reference_hashes(reference_path,
                                         [(address, length) for address, _o, length in samples])
        reference_name = f"{reference_path.name} (libkdumpfile via drgn)"

    missing = [address for (address, _o, _n), want in zip(samples, expected) if want is None]
    differ = [address for (address, _o, _n), have, want in zip(samples, got, expected)
              if want is not None and have != want]
    assert not missing, (f"{len(missing)} of {len(samples)} sampled vmcore ranges are not in "
                         f"{reference_name}: {[hex(a) for a in missing[:10]]}")
    assert not differ, (f"{len(differ)} of {len(samples)} sampled vmcore ranges differ from "
                        f"{reference_name}: {[hex(a) for a in differ[:10]]}")

    if record["format"] == "elf":
        # and nothing of the source's memory is left out of the vmcore
        shown = merged((p, p + m) for p, _o, _f, m in loads)
        lost = [(p, f) for p, _o, f, _m in pt_loads(reference_path)
                if f and not covered(shown, p, p + f)]
        assert not lost, f"source PT_LOADs (paddr, filesz) not in the vmcore: {lost[:5]}"


# -- zgetdump (IBM's reader, emulated) on s390x ------------------------------

def zgetdump_facts(text: str) -> dict:
    facts = {}
    match = re.search(r"Dump memory range\.*:\s*(.*\S)", text)
    if match:
        facts["range"] = match.group(1)
    match = re.search(r"CPU count \([^)]*\)\.*:\s*(\d+)", text)
    if match:
        facts["cpus"] = int(match.group(1))
    match = re.search(r"System arch\.*:\s*(.*\S)", text)
    if match:
        facts["arch"] = match.group(1)
    return facts


def recorded_zgetdump(folder: str, record: dict) -> str | None:
    """zgetdump -i of the source as recorded next to the fixture (the ELF via its phoff64 copy)."""
    stem = record["file"].removesuffix(".xz")
    names = [f"zgetdump-i-{stem}.txt"]
    if record["format"] == "elf":
        base, dot, ext = stem.rpartition(".")
        names.insert(0, f"zgetdump-i-{base}-phoff64.{ext}.txt")
    for name in names:
        path = fc.FIXTURES / folder / name
        if path.exists():
            return path.read_text()
    return None


@pytest.mark.parametrize("folder, record",
                         sources(lambda folder, record: fc.truth(folder)["arch"] == "s390x"))
def test_zgetdump_reads_the_vmcore(folder, record, vmcore_of, fixture_path):
    truth = fc.truth(folder)
    oracle = need_oracle()
    env = dict(os.environ, ORACLE_QUIET="1")
    expected_text = recorded_zgetdump(folder, record)
    if expected_text is None:
        source = run([oracle, "-i", fixture_path(folder, record["file"])], timeout=600, env=env)
        assert source.returncode == 0, f"zgetdump -i on the source failed: {source.stderr}"
        expected_text = source.stdout + source.stderr   # zgetdump -i writes to stderr
    expected = zgetdump_facts(expected_text)
    assert {"range", "cpus"} <= expected.keys(), f"cannot parse zgetdump output:\n{expected_text}"
    # the recorded source output must itself agree with the guest
    assert expected["range"] == f"{truth['memory_bytes'] >> 20} MB"
    assert expected["cpus"] == truth["cpu_count"]

    done = run([oracle, "-i", vmcore_of(folder, record)], timeout=600, env=env)
    assert done.returncode == 0, f"zgetdump -i on the vmcore: exit {done.returncode}\n{done.stderr}"
    text = done.stdout + done.stderr    # zgetdump -i writes its report to stderr
    got = zgetdump_facts(text)
    assert got.get("range") == expected["range"], text
    assert got.get("cpus") == expected["cpus"], text
    if "arch" in expected:
        assert got.get("arch") == expected["arch"], text
    release = re.search(r"UTS kernel release\.*:[ \t]*(.*)", text)
    if release and release.group(1).strip():
        assert release.group(1).strip() == truth["kernel_release"]


# -- drgn --------------------------------------------------------------------

DRGN_PROBE = r"""
import json, sys
import drgn
path, vmlinux, uts_name, banner_address, banner_length = sys.argv[1:6]
prog = drgn.Program()
prog.set_core_dump(path)
out = {"UTS_RELEASE": prog["UTS_RELEASE"].string_().decode()}
# new_utsname: sysname[65], nodename[65], release[65]: a read through the page tables
raw = prog.read(int(uts_name, 16) + 2 * 65, 65)
out["release_in_memory"] = raw.split(b"\0")[0].decode()
if int(banner_address):
    out["banner"] = prog.read(int(banner_address), int(banner_length)).decode("ascii", "replace")
if vmlinux:
    prog.load_debug_info([vmlinux])
    out["init_uts_ns"] = prog["init_uts_ns"].name.release.string_().decode()
print(json.dumps(out))
"""

DRGN_SOURCES = {
    "x86_64-custom": ["mkdf-zlib-d1.kdump.xz", "qemu-kdump-zlib.vmcore.xz"],
    "x86_64-debian": ["mkdf-zlib-d31.kdump.xz"],
    "x86_64-debian-kdump": ["kdump-mkdf-zlib-d31.kdump.xz"],
}


@pytest.mark.parametrize("folder, record", sources(
    lambda folder, record: record["file"] in DRGN_SOURCES.get(folder, ())))
def test_drgn_reads_the_kernel_release(folder, record, vmcore_of):
    need_drgn()
    truth = fc.truth(folder)
    info = truth["vmcoreinfo"]
    uts_name = int(info["SYMBOL(init_uts_ns)"], 16) + int(info.get("OFFSET(uts_namespace.name)", "0"))
    banner = truth.get("banner") or ""
    banner_address = truth.get("symbols", {}).get("linux_banner") or 0
    kernel = vmlinux(folder)
    done = run([sys.executable, "-c", DRGN_PROBE, vmcore_of(folder, record), kernel or "",
                f"{uts_name:x}", banner_address, len(banner.encode())], timeout=300)
    assert done.returncode == 0, f"drgn failed on the vmcore:\n{done.stderr[-3000:]}"
    out = json.loads(done.stdout)
    release = truth["kernel_release"]
    assert out["UTS_RELEASE"] == release          # drgn's parse of the VMCOREINFO note
    assert out["release_in_memory"] == release    # init_uts_ns through the page tables
    if banner_address:
        assert out["banner"] == banner
    if kernel is not None:
        assert out["init_uts_ns"] == release      # with the vmlinux's DWARF


# -- crash -------------------------------------------------------------------

LOG_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")


@pytest.mark.parametrize("folder, record",
                         sources(lambda folder, record: folder == "x86_64-custom"))
def test_crash_sys_log_bt(folder, record, vmcore_of):
    truth = fc.truth(folder)
    crash = need("crash")
    kernel = vmlinux(folder)
    assert kernel is not None, f"{folder} has no vmlinux"
    vmcore = vmcore_of(folder, record)
    done = run([crash, "-s", kernel, vmcore], timeout=300, input="sys\nlog\nbt -a\nq\n")
    output = done.stdout
    assert done.returncode == 0, (
        f"crash exit {done.returncode} (`crash -d 1 ...` shows why):\n"
        f"{done.stderr[-2000:]}{output[-2000:]}")
    assert "DUMPFILE:" in output, f"crash did not open the dump:\n{done.stderr[-2000:]}"

    release = re.search(r"^\s*RELEASE:\s*(\S+)", output, re.M)
    assert release and release.group(1) == truth["kernel_release"], output[:2000]
    cpus = re.search(r"^\s*CPUS:\s*(\d+)", output, re.M)
    assert cpus and int(cpus.group(1)) == truth["cpu_count"]

    log = [line for line in output.splitlines() if LOG_LINE.match(line)]
    tail = truth["log_tail_raw"][-8:]
    assert log[-len(tail):] == tail, "log tail differs:\n" + "\n".join(log[-len(tail):])

    for cpu in range(truth["cpu_count"]):
        assert re.search(rf"^PID:\s*\d+\s+TASK:\s*[0-9a-f]+\s+CPU:\s*{cpu}\b", output, re.M), \
            f"bt -a printed no backtrace for CPU {cpu}"


# -- gdb ---------------------------------------------------------------------

GDB_COMPLAINT = re.compile(r"not in executable format|not a core|format not recognized|truncated|"
                           r"corrupt|[Cc]an't|[Cc]ouldn't|[Ff]ailed|warning: .*core", re.I)


@pytest.mark.parametrize("folder, record", sources())
def test_gdb_loads_the_core(folder, record, vmcore_of):
    truth = fc.truth(folder)
    gdb = need("gdb" if truth["arch"] == "x86_64" else "gdb-multiarch")
    vmcore = vmcore_of(folder, record)
    kernel = vmlinux(folder)
    if kernel is not None:
        command = [gdb, "-nx", "-batch", "-ex", "info files", kernel, vmcore]
    else:
        command = [gdb, "-nx", "-batch", "-ex", f"core-file {vmcore}", "-ex", "info files"]
    done = run(command, timeout=300)
    assert done.returncode == 0, done.stderr
    # (gdb also prints frame #0's source line and "No such file" for the kernel sources)
    errors = [line for line in done.stderr.splitlines() if GDB_COMPLAINT.search(line)
              and "newer than core file" not in line]
    assert not errors, "\n".join(errors)
    assert "Local core dump file:" in done.stdout
    machine = {"x86_64": "elf64-x86-64", "s390x": "elf64-s390"}[truth["arch"]]
    assert f"file type {machine}" in done.stdout
    sections = set(re.findall(r" is load(\d+)[ab]?$", done.stdout, re.M))
    assert len(sections) == len(pt_loads(vmcore))
    threads = re.findall(r"^\[New (?:LWP|process|Thread) ", done.stdout, re.M)
    assert len(threads) == truth["cpu_count"], "gdb makes a thread per NT_PRSTATUS"


# -- dumpfs convert ----------------------------------------------------------

CONVERT_SOURCES = {("x86_64-custom", "qemu-elf.vmcore.xz"), ("x86_64-custom", "mkdf-zlib-d1.kdump.xz")}


@pytest.mark.parametrize("folder, record", sources(
    lambda folder, record: (folder, record["file"]) in CONVERT_SOURCES))
def test_convert_equals_the_mounted_vmcore(folder, record, vmcore_of, fixture_path, tmp_path):
    cmp = need("cmp")
    out = tmp_path / "converted.elf"
    done = run([sys.executable, "-m", "dumpfs", "convert", fixture_path(folder, record["file"]),
                out, "--format", "elf", "-q"], timeout=600)
    assert done.returncode == 0, done.stderr
    vmcore = vmcore_of(folder, record)
    assert out.stat().st_size == vmcore.stat().st_size
    same = run([cmp, out, vmcore], timeout=600)
    assert same.returncode == 0, same.stdout + same.stderr
