"""Mutated headers and tables of every format (tests/fuzz.py) through `dumpfs info` and a real mount.

Runs on a fixed time budget, `DUMPFS_FUZZ_SECONDS` (default 90 s for the
whole module), with a fixed campaign seed and one that changes every day;
`DUMPFS_FUZZ_SEED=N` runs only campaign N (to reproduce a failure).  A
failing mutant is written as a regression record under the test's tmp
folder; move it to tests/data/fuzz/ once the backend is fixed, and
test_regressions replays it from then on.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fuzz
from conftest import is_mounted, run_dumpfs, unmount

BUDGET = float(os.environ.get("DUMPFS_FUZZ_SECONDS", "90"))
INFO_SHARE, MOUNT_SHARE = 0.7, 0.3      # of the budget; the regression replay is not budgeted
FIXED_SEED = 20261203
MOUNTED_MUTANTS = 12                    # mutants mounted at most (those `info` accepts)
WALK_TIMEOUT = 120


def campaign_seeds() -> list[int]:
    if os.environ.get("DUMPFS_FUZZ_SEED"):
        return [int(os.environ["DUMPFS_FUZZ_SEED"])]
    return [FIXED_SEED, int(datetime.date.today().strftime("%Y%m%d")) * 7 + 1]


SEEDS = campaign_seeds()


@pytest.fixture(scope="module")
def seeds_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "seeds.pickle"
    fuzz.save_seeds(fuzz.build_seeds(), path)
    return path


@pytest.fixture(scope="module")
def seeds(seeds_file):
    return fuzz.load_seeds(seeds_file)


def report(failures, seeds, folder: Path) -> str:
    """Each failure as a line saying how to reproduce it; its regression record saved in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for outcome in failures:
        job = outcome.job
        if "record" in job:
            lines.append(f"regression {job['record']}: {outcome.problem}")
            continue
        seed, files = fuzz.mutant(seeds, job["seed"], job["index"])
        path = folder / f"{seed.name}-{job['seed']}-{job['index']}.json"
        path.write_text(json.dumps(fuzz.diff(seed, files)) + "\n")
        lines.append(f"DUMPFS_FUZZ_SEED={job['seed']} mutant {job['index']} ({seed.name}; saved as "
                     f"{path}): {outcome.problem}")
    return "\n".join(lines)


@pytest.mark.parametrize("seed_value", SEEDS)
def test_info_fuzz(seed_value, seeds_file, seeds, tmp_path):
    """Every mutant: exit 0, or exit 1 with one `dumpfs:` line; no traceback, 70, hang or death."""
    print(f"fuzz campaign DUMPFS_FUZZ_SEED={seed_value}, {BUDGET * INFO_SHARE / len(SEEDS):.0f} s")
    campaign = fuzz.Campaign(seeds_file, tmp_path / "work")
    campaign.run(seed_value, BUDGET * INFO_SHARE / len(SEEDS))
    print(f"{len(campaign.outcomes)} mutants, {sum(o.code == 0 for o in campaign.outcomes)} opened")
    assert campaign.outcomes, "no mutant ran"
    assert not campaign.failures, report(campaign.failures, seeds, tmp_path / "failures")


def test_mount_fuzz(seeds_file, seeds, tmp_path, mountpoint):
    """Mutants that open are mounted: every file reads or fails with EIO; the daemon stays up."""
    deadline = time.monotonic() + BUDGET * MOUNT_SHARE
    seed_value = SEEDS[-1]          # the mutants test_info_fuzz ran first, now mounted
    campaign = fuzz.Campaign(seeds_file, tmp_path / "work")
    mounted, index, problems = 0, 0, []
    try:
        while mounted < MOUNTED_MUTANTS and time.monotonic() < deadline:
            outcome = campaign.run_job({"seed": seed_value, "index": index})
            index += 1
            if outcome.problem is not None:
                problems.append(report([outcome], seeds, tmp_path / "failures"))
                continue
            if outcome.code != 0:
                continue
            seed, files = fuzz.mutant(seeds, seed_value, index - 1)
            paths = fuzz.write_mutant(tmp_path / "mounted", seed, files, f"m{index - 1}")
            problems += [f"DUMPFS_FUZZ_SEED={seed_value} mutant {index - 1} ({seed.name}) mounted: {p}"
                         for p in mount_and_read(paths, mountpoint)]
            mounted += 1
            for path in paths:
                path.unlink()
    finally:
        campaign.close()
    print(f"{mounted} mutants of campaign {seed_value} mounted and read")
    assert mounted, "no mutant opened in the budget"
    assert not problems, "\n".join(problems)


def mount_and_read(paths, mountpoint) -> list[str]:
    done = run_dumpfs("mount", *paths, mountpoint, timeout=120)
    try:
        if done.returncode != 0:
            return [] if fuzz.verdict(done.returncode, "", done.stderr) is None else \
                [f"mount: exit {done.returncode}: {done.stderr.strip()[-2000:]}"]
        try:
            walk = subprocess.run([sys.executable, fuzz.__file__, "walk", str(mountpoint)],
                                  capture_output=True, text=True, timeout=WALK_TIMEOUT)
        except subprocess.TimeoutExpired:
            return [f"reading the tree took more than {WALK_TIMEOUT} s"]
        problems = json.loads(walk.stdout) if walk.returncode == 0 else [f"walk failed: {walk.stderr[-2000:]}"]
        info = (mountpoint / "info").read_text()
        if "Dump format" not in info:
            problems.append(f"info after the reads: {info[:200]!r}")
        return problems
    finally:
        unmount(mountpoint)
        assert not is_mounted(mountpoint)


def regression_records() -> list[tuple[str, dict]]:
    return [(path.name, json.loads(path.read_text())) for path in sorted(fuzz.REGRESSIONS.glob("*.json"))]


def test_regressions_are_small():
    records = list(fuzz.REGRESSIONS.glob("*.json"))
    assert records, f"no regression records in {fuzz.REGRESSIONS}"
    for path in records:
        assert path.stat().st_size <= fuzz.MAX_REGRESSION_BYTES, path


def test_regressions(seeds_file, seeds, tmp_path):
    """Every input the fuzzer ever broke dumpfs with, replayed."""
    campaign = fuzz.Campaign(seeds_file, tmp_path / "work")
    try:
        for name, record in regression_records():
            outcome = campaign.run_job({"record": record})
            assert outcome.problem is None, f"{name}: {outcome.problem}"
    finally:
        campaign.close()
