"""The Prefect-free read API (`tasks.read`, re-exported by `tasks.lake`): markets, days, pruning, errors, swaps.

Lakes are built by the real merge (`tasks.lake.compact.compact_symbol`) from staged archives written
by the lake writer; spot and USD-M hold the same symbol with different trade ids, so a read
that mixes markets cannot pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flows.status import lake_status
from flows.status_json import status_document
from tasks.errors import LakeReadError
from tasks.features.incremental import compute_feature, parse_feature, read_feature
from tasks.lake import read_bars, read_trades, read_trades_pandas, to_pandas
from tasks.lake.compact import compact_symbol
from tasks.lake.gaps import gap_report, write_gap_report
from tasks.lake.inventory import lake_files
from tasks.schema import TRADES_SCHEMA
from tasks.source.archive_spec import ArchiveSpec
from tests.conftest import REPO
from tests.fake_archive import FakeArchive, publish_day, publish_month
from tests.fake_archive.scenarios import PublishedArchive
from tests.test_compact import OPTS, ROWS, day, stage, trades
from tests.test_validate import flip_byte_in_column

#: First trade id per market: disjoint, so a row of the wrong market is visible in the ids.
FIRST_ID = {"spot": 1, "um": 5_000_000}
DAYS = 3


def market_trades(market: str, n: int) -> pa.Table:
    """Day `n` of BTCUSDT as the market's archive would give it (futures: no is_best_match)."""
    t = trades(FIRST_ID[market] + (n - 1) * ROWS, ROWS, day(n), seed=n + (100 if market == "um" else 0))
    if market == "um":
        t = t.set_column(7, TRADES_SCHEMA.field("is_best_match"), pa.nulls(ROWS, pa.bool_()))
    return t


def build_lake(data_dir: Path, target: int = 1 << 30) -> dict[str, pa.Table]:
    """Spot and USD-M BTCUSDT, days 1..3, merged (one file each, or one file per day with a tiny target)."""
    out = {}
    for market in ("spot", "um"):
        tables = [market_trades(market, n) for n in range(1, DAYS + 1)]
        for n, t in enumerate(tables, 1):
            stage(data_dir, ArchiveSpec(market, "BTCUSDT", "daily", day(n)), t)  # type: ignore[arg-type]
        compact_symbol(data_dir, market, "BTCUSDT", target, OPTS, False)
        out[market] = pa.concat_tables(tables)
    return out


def in_days(table: pa.Table, first: date, last: date) -> pa.Table:
    lo, hi = (int(datetime.combine(d, datetime.min.time(), tzinfo=UTC).timestamp()) * 1_000_000
              for d in (first, date.fromordinal(last.toordinal() + 1)))
    times = pc.cast(table["time"], pa.int64())
    return table.filter(pc.and_(pc.greater_equal(times, lo), pc.less(times, hi)))


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Path, dict[str, pa.Table]]:
    return tmp_path, build_lake(tmp_path)


@pytest.mark.parametrize("market", ["spot", "um"])
def test_read_trades_gives_only_the_market_asked_whole_or_by_inclusive_days(
        lake: tuple[Path, dict[str, pa.Table]], market: str) -> None:
    data_dir, source = lake
    whole = read_trades(data_dir, market, "BTCUSDT")
    assert whole.equals(source[market]) and whole.schema.equals(TRADES_SCHEMA.remove_metadata(), check_metadata=True)
    for first, last in ((day(2), day(2)), (day(1), day(2)), (day(2), day(3)), (date(2023, 12, 1), day(1))):
        got = read_trades(data_dir, market, "BTCUSDT", first.isoformat(), last)  # str and date alike
        assert got.equals(in_days(source[market], first, last)), (first, last)
    ids = read_trades(data_dir, market, "BTCUSDT", columns=["trade_id"])["trade_id"].to_numpy()
    assert (np.diff(ids) == 1).all() and ids[0] == FIRST_ID[market]
    assert read_trades(data_dir, market, "BTCUSDT", start=day(DAYS + 1)).num_rows == 0  # after the last day
    assert read_trades(data_dir, market, "BTCUSDT", end=date(2023, 12, 31)).num_rows == 0


def test_end_day_holds_its_last_microsecond_and_not_the_next_midnight(tmp_path: Path) -> None:
    t = market_trades("spot", 1)
    times = t["time"].cast(pa.int64()).to_numpy().copy()
    midnight = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp()) * 1_000_000
    times[-1] = midnight - 1  # 2024-01-01 23:59:59.999999
    t = t.set_column(5, TRADES_SCHEMA.field("time"), pa.array(times, TRADES_SCHEMA.field("time").type))
    stage(tmp_path, ArchiveSpec("spot", "BTCUSDT", "daily", day(1)), t)
    t2 = market_trades("spot", 2)
    times2 = t2["time"].cast(pa.int64()).to_numpy().copy()
    times2[0] = midnight  # 2024-01-02 00:00:00 exactly
    t2 = t2.set_column(5, TRADES_SCHEMA.field("time"), pa.array(times2, TRADES_SCHEMA.field("time").type))
    stage(tmp_path, ArchiveSpec("spot", "BTCUSDT", "daily", day(2)), t2)
    compact_symbol(tmp_path, "spot", "BTCUSDT", 1 << 30, OPTS, False)
    got = read_trades(tmp_path, "spot", "BTCUSDT", day(1), day(1), columns=["trade_id", "time"])
    assert got.num_rows == ROWS and got["trade_id"][-1].as_py() == t["trade_id"][-1].as_py()
    got = read_trades(tmp_path, "spot", "BTCUSDT", day(2), day(2), columns=["trade_id"])
    assert got.num_rows == ROWS and got["trade_id"][0].as_py() == t2["trade_id"][0].as_py()


def test_files_and_row_groups_outside_the_range_are_not_read(tmp_path: Path) -> None:
    # One file per day (tiny target): the first day's file is garbage from its first byte.
    source = build_lake(tmp_path, target=1)["spot"]
    files = lake_files(tmp_path, "spot", "BTCUSDT")
    assert [f.name for f in files] == [f"{day(n)}_{day(n)}.parquet" for n in range(1, DAYS + 1)]
    files[0].write_bytes(b"not parquet" * 100)
    assert read_trades(tmp_path, "spot", "BTCUSDT", day(2), day(3)).equals(in_days(source, day(2), day(3)))
    with pytest.raises(LakeReadError) as err:
        read_trades(tmp_path, "spot", "BTCUSDT", day(1), day(2))
    assert err.value.source == str(files[0]) and "damaged file" in err.value.reason

    # One file for all days, 1,000-row groups: a flipped byte in a price page of the first row
    # group is never met by a read of days 2..3 (pruned by the time statistics), and named otherwise.
    other = tmp_path / "one-file"
    source = build_lake(other)["um"]
    [path] = lake_files(other, "um", "BTCUSDT")
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == DAYS * ROWS // 1000
    flip_byte_in_column(path, "price", row_group=0)
    assert read_trades(other, "um", "BTCUSDT", day(2), day(3)).equals(in_days(source, day(2), day(3)))
    with pytest.raises(LakeReadError) as err:
        read_trades(other, "um", "BTCUSDT", day(1), day(1), columns=["trade_id", "price"])
    assert err.value.source == str(path) and "damaged file" in err.value.reason
    # Columns not asked for are not read either.
    assert read_trades(other, "um", "BTCUSDT", columns=["trade_id", "time"]).num_rows == DAYS * ROWS


@pytest.mark.parametrize(("args", "kwargs", "source", "reason"), [
    (("cm", "BTCUSDT"), {}, "market=cm/symbol=BTCUSDT",
     "no such symbol for cm (held: none); BTCUSDT is held for spot, um"),
    (("spot", "ETHUSDT"), {}, "market=spot/symbol=ETHUSDT", "no such symbol for spot (held: BTCUSDT)"),
    (("futures", "BTCUSDT"), {}, "market='futures'", "unknown market"),
    (("spot", "btcusdt"), {}, "symbol='btcusdt'", "[A-Z0-9_]{1,40}"),
    (("spot", "../um"), {}, "symbol='../um'", "[A-Z0-9_]{1,40}"),
    (("spot", "BTCUSDT"), {"start": "2024-1-2"}, "start='2024-1-2'", "YYYY-MM-DD"),
    (("spot", "BTCUSDT"), {"end": "2024-02-30"}, "end='2024-02-30'", "YYYY-MM-DD"),
    (("spot", "BTCUSDT"), {"start": datetime(2024, 1, 2, 12, tzinfo=UTC)}, "start=", "not a time"),
    (("spot", "BTCUSDT"), {"start": "2024-01-03", "end": "2024-01-02"}, "start=2024-01-03 end=2024-01-02",
     "start is after end"),
    (("spot", "BTCUSDT"), {"columns": ["price", "side"]}, "columns=['price', 'side']", "unknown column 'side'"),
    (("spot", "BTCUSDT"), {"columns": "price"}, "columns='price'", "not one string"),
])
def test_bad_requests_raise_one_error_naming_the_thing_and_the_reason(
        lake: tuple[Path, dict[str, pa.Table]], args: tuple[str, str], kwargs: dict[str, object], source: str,
        reason: str) -> None:
    data_dir, _ = lake
    with pytest.raises(LakeReadError) as err:
        read_trades(data_dir, *args, **kwargs)  # type: ignore[arg-type]
    assert source in err.value.source and reason in err.value.reason
    assert str(err.value).count("\n") == 0


def test_a_data_dir_without_a_lake_is_named(tmp_path: Path) -> None:
    with pytest.raises(LakeReadError) as err:
        read_trades(tmp_path / "nowhere", "spot", "BTCUSDT")
    assert err.value.source == str(tmp_path / "nowhere" / "lake" / "trades") and "no lake here" in err.value.reason


def test_pandas_path_keeps_is_best_match_a_nullable_boolean_in_every_market(
        lake: tuple[Path, dict[str, pa.Table]]) -> None:
    data_dir, source = lake
    spot, um = (read_trades_pandas(data_dir, m, "BTCUSDT") for m in ("spot", "um"))
    for df in (spot, um):
        assert str(df["is_best_match"].dtype) == "boolean" and df["is_buyer_maker"].dtype == np.bool_
        assert df["trade_id"].dtype == np.int64 and str(df["time"].dtype) == "datetime64[us, UTC]"
    assert bool(spot["is_best_match"].all()) and bool(um["is_best_match"].isna().all())
    both = to_pandas(pa.concat_tables([read_trades(data_dir, m, "BTCUSDT") for m in ("spot", "um")]))
    assert str(both["is_best_match"].dtype) == "boolean" and int(both["is_best_match"].isna().sum()) == DAYS * ROWS
    # What plain pandas gives, and why the README points to dtype_backend: pyarrow turns a boolean
    # column holding a null into `object` (NumPy has no nullable bool); the files are not the cause.
    folder = data_dir / "lake" / "trades"
    assert pd.read_parquet(folder / "market=um" / "symbol=BTCUSDT")["is_best_match"].dtype == object
    assert b"pandas" not in (pq.read_schema(lake_files(data_dir, "um", "BTCUSDT")[0]).metadata or {})
    typed = pd.read_parquet(folder, filters=[("market", "==", "um"), ("symbol", "==", "BTCUSDT")],
                            dtype_backend="numpy_nullable")
    assert str(typed["is_best_match"].dtype) == "boolean" and len(typed) == source["um"].num_rows


def test_read_bars_by_market_symbol_feature_and_close_day(lake: tuple[Path, dict[str, pa.Table]]) -> None:
    data_dir, _ = lake
    feature = parse_feature("tick:threshold=500")
    for market in ("spot", "um"):
        compute_feature(data_dir, market, "BTCUSDT", feature)
    for market in ("spot", "um"):
        bars = read_feature(data_dir, market, "BTCUSDT", feature)
        assert read_bars(data_dir, market, "BTCUSDT", "tick").equals(bars)
        got = read_bars(data_dir, market, "BTCUSDT", "tick", day(2), day(2), columns=["close_time", "first_trade_id"])
        close = pc.cast(bars["close_time"], pa.int64()).to_numpy()
        lo, hi = (int(datetime.combine(d, datetime.min.time(), tzinfo=UTC).timestamp()) * 1_000_000
                  for d in (day(2), day(3)))
        want = bars.filter(pa.array((close >= lo) & (close < hi))).select(["close_time", "first_trade_id"])
        assert got.equals(want) and 0 < got.num_rows < bars.num_rows
        ids = got["first_trade_id"].to_numpy()
        assert ((ids >= FIRST_ID[market]) & (ids < FIRST_ID[market] + DAYS * ROWS)).all() and (np.diff(ids) > 0).all()
    assert read_bars(data_dir, "um", "BTCUSDT", "tick", "2025-01-01").num_rows == 0
    with pytest.raises(LakeReadError) as err:
        read_bars(data_dir, "spot", "BTCUSDT", "dollar_10m")
    assert err.value.source == str(data_dir / "features" / "dollar_10m") and "no such feature" in err.value.reason
    with pytest.raises(LakeReadError, match="feature name"):
        read_bars(data_dir, "spot", "BTCUSDT", "../lake")


def test_importing_and_reading_loads_no_prefect(lake: tuple[Path, dict[str, pa.Table]]) -> None:
    data_dir, source = lake
    code = textwrap.dedent(f"""
        import json, sys
        import tasks.lake
        from tasks.lake import read_trades, read_trades_pandas
        n = read_trades({str(data_dir)!r}, "um", "BTCUSDT").num_rows
        df = read_trades_pandas({str(data_dir)!r}, "spot", "BTCUSDT")
        loaded = {{m.split(".")[0] for m in sys.modules}} & {{"prefect", "dask", "numba"}}
        print(json.dumps({{"rows": n, "pandas_rows": len(df), "loaded": sorted(loaded)}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc == {"rows": source["um"].num_rows, "pandas_rows": source["spot"].num_rows, "loaded": []}


_SWAPPER = """
import os, sys, time
from pathlib import Path
from tasks.atomic import swap_folder, temp_path_for
data_dir, folder, stop = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sets = [sorted(Path(p).iterdir()) for p in sys.argv[4:]]
swaps = 0
while not stop.exists():
    new = sets[swaps % 2]
    old = [p for p in folder.iterdir() if not p.name.startswith(".")]
    written = []
    for src in new:
        tmp = temp_path_for(folder / src.name)
        os.link(src, tmp)
        written.append((tmp, folder / src.name))
    swap_folder(data_dir, folder, written, [p for p in old if p.name not in {s.name for s in new}])
    swaps += 1
    (data_dir / "swaps.tmp").write_text(str(swaps))
    os.replace(data_dir / "swaps.tmp", data_dir / "swaps")
    time.sleep(0.002)
print(swaps)
"""


@pytest.mark.slow
def test_a_read_during_swaps_holds_one_whole_set_of_files(tmp_path: Path) -> None:
    # Two sets of the same rows: one file of three days, or three files of one day; a process flips the
    # live folder between them (the merge's own swap) while reads go on.
    whole, split, data = tmp_path / "whole", tmp_path / "split", tmp_path / "data"
    source = build_lake(whole)["spot"]
    build_lake(split, target=1)
    sets = [lake_files(d, "spot", "BTCUSDT")[0].parent for d in (whole, split)]
    build_lake(data)
    folder = lake_files(data, "spot", "BTCUSDT")[0].parent
    stop = tmp_path / "stop"
    swapper = subprocess.Popen(
        [sys.executable, "-c", _SWAPPER, str(data), str(folder), str(stop), *map(str, sets)], cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    ok = retried_out = 0

    def swaps() -> int:
        return int((data / "swaps").read_text()) if (data / "swaps").exists() else 0

    try:
        while (ok + retried_out < 200 or swaps() < 20) and swapper.poll() is None:  # reads across 20 swaps
            try:
                got = read_trades(data, "spot", "BTCUSDT", columns=["trade_id", "price"])
            except LakeReadError as exc:  # every listing of the attempts met a swap: said so, never wrong rows
                assert "read again" in exc.reason, exc
                retried_out += 1
                continue
            assert got.equals(source.select(["trade_id", "price"]))
            ok += 1
    finally:
        stop.touch()
        out, _ = swapper.communicate(timeout=60)
    assert swapper.returncode == 0 and int(out) >= 20, out
    assert ok > retried_out


def test_status_json_gives_gaps_as_days_kinds_and_sizes(tmp_path: Path) -> None:
    # Days 1, 2 and 5 in the lake (day 5 missing 10 ids inside), 3, 6, 7 not published, 4 refused.
    for n in (1, 2, 5):
        t = market_trades("spot", n)
        if n == 5:
            t = pa.concat_tables([t.slice(0, 100), t.slice(110)])
        stage(tmp_path, ArchiveSpec("spot", "BTCUSDT", "daily", day(n)), t)
    compact_symbol(tmp_path, "spot", "BTCUSDT", 1 << 30, OPTS, False)
    refused = ArchiveSpec("spot", "BTCUSDT", "daily", day(4))
    note = refused.quarantine_note(tmp_path)
    note.parent.mkdir(parents=True)
    note.write_text(json.dumps({"archive": refused.key, "sha256": "c" * 64, "kind": "checksum mismatch",
                                "reason": "checksum mismatch: sha256 differs from the published .CHECKSUM"}))
    write_gap_report(tmp_path, gap_report(tmp_path, "spot", "BTCUSDT", day(1), day(7), {day(3), day(6), day(7)},
                                          3600.0))
    done = subprocess.run([sys.executable, "-m", "flows.status", "--data-dir", str(tmp_path), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["version"] == 2 and doc["data_dir"] == str(tmp_path.resolve())
    [row] = doc["symbols"]
    # The keys of version 1 keep their meaning (`gaps`, a sentence then, is `gaps_summary` now).
    assert {k: row[k] for k in ("market", "symbol", "files", "days", "first_day", "last_day", "rows", "staged")} == {
        "market": "spot", "symbol": "BTCUSDT", "files": 1, "days": 3, "first_day": "2024-01-01",
        "last_day": "2024-01-05", "rows": 3 * ROWS - 10, "staged": 0}
    assert "3 unpublished" in row["gaps_summary"] and "1 refused" in row["gaps_summary"]
    assert row["next_update"].endswith(f"2024-01-06..{date.fromisoformat(doc['as_of']) - timedelta(days=1)}")
    assert row["next_update_days"]["from"] == "2024-01-06" and row["next_update_days"]["days"] > 300
    gaps = row["gaps"]
    assert gaps["report"] == "reports/gaps/market=spot/symbol=BTCUSDT.json"
    assert (gaps["start"], gaps["end"], gaps["days_in_lake"]) == ("2024-01-01", "2024-01-07", 3)
    assert gaps["not_published"] == [{"from": "2024-01-03", "to": "2024-01-03", "days": 1},
                                     {"from": "2024-01-06", "to": "2024-01-07", "days": 2}]
    assert gaps["refused"] == [{"from": "2024-01-04", "to": "2024-01-04", "days": 1, "archive": refused.key,
                                "reason": "checksum mismatch: sha256 differs from the published .CHECKSUM"}]
    assert gaps["id_gaps_inside"] == [{"day": "2024-01-05", "gaps": 1, "missing_ids": 10}]
    assert gaps["id_gaps_between"] == [{"after_day": "2024-01-02", "before_day": "2024-01-05",
                                        "after_id": 2 * ROWS, "before_id": 4 * ROWS + 1, "missing_ids": 2 * ROWS}]
    assert gaps["not_in_lake"] == [] and gaps["no_trades"] == []
    assert row["publication_ended"] is None and doc["universes"] == []
    # A universe table held: its frontier is in the document too.
    from tasks.lake.universe_table import SymbolSpan, write_universe

    write_universe(tmp_path, "um", "trades", {"XUSDT": SymbolSpan("XUSDT", day(1), day(5))}, "http://127.0.0.1/l")
    again = subprocess.run([sys.executable, "-m", "flows.status", "--data-dir", str(tmp_path), "--json"], cwd=REPO,
                           capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    [held] = json.loads(again.stdout)["universes"]
    assert {k: held[k] for k in ("market", "dataset", "symbols", "published_up_to")} == {
        "market": "um", "dataset": "trades", "symbols": 1, "published_up_to": "2024-01-05"}
    assert gaps["totals"] == {"not_published_days": 3, "refused_days": 1, "refused_archives": 1, "not_in_lake_days": 0,
                              "no_trades_days": 0, "days_with_id_gaps": 1, "id_gaps_between": 1,
                              "missing_ids": 2 * ROWS + 10, "truncated_days": len(gaps["truncated"])}


def test_status_json_without_a_gap_report_still_names_refused_archives(tmp_path: Path) -> None:
    stage(tmp_path, ArchiveSpec("um", "BTCUSDT", "daily", day(1)), market_trades("um", 1))
    compact_symbol(tmp_path, "um", "BTCUSDT", 1 << 30, OPTS, False)
    month = ArchiveSpec("um", "BTCUSDT", "monthly", date(2024, 2, 1))
    month.quarantine_note(tmp_path).parent.mkdir(parents=True)
    month.quarantine_note(tmp_path).write_text(json.dumps({"archive": month.key, "reason": "corrupt archive: bad zip"}))
    doc = status_document(tmp_path, lake_status(tmp_path, today=date(2024, 1, 2)), as_of=date(2024, 1, 2))
    [row] = doc["symbols"]
    assert row["next_update"] == "up to date" and row["next_update_days"] is None
    gaps = row["gaps"]
    assert gaps["report"] is None and gaps["start"] is None and gaps["not_published"] == []
    assert gaps["refused"] == [{"from": "2024-02-01", "to": "2024-02-29", "days": 29, "archive": month.key,
                                "reason": "corrupt archive: bad zip"}]
    assert gaps["totals"]["refused_days"] == 29 and gaps["totals"]["refused_archives"] == 1


@pytest.mark.slow
def test_read_trades_on_a_lake_built_by_the_pipeline(
        prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path) -> None:
    """Spot days and a USD-M month (interleaved ids, duplicates) of BTCUSDT, through the real flow."""
    from tests.test_flow_e2e import run

    data = tmp_path / "data"
    spot = [publish_day(fake_archive, "spot", "BTCUSDT", date(2024, 1, n), 2000, 1 + (n - 1) * 2000, n)
            for n in (1, 2, 3)]
    month = publish_month(fake_archive, "um", "BTCUSDT", "2024-01", 6000, 5_000_001, 7, interleave_block=500,
                          duplicates=2)
    steps = ("download", "convert", "merge", "validate")
    for market, granularity, end in (("spot", "daily", date(2024, 1, 3)), ("um", "monthly", date(2024, 1, 31))):
        state, _ = run(fake_archive, data, dask_address, market=market, symbols=("BTCUSDT",),
                       start=date(2024, 1, 1), end=end, granularity=granularity, steps=steps)
        assert state.is_completed(), state.message
    assert [p.name for p in lake_files(data, "um", "BTCUSDT")] == ["2024-01-01_2024-01-31.parquet"]

    def expected(pubs: list[PublishedArchive], first: date, last: date) -> tuple[np.ndarray, np.ndarray]:
        ids, times = [], []
        for pub in pubs:
            exp = pub.expected()
            us = exp.time(pub.time_unit) * (1 if pub.time_unit == "us" else 1000)
            lo, hi = (int(datetime.combine(d, datetime.min.time(), tzinfo=UTC).timestamp()) * 1_000_000
                      for d in (first, last + timedelta(days=1)))
            keep = (us >= lo) & (us < hi)
            ids.append(exp.id[keep])
            times.append(us[keep])
        return np.concatenate(ids), np.concatenate(times)

    for market, pubs, first, last in (("spot", spot, day(2), day(3)), ("um", [month], date(2024, 1, 10),
                                                                       date(2024, 1, 11)),
                                      ("um", [month], date(2024, 1, 1), date(2024, 1, 31))):
        got = read_trades(data, market, "BTCUSDT", first, last, columns=["trade_id", "time"])
        want_ids, want_times = expected(pubs, first, last)
        assert 0 < got.num_rows < 7000
        np.testing.assert_array_equal(got["trade_id"].to_numpy(), want_ids)
        np.testing.assert_array_equal(got["time"].cast(pa.int64()).to_numpy(), want_times)
    assert str(read_trades_pandas(data, "um", "BTCUSDT")["is_best_match"].dtype) == "boolean"
