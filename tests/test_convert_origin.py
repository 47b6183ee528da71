"""`dumpfs convert` records what its source did not hold, and `info` reads it back.

A real makedumpfile `-d 31` dump converted to ELF must still say who wrote it,
at which dump level, and which memory was excluded (not just "absent"), also
after a second conversion and through a real mount.
"""

from __future__ import annotations

import json

from conftest import run_dumpfs


def info_json(path) -> dict:
    done = run_dumpfs("info", "--json", path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def convert(source, out) -> None:
    done = run_dumpfs("convert", "-q", source, out, timeout=600)
    assert done.returncode == 0, done.stderr


def test_a_converted_filtered_dump_keeps_its_origin(fixture_path, tmp_path, mount):
    source = fixture_path("x86_64-custom", "mkdf-lzo-d31.kdump.xz")
    out = tmp_path / "converted.elf"
    convert(source, out)
    before, after = info_json(source), info_json(out)
    assert before["writer"] == "makedumpfile" and before["dump_level"] == 31
    assert after["format"] == "elf"
    assert after["writer"] == "makedumpfile (converted by dumpfs)"
    assert after["dump_level"] == 31
    assert after["details"]["converted from"] == "kdump"
    for key in ("present_bytes", "excluded_bytes", "missing_bytes", "end"):
        assert after["memory"][key] == before["memory"][key], key
    assert before["memory"]["excluded_bytes"] > 200 << 20
    # through real mounts: the same map, and an excluded page still says "excluded"
    ours, theirs = mount(out), mount(source)
    assert (ours / "memory" / "map").read_text() == (theirs / "memory" / "map").read_text()
    assert "excluded" in (ours / "memory" / "map").read_text()


def test_a_second_conversion_keeps_the_first_origin(fixture_path, tmp_path):
    source = fixture_path("x86_64-custom", "mkdf-lzo-d31.kdump.xz")
    first, second = tmp_path / "first.elf", tmp_path / "second.elf"
    convert(source, first)
    convert(first, second)
    again = info_json(second)
    assert again["writer"] == "makedumpfile (converted by dumpfs)"
    assert again["details"]["converted from"] == "kdump"
    assert again["memory"]["excluded_bytes"] == info_json(source)["memory"]["excluded_bytes"]


def test_a_damaged_origin_note_is_a_warning(fixture_path, tmp_path):
    source = fixture_path("x86_64-custom", "mkdf-lzo-d31.kdump.xz")
    out = tmp_path / "converted.elf"
    convert(source, out)
    data = bytearray(out.read_bytes()[:8 << 20])
    at = data.find(b'{"format"')
    assert at > 0
    data[at:at + 9] = b'{"format\xff'              # no longer JSON
    damaged = tmp_path / "damaged.elf"
    damaged.write_bytes(bytes(data) + out.read_bytes()[8 << 20:])
    info = info_json(damaged)
    assert any("DUMPFS note unreadable" in p for p in info["problems"])
    assert info["writer"] != "makedumpfile (converted by dumpfs)"
    assert info["memory"]["present_bytes"] == info_json(source)["memory"]["present_bytes"]
