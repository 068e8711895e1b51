"""The kill matrix: SIGKILL a real process at every rename, link, unlink and exchange of a
download commit, a conversion, a merge swap (fresh, append, new file, back-fill) and a
features swap (first, extend, recompute); and of an append and an extension on a
filesystem without the atomic directory exchange (two renames: readers may find no folder
for a moment, never a mixed set).

After each kill, before any re-run, a reader of the documented paths sees the old set or
the new set of the symbol's files, byte for byte, and no archive's rows are missing. Then
the data dir is copied (`cp -a`) and moved (`mv`); the run on the copy leaves the moved
original untouched, and the run on the moved dir ends byte-identical to a clean run, with
nothing left in the readers' paths and nothing written beside the data dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

from tasks.datadir import open_data_dir
from tasks.features.incremental import compute_feature, parse_feature
from tasks.lake.compact import compact_symbol
from tests.conftest import REPO
from tests.fake_archive import FakeArchive, publish_day
from tests.test_compact import OPTS, stage_day

pytestmark = pytest.mark.slow

FEATURE = ("ema_dollar_imbalance:exp_num_ticks_init=100,exp_num_ticks_min=10,exp_num_ticks_max=300,"
           "min_ticks=5,max_ticks=5000,expected_imbalance_window=500")
CHANGED = FEATURE.replace("min_ticks=5,", "min_ticks=7,")
BIG, TINY = 1 << 30, 1
LAKE = "lake/trades/market=spot/symbol=BTCUSDT"
BARS = "features/ema_dollar_imbalance/market=spot/symbol=BTCUSDT"


def driver(step: str, dirs: list[Path], args: list[str], kill_at: int = 0, no_exchange: bool = False
           ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), KILL_AT=str(kill_at))
    if no_exchange:
        env["KILL_NO_EXCHANGE"] = "1"
    return subprocess.run([sys.executable, "-m", "tests.kill_driver", step, os.pathsep.join(map(str, dirs)), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def visible(data: Path, sub: str) -> dict[str, str]:
    """What a reader of `sub` sees: committed (not dot-prefixed) files and their sha256."""
    root = data / sub
    if not root.is_dir():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(data)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def everything(data: Path) -> dict[str, str]:
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(data.rglob("*"))}


@dataclass
class Scenario:
    step: str
    prepare: Callable[[Path, FakeArchive], list[str]]  # builds the state before the step; returns its args
    folder: str  # the folder the step changes (in the readers' paths: exactly the old or the new set)
    no_exchange: bool = False  # as on a filesystem without RENAME_EXCHANGE: two renames, a moment of neither


def _merge_state(days: list[int], target: int, then: list[int]) -> Callable[[Path, FakeArchive], list[str]]:
    def prepare(data: Path, fa: FakeArchive) -> list[str]:
        for n in days:
            stage_day(data, n)
            if target == TINY:
                compact_symbol(data, "spot", "BTCUSDT", target, OPTS, consolidate=False)
        if days:
            compact_symbol(data, "spot", "BTCUSDT", target, OPTS, consolidate=False)
        for n in then:
            stage_day(data, n)
        return [str(target)]
    return prepare


def _features_state(days: list[int], feature: str | None, then: list[int], spec: str
                    ) -> Callable[[Path, FakeArchive], list[str]]:
    def prepare(data: Path, fa: FakeArchive) -> list[str]:
        for n in days:
            stage_day(data, n)
        compact_symbol(data, "spot", "BTCUSDT", BIG, OPTS, consolidate=False)
        if feature:
            compute_feature(data, "spot", "BTCUSDT", parse_feature(feature), batch_rows=700)
        for n in then:
            stage_day(data, n)
        if then:
            compact_symbol(data, "spot", "BTCUSDT", BIG, OPTS, consolidate=False)
        return [spec]
    return prepare


def _download(data: Path, fa: FakeArchive) -> list[str]:
    pub = publish_day(fa, "spot", "BTCUSDT", date(2024, 1, 3), 2000, 1, 3)
    return [fa.base_url, "2024-01-03", pub.sha256]


def _convert(data: Path, fa: FakeArchive) -> list[str]:
    args = _download(data, fa)
    done = driver("download", [data], args)
    assert done.returncode == 0, done.stderr
    return args[1:]


SCENARIOS = {
    "download": Scenario("download", _download, "archive"),
    "convert": Scenario("convert", _convert, "staging"),
    "merge-fresh": Scenario("merge", _merge_state([], BIG, [1, 2]), LAKE),
    "merge-append": Scenario("merge", _merge_state([1, 2], BIG, [3]), LAKE),
    "merge-new-file": Scenario("merge", _merge_state([1, 2], TINY, [3]), LAKE),
    "merge-backfill": Scenario("merge", _merge_state([1, 3], BIG, [2]), LAKE),
    "features-first": Scenario("features", _features_state([1, 2], None, [], FEATURE), BARS),
    "features-extend": Scenario("features", _features_state([1, 2], FEATURE, [3], FEATURE), BARS),
    "features-recompute": Scenario("features", _features_state([1, 2], FEATURE, [], CHANGED), BARS),
    "merge-append-no-exchange": Scenario("merge", _merge_state([1, 2], BIG, [3]), LAKE, no_exchange=True),
    "features-extend-no-exchange": Scenario("features", _features_state([1, 2], FEATURE, [3], FEATURE), BARS,
                                            no_exchange=True),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_kill_at_every_file_operation(name: str, tmp_path: Path, fake_archive: FakeArchive) -> None:
    sc = SCENARIOS[name]
    before = tmp_path / "before"
    open_data_dir(before)
    args = sc.prepare(before, fake_archive)
    clean = tmp_path / "clean"
    shutil.copytree(before, clean, symlinks=True)
    run = driver(sc.step, [clean], args, no_exchange=sc.no_exchange)
    assert run.returncode == 0, run.stderr
    ops = json.loads(run.stdout.splitlines()[-1])["operations"]
    assert ops >= 1, ops
    subs = ("lake", "staging", "archive", "features")
    old = {s: visible(before, s) for s in subs}
    new = {s: visible(clean, s) for s in subs}
    assert old[sc.folder.split("/")[0]] != new[sc.folder.split("/")[0]]  # the step changes what readers see

    work = tmp_path / "work"
    work.mkdir()
    copies, moved = [], []
    for k in range(1, ops + 1):
        data = work / f"data-{k}"
        shutil.copytree(before, data, symlinks=True)
        killed = driver(sc.step, [data], args, kill_at=k, no_exchange=sc.no_exchange)
        assert killed.returncode == -signal.SIGKILL, (k, killed.returncode, killed.stderr[-2000:])
        # What a reader sees now, before any re-run.
        seen = visible(data, sc.folder)
        want_old = {p: h for p, h in old[sc.folder.split("/")[0]].items() if p.startswith(sc.folder)}
        want_new = {p: h for p, h in new[sc.folder.split("/")[0]].items() if p.startswith(sc.folder)}
        if sc.folder in (LAKE, BARS):  # the readers' paths; downloads and staging are internal
            allowed = (want_old, want_new, {}) if sc.no_exchange else (want_old, want_new)
            assert seen in allowed, f"kill at op {k}/{ops}: readers see a mixed set {sorted(seen)}"
        for s in subs:  # elsewhere, every committed file is whole: as before the step or as after it
            for p, h in visible(data, s).items():
                assert h in (old[s].get(p), new[s].get(p)), f"kill at op {k}: {p} is neither old nor new"
        if sc.step == "merge" and seen in (want_old, {}):  # the lake not yet new: no staged archive may be gone
            assert old["staging"].items() <= visible(data, "staging").items(), f"kill at op {k}: rows lost"
        if sc.folder == LAKE and seen:  # the three readers the README documents agree
            ids = ds.dataset(data / "lake" / "trades", format="parquet", partitioning="hive").to_table(
                columns=["trade_id"])["trade_id"].to_numpy()
            assert len(set(ids.tolist())) == len(ids), f"kill at op {k}: duplicate trade ids"
            rows, distinct = duckdb.sql(f"SELECT count(*), count(DISTINCT trade_id) FROM read_parquet("
                                        f"'{data}/lake/trades/*/*/*.parquet', hive_partitioning=true)").fetchall()[0]
            assert rows == distinct == len(ids), f"kill at op {k}: DuckDB sees {rows} rows, {distinct} ids"
            pl_ids = pl.scan_parquet(f"{data}/lake/trades/*/*/*.parquet").select("trade_id").collect()["trade_id"]
            assert pl_ids.len() == pl_ids.n_unique() == len(ids), f"kill at op {k}: Polars disagrees"
        copy = work / f"copy-{k}"
        subprocess.run(["cp", "-a", str(data), str(copy)], check=True)
        target = work / f"moved-{k}"
        subprocess.run(["mv", str(data), str(target)], check=True)
        copies.append(copy)
        moved.append(target)

    originals = {p: everything(p) for p in moved}
    rerun = driver(sc.step, copies, args, no_exchange=sc.no_exchange)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for p in moved:  # the run on a copy touched nothing of the original
        assert everything(p) == originals[p], f"the run on a copy changed {p}"
    rerun = driver(sc.step, moved, args, no_exchange=sc.no_exchange)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for p in [*moved, *copies]:
        for s in subs:
            assert visible(p, s) == new[s], f"{p.name}: {s} differs from a clean run's"
        assert not (p / ".swap").exists() or not any((p / ".swap").iterdir())
        hidden = [q for s in subs for q in (p / s).rglob(".*")] if p.exists() else []
        assert hidden == [], hidden
    # Nothing was written beside the data dirs.
    assert sorted(q.name for q in work.iterdir()) == sorted([*(p.name for p in copies), *(p.name for p in moved)])
    print(f"{name}: {ops} kill points, each checked before and after a move and a copy")
