"""Merge and optimize on tiny lake files: placement rules, verification, idempotence, crash safety."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.atomic import remove_stale_temporaries
from tasks.errors import LakeConflict
from tasks.lake.compact import DayDigest, compact_symbol
from tasks.lake.inventory import lake_files, lake_inventory, staged_inventory
from tasks.lake.validate import validate_parquet_file
from tasks.lake.writer import lake_writer, source_metadata_doc
from tasks.schema import TRADES_SCHEMA
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import ArchiveSpec

OPTS = ConvertOptions(row_group_rows=1000)
ROWS = 3000  # per day


def day(n: int) -> date:
    return date(2024, 1, 1) + timedelta(days=n - 1)


def trades(first_id: int, n: int, on: date, seed: int) -> pa.Table:
    """`n` spot trades with ids from `first_id`, spread over the day `on`."""
    rng = np.random.default_rng(seed)
    start = int(datetime.combine(on, datetime.min.time(), tzinfo=UTC).timestamp()) * 1_000_000
    times = np.sort(rng.integers(start, start + 86_400_000_000, n))
    price = np.round(40_000 + rng.normal(0, 10, n).cumsum(), 2)
    qty = np.round(rng.uniform(0.001, 2, n), 5)
    return pa.table(
        {
            "trade_id": pa.array(np.arange(first_id, first_id + n), pa.int64()),
            "price": price, "qty": qty, "quote_qty": price * qty, "base_qty": pa.nulls(n, pa.float64()),
            "time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "is_buyer_maker": rng.random(n) < 0.5, "is_best_match": pa.array(np.ones(n, bool)),
        },
        schema=TRADES_SCHEMA,
    )


def stage(data_dir: Path, spec: ArchiveSpec, table: pa.Table, sha: str = "a" * 64) -> Path:
    """Write `table` as the archive's staged file, as the converter would."""
    path = spec.staging_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = lake_writer(path, OPTS)
    writer.write(table)
    doc = {"archive": spec.key, "sha256": sha, "rows": table.num_rows, "first_day": spec.first_day.isoformat(),
           "last_day": spec.last_day.isoformat(), "granularity": spec.granularity, "duplicates_dropped": 0}
    writer.close(source_metadata_doc(spec.market, spec.symbol, [doc]))
    return path


def daily(n: int) -> ArchiveSpec:
    return ArchiveSpec("spot", "BTCUSDT", "daily", day(n))


def stage_day(data_dir: Path, n: int, sha: str = "a" * 64, seed: int | None = None) -> pa.Table:
    t = trades(1 + (n - 1) * ROWS, ROWS, day(n), seed if seed is not None else n)
    stage(data_dir, daily(n), t, sha)
    return t


def compact(data_dir: Path, target: int = 1 << 30, consolidate: bool = False):  # type: ignore[no-untyped-def]
    return compact_symbol(data_dir, "spot", "BTCUSDT", target, OPTS, consolidate)


def names(data_dir: Path) -> list[str]:
    return [p.name for p in lake_files(data_dir, "spot", "BTCUSDT")]


def lake_table(data_dir: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in lake_files(data_dir, "spot", "BTCUSDT"))


def digest(data_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data_dir.rglob("*")) if p.is_file()}


def staged_size(data_dir: Path) -> int:
    return sum(e.path.stat().st_size for e in staged_inventory(data_dir, "spot", "BTCUSDT"))


def assert_exact(data_dir: Path, *tables: pa.Table) -> None:
    """The lake holds exactly these rows, sorted by id, each file valid and disjoint."""
    got = lake_table(data_dir)
    want = pa.concat_tables(tables)
    want = want.take(pa.compute.sort_indices(want, [("trade_id", "ascending")]))
    assert got.equals(want)
    previous_last = None
    for entry in lake_inventory(data_dir, "spot", "BTCUSDT"):
        rows = sum(s.rows for s in entry.sources)
        rep = validate_parquet_file(entry.path)
        assert rep.rows == rows
        if previous_last is not None:
            assert entry.first_day > previous_last
        previous_last = entry.last_day


def test_staged_days_pack_into_one_file_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    tables = [stage_day(tmp_path, n) for n in (1, 2, 3)]
    res = compact(tmp_path)
    assert names(tmp_path) == ["2024-01-01_2024-01-03.parquet"]
    assert res.rows_written == 3 * ROWS and len(res.staged_merged) == 3
    assert staged_inventory(tmp_path, "spot", "BTCUSDT") == []
    assert_exact(tmp_path, *tables)
    meta = json.loads(pq.read_schema(lake_files(tmp_path, "spot", "BTCUSDT")[0]).metadata[b"binance_lake.sources"])
    assert [s["archive"] for s in meta["sources"]] == [daily(n).key for n in (1, 2, 3)]
    before = digest(tmp_path)
    for consolidate in (False, True):
        again = compact(tmp_path, consolidate=consolidate)
        assert again.files_written == () and again.files_removed == ()
    assert digest(tmp_path) == before


def test_target_size_splits_at_archive_borders_and_daily_update_appends_while_under_target(tmp_path: Path) -> None:
    tables = [stage_day(tmp_path, n) for n in (1, 2, 3, 4)]
    one = staged_size(tmp_path) // 4
    # Room for two days per file.
    target = 2 * one + one // 2
    compact(tmp_path, target=target)
    assert names(tmp_path) == ["2024-01-01_2024-01-02.parquet", "2024-01-03_2024-01-04.parquet"]
    assert_exact(tmp_path, *tables)
    # The last file is at two days (under target only with a bigger target): the next day starts a new file.
    tables.append(stage_day(tmp_path, 5))
    res = compact(tmp_path, target=target)
    assert names(tmp_path)[-1] == "2024-01-05_2024-01-05.parquet" and res.files_removed == ()
    # The new last file is under target: day 6 is appended to it (rewritten under its new name).
    tables.append(stage_day(tmp_path, 6))
    res = compact(tmp_path, target=target)
    assert names(tmp_path) == ["2024-01-01_2024-01-02.parquet", "2024-01-03_2024-01-04.parquet",
                               "2024-01-05_2024-01-06.parquet"]
    assert res.files_written == ("2024-01-05_2024-01-06.parquet",)
    assert res.files_removed == ("2024-01-05_2024-01-05.parquet",)
    assert_exact(tmp_path, *tables)


def test_file_exactly_at_target_is_left_alone(tmp_path: Path) -> None:
    stage_day(tmp_path, 1)
    target = staged_size(tmp_path)
    compact(tmp_path, target=target)
    before = digest(tmp_path)
    t2 = stage_day(tmp_path, 2)
    res = compact(tmp_path, target=target)
    assert res.files_written == ("2024-01-02_2024-01-02.parquet",)
    first = "lake/trades/market=spot/symbol=BTCUSDT/2024-01-01_2024-01-01.parquet"
    assert digest(tmp_path)[first] == before[first]
    assert len(t2) == ROWS


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_back_filled_day_goes_into_the_right_place(tmp_path: Path, where: str) -> None:
    missing = {"start": 1, "middle": 3, "end": 5}[where]
    tables = [stage_day(tmp_path, n) for n in range(1, 6) if n != missing]
    compact(tmp_path)
    before = names(tmp_path)
    tables.append(stage_day(tmp_path, missing))
    res = compact(tmp_path)
    assert names(tmp_path) == ["2024-01-01_2024-01-05.parquet"]
    assert res.changed_days == (day(missing),)
    assert_exact(tmp_path, *tables)
    if where == "middle":
        assert before == ["2024-01-01_2024-01-05.parquet"]  # the day fell inside the file: it was rewritten


def test_republished_archive_replaces_its_rows_in_a_merged_file(tmp_path: Path) -> None:
    tables = [stage_day(tmp_path, n) for n in (1, 2, 3)]
    compact(tmp_path)
    # Day 2 is re-published with another checksum and different content (same ids, new prices).
    fixed = stage_day(tmp_path, 2, sha="b" * 64, seed=99)
    assert not fixed.equals(tables[1])
    res = compact(tmp_path)
    assert res.replaced_archives == (daily(2).key,) and res.changed_days == (day(2),)
    assert_exact(tmp_path, tables[0], fixed, tables[2])
    sources = lake_inventory(tmp_path, "spot", "BTCUSDT")[0].sources
    assert [(s.archive, s.sha256) for s in sources] == [
        (daily(1).key, "a" * 64), (daily(2).key, "b" * 64), (daily(3).key, "a" * 64)]


def test_daily_archive_inside_a_monthly_one_is_refused_and_the_lake_unchanged(tmp_path: Path) -> None:
    month = ArchiveSpec("spot", "BTCUSDT", "monthly", date(2024, 1, 1))
    stage(tmp_path, month, pa.concat_tables([trades(1 + i * ROWS, ROWS, day(i + 1), i) for i in range(3)]))
    compact(tmp_path)
    before = digest(tmp_path)
    stage_day(tmp_path, 2)
    with pytest.raises(LakeConflict, match="covers only part of"):
        compact(tmp_path)
    after = digest(tmp_path)
    assert {k: v for k, v in after.items() if k.startswith("lake")} == {
        k: v for k, v in before.items() if k.startswith("lake")}


def test_a_poison_pill_archive_is_quarantined_and_later_days_still_merge(tmp_path: Path) -> None:
    from tasks.lake.gaps import gap_report
    from tasks.lake.ingest import merge_refusal

    good = [stage_day(tmp_path, 1), stage_day(tmp_path, 2)]
    compact(tmp_path)
    before = digest(tmp_path)
    stage(tmp_path, daily(3), trades(ROWS - 5, ROWS, day(3), 7), sha="b" * 64)  # ids of days 1 and 2
    good.append(stage_day(tmp_path, 4))
    res = compact(tmp_path)
    ((archive, reason),) = res.quarantined
    assert archive == daily(3).key and "3,000 of its trade ids (first 2995)" in reason
    assert "2024-01-01_2024-01-02.parquet" in reason
    assert names(tmp_path) == ["2024-01-01_2024-01-04.parquet"] and res.staged_merged == (daily(4).key,)
    assert_exact(tmp_path, *good)  # days 1, 2 and 4; day 3 refused
    assert staged_inventory(tmp_path, "spot", "BTCUSDT") == []
    record = json.loads(daily(3).quarantine_zip(tmp_path).with_name(
        daily(3).file_name + ".reason.json").read_text())
    assert record["kind"] == "lake conflict" and record["sha256"] == "b" * 64
    # Not converted again while Binance publishes the same bytes; a re-publication is tried.
    refusal = merge_refusal(daily(3), "b" * 64, tmp_path)
    assert refusal is not None and "re-publishes" in str(refusal)
    assert merge_refusal(daily(3), "c" * 64, tmp_path) is None
    gaps = gap_report(tmp_path, "spot", "BTCUSDT", day(1), day(4), set(), 3600.0)
    assert [r["day"] for r in gaps.refused] == [str(day(3))] and "trade ids" in gaps.refused[0]["reason"]
    from flows.status import symbol_status

    status = symbol_status(tmp_path, "spot", "BTCUSDT", day(5))
    assert "1 archive refused" in status.gaps and status.problems >= 1
    assert before != digest(tmp_path)


def test_two_staged_archives_sharing_ids_are_both_refused_and_the_lake_unchanged(tmp_path: Path) -> None:
    stage_day(tmp_path, 1)
    compact(tmp_path)
    before = {k: v for k, v in digest(tmp_path).items() if k.startswith("lake")}
    stage(tmp_path, daily(2), trades(ROWS + 1, ROWS, day(2), 7))
    stage(tmp_path, daily(3), trades(ROWS + 1, ROWS, day(3), 8))  # the same ids as day 2
    res = compact(tmp_path)
    assert sorted(a for a, _ in res.quarantined) == [daily(2).key, daily(3).key]
    assert {k: v for k, v in digest(tmp_path).items() if k.startswith("lake")} == before
    assert not [p for p in (tmp_path / "lake").rglob(".*")]


def test_optimize_combines_files_left_under_target_and_merge_does_not(tmp_path: Path) -> None:
    tables = []
    for n in (1, 2, 3):
        tables.append(stage_day(tmp_path, n))
        compact(tmp_path, target=1)  # tiny target: each day gets a file of its own
    assert len(names(tmp_path)) == 3
    assert compact(tmp_path, consolidate=False).files_written == ()
    res = compact(tmp_path, consolidate=True)
    assert names(tmp_path) == ["2024-01-01_2024-01-03.parquet"] and len(res.files_removed) == 3
    assert_exact(tmp_path, *tables)


def test_a_temporary_that_never_committed_is_swept_and_the_lake_untouched(tmp_path: Path) -> None:
    stage_day(tmp_path, 1)
    compact(tmp_path)
    folder = lake_files(tmp_path, "spot", "BTCUSDT")[0].parent
    orphan = folder / f".x.parquet.tmp-{2**22 + 12345}-deadbeef"
    orphan.write_bytes(b"partial")
    before = names(tmp_path)
    assert remove_stale_temporaries(tmp_path) == 1 and names(tmp_path) == before and not orphan.exists()
    assert os.listdir(folder) == before


def test_staged_archive_the_lake_already_holds_is_dropped_not_merged_again(tmp_path: Path) -> None:
    # A run killed between its swap and the deletion of the staged files leaves them behind.
    t = stage_day(tmp_path, 1)
    kept = tmp_path / "copy.parquet"
    kept.write_bytes(daily(1).staging_file(tmp_path).read_bytes())
    compact(tmp_path)
    before = digest(tmp_path)
    daily(1).staging_file(tmp_path).write_bytes(kept.read_bytes())
    res = compact(tmp_path)
    assert res.files_written == () and res.staged_dropped == (daily(1).key,)
    assert staged_inventory(tmp_path, "spot", "BTCUSDT") == [] and digest(tmp_path) == before
    assert_exact(tmp_path, t)


def test_day_digest_ignores_chunking_and_sees_any_changed_field() -> None:
    t = pa.concat_tables([trades(1, 5000, day(1), 1), trades(5001, 3000, day(2), 2)])
    whole, parts = DayDigest(), DayDigest()
    whole.add(t)
    for b in t.to_batches(max_chunksize=777):  # batches straddle the day border
        parts.add(b)
    assert whole.days == parts.days and whole.differences(parts) == []
    assert sorted(v[0] for v in whole.days.values()) == [3000, 5000]
    assert whole.rows_between(day(1), day(1)) == 5000 and whole.rows_between(day(1), day(2)) == 8000

    def with_last(col: int, value: object) -> DayDigest:
        values = t.column(col).to_pylist()
        values[-1] = value  # the last row: a day-2 trade
        digest = DayDigest()
        digest.add(t.set_column(col, t.schema.field(col), pa.array(values, t.schema.field(col).type)))
        return digest

    last = t.slice(t.num_rows - 1).to_pylist()[0]
    edits = {0: last["trade_id"] + 10**9, 1: last["price"] + 0.01, 2: last["qty"] * 2, 3: None, 4: 1.5,
             6: not last["is_buyer_maker"], 7: None}
    for col, value in edits.items():
        notes = whole.differences(with_last(col, value))
        assert len(notes) == 1 and str(day(2)) in notes[0] and "content differs" in notes[0], (col, notes)
    # A null and a NaN are different contents, as are false and null.
    assert with_last(3, float("nan")).differences(with_last(3, None))
    assert with_last(7, False).differences(with_last(7, None))
    # A row moved to another day shows on both days.
    moved = t.column(5).to_pylist()
    moved[0] = moved[-1]
    other = DayDigest()
    other.add(t.set_column(5, t.schema.field(5), pa.array(moved, t.schema.field(5).type)))
    assert len(whole.differences(other)) == 2


def test_files_the_merge_verified_are_not_read_again_by_validation_unless_changed(tmp_path: Path) -> None:
    from dataclasses import replace

    from tasks.lake.ingest import validate_symbol

    tables = [stage_day(tmp_path, n) for n in (1, 2)]
    result = compact(tmp_path)
    (verified,) = result.verified
    path = lake_files(tmp_path, "spot", "BTCUSDT")[0]
    assert verified.path == path and verified.report.path == path and verified.report.rows == 2 * ROWS
    assert verified.report.first_trade_id == 1 and verified.report.last_trade_id == 2 * ROWS
    plain = validate_symbol(tmp_path, "spot", "BTCUSDT", day(1), day(2))
    reused = validate_symbol(tmp_path, "spot", "BTCUSDT", day(1), day(2), result.verified)
    assert (plain.files, plain.rows, plain.verified_at_write) == (1, 2 * ROWS, 0)
    assert (reused.files, reused.rows, reused.verified_at_write) == (1, 2 * ROWS, 1)
    assert reused.gaps == plain.gaps and reused.errors == plain.errors == ()
    # The record is what is used, not a re-read: a doctored one shows through...
    doctored = replace(verified, report=replace(verified.report, rows=7))
    assert validate_symbol(tmp_path, "spot", "BTCUSDT", day(1), day(2), (doctored,)).rows == 7
    # ...until the file changes (another mtime): then it is read again.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = validate_symbol(tmp_path, "spot", "BTCUSDT", day(1), day(2), (doctored,))
    assert (again.rows, again.verified_at_write) == (2 * ROWS, 0)
    assert_exact(tmp_path, *tables)
