"""A vmlinux or System.map that does not belong to the dump is refused with one line, not used.

Real files of real other kernels: the distro debug vmlinux of another Debian
build, the s390x custom kernel's vmlinux for an x86_64 dump, one kernel's
System.map for another's dump, Debian's placeholder System.map, a cut vmlinux.
"""

from __future__ import annotations

import fixturecache as fc
import pytest
from conftest import is_mounted, run_dumpfs

PLACEHOLDER = "The real System.map is in the linux-image-5.10.0-32-amd64-dbg package\n"


def refused(*args) -> str:
    """`dumpfs info ARGS` fails with exit 1 and one line, no traceback; returns that line."""
    done = run_dumpfs("info", *args, timeout=600)
    assert done.returncode == 1, (done.returncode, done.stdout[-500:], done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dumpfs: ") and lines[0].endswith("not used"), lines[0]
    return lines[0]


def test_a_debug_vmlinux_of_another_build(fixture_path):
    dump = fixture_path("x86_64-debian11", "qemu-elf.vmcore.xz")
    line = refused("--vmlinux", fc.debug_vmlinux("x86_64-debian"), dump)
    assert "build id" in line and "another build" in line


def test_a_vmlinux_of_another_machine(fixture_path):
    dump = fixture_path("x86_64-custom", "qemu-elf.vmcore.xz")
    line = refused("--vmlinux", fixture_path("s390x-custom", "vmlinux-6.1.192-dumpfs.xz"), dump)
    assert "a kernel for s390x" in line and "x86_64 machine" in line


def test_a_system_map_of_another_build(fixture_path):
    """No build id in a System.map: its addresses, moved by KERNELOFFSET, give it away."""
    dump = fixture_path("x86_64-debian", "qemu-elf.vmcore.xz")
    line = refused("--system-map", fixture_path("x86_64-custom", "System.map-6.1.192-dumpfs"), dump)
    assert "symbols VMCOREINFO also names are elsewhere" in line


def test_a_placeholder_system_map(fixture_path, tmp_path):
    placeholder = tmp_path / "System.map-5.10.0-32-amd64"
    placeholder.write_text(PLACEHOLDER)
    line = refused("--system-map", placeholder, fixture_path("x86_64-debian11", "qemu-elf.vmcore.xz"))
    assert "placeholder" in line and "The real System.map" in line


def test_a_truncated_vmlinux(fixture_path, tmp_path):
    whole = fixture_path("x86_64-custom", "vmlinux-6.1.192-dumpfs.xz")
    cut = tmp_path / "vmlinux-cut"
    with open(whole, "rb") as f:
        cut.write_bytes(f.read(whole.stat().st_size // 2))
    line = refused("--vmlinux", cut, fixture_path("x86_64-custom", "qemu-elf.vmcore.xz"))
    assert "truncated" in line


def test_mount_refuses_before_mounting(fixture_path, mountpoint):
    dump = fixture_path("x86_64-debian11", "qemu-elf.vmcore.xz")
    done = run_dumpfs("mount", "--vmlinux", fc.debug_vmlinux("x86_64-debian"), dump, mountpoint,
                      timeout=600)
    assert done.returncode == 1 and "another build" in done.stderr
    assert not is_mounted(mountpoint)


@pytest.mark.parametrize("folder, dump, vmlinux, system_map", [
    ("x86_64-custom", "qemu-elf.vmcore.xz", "vmlinux-6.1.192-dumpfs.xz", "System.map-6.1.192-dumpfs"),
    ("s390x-custom", "qemu-dgm.elf.xz", "vmlinux-6.1.192-dumpfs.xz", "System.map-6.1.192-dumpfs"),
])
def test_the_right_files_are_used(fixture_path, folder, dump, vmlinux, system_map):
    done = run_dumpfs("info", "--vmlinux", fixture_path(folder, vmlinux),
                      "--system-map", fixture_path(folder, system_map), fixture_path(folder, dump),
                      timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
