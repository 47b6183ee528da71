"""The DWARF reader on every shape gcc writes: DWARF 2 (old-style bitfields), 4, 4 with type
units in .debug_types (DW_FORM_ref_sig8), 5 (implicit_const, line_strp) and 5 with type units:
the layouts read back equal what the compiled program itself prints (sizeof, offsetof)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from dumpfs.kernel.dwarf import DwarfTypes

SOURCE = r"""
#include <stddef.h>
#include <stdio.h>
#include <string.h>
typedef unsigned long ul;
struct inner { int a; char b[3]; };
typedef struct inner inner_t;
struct outer {
    long x;
    union { int u1; short u2; };
    struct { char c; ul d; } named;
    const volatile inner_t in;
    struct outer *next;
    unsigned int f1:3, f2:7;
    char tail[5][2];
};
enum color { RED, GREEN = 5, BLUE = -1 };
struct outer g;
enum color col;
int main(void)
{
    unsigned char *p = (unsigned char *)&g;
    int bit = -1;
    memset(&g, 0, sizeof g);
    g.f2 = 0x7f;                            /* its first bit, counted from the struct's start */
    for (int i = 0; i < (int)(sizeof g * 8) && bit < 0; i++)
        if (p[i / 8] & (1 << (i % 8)))
            bit = i;
    printf("%zu %zu %zu %zu %zu %zu %d %zu\n", sizeof(struct outer), offsetof(struct outer, u2),
           offsetof(struct outer, named.d), offsetof(struct outer, in.b),
           offsetof(struct outer, next), offsetof(struct outer, tail), bit, sizeof(struct inner));
    return 0;
}
"""
FLAGS = ["-gdwarf-2", "-gdwarf-4", "-gdwarf-4 -fdebug-types-section", "-gdwarf-5",
         "-gdwarf-5 -fdebug-types-section"]


@pytest.mark.parametrize("flags", FLAGS)
def test_layouts_equal_the_compilers(flags, tmp_path, monkeypatch):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed")
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "t.c").write_text(SOURCE)
    program = tmp_path / "t"
    subprocess.run(["gcc", *flags.split(), "-O0", "-o", str(program), str(tmp_path / "t.c")],
                   check=True)
    size, u2, named_d, in_b, next_, tail, f2_bit, inner = map(
        int, subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout.split())
    types = DwarfTypes(program, "test")
    assert types.sizeof("outer") == size and types.sizeof("inner") == inner
    assert types.offsetof("outer", "u2") == u2            # anonymous union: flattened
    assert types.offsetof("outer", "named.d") == named_d  # anonymous struct type: dotted
    assert types.offsetof("outer", "in.b") == in_b        # through const volatile typedef
    assert types.offsetof("outer", "next") == next_ and types.member("outer", "next").type == "*"
    assert types.offsetof("outer", "tail") == tail and types.member("outer", "tail").type == "array"
    assert types.member("outer", "f2").bit_offset == f2_bit
    assert types.member("outer", "f2").bit_size == 7
    assert types.enum("color") == {"RED": 0, "GREEN": 5, "BLUE": -1}
    assert not types.has_struct("no_such_struct")
