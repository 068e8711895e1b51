"""Repair of damaged lake files from the kept archives, on real files (real ZIPs, real conversion and merge).

The damage is done to the bytes on disk: a bit flipped inside a column's data page (found
from the footer), or a file cut in half. The repair must rebuild exactly the file that was
there, name what it could not rebuild and what restores it, and keep the features' bars
from being replaced by bars of fewer trades.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from tasks.errors import LakeValidationError
from tasks.features.incremental import compute_feature, parse_feature, read_feature
from tasks.lake.cleanup import cleanup_symbol
from tasks.lake.ingest import validate_symbol
from tasks.lake.inventory import lake_files, lake_sources, staged_inventory
from tasks.lake.repair import (
    damage_on_record,
    intact_sources,
    repair_count,
    repair_symbol,
    restore_specs,
)
from tasks.source.archive_spec import ArchiveSpec
from tests.fake_archive import FakeArchive, publish_day
from tests.test_validate import REAL_OPTS, digests, flip_byte_in_column, keep_archive, real_lake

START, END = date(2024, 1, 1), date(2024, 1, 31)
BIG = 1 << 30


def validate(data_dir: Path):  # type: ignore[no-untyped-def]
    return validate_symbol(data_dir, "spot", "BTCUSDT", START, END)


def repair(data_dir: Path, target: int = 1):  # type: ignore[no-untyped-def]
    return repair_symbol(data_dir, "spot", "BTCUSDT", validate(data_dir), target, REAL_OPTS, START, END)


def test_flipped_byte_is_repaired_byte_identical_from_its_kept_archive(tmp_path: Path) -> None:
    specs = real_lake(tmp_path, 3)
    files = lake_files(tmp_path, "spot", "BTCUSDT")
    good = digests(tmp_path)
    flip_byte_in_column(files[1], "price", row_group=2)
    assert validate(tmp_path).failed_files == (files[1],)

    result, after = repair(tmp_path)
    [done] = result.repaired
    assert (done.file, done.archives, done.sources_from) == (files[1].name, (specs[1].key,), "footer")
    assert "row group 2 column price unreadable" in done.reason
    assert result.unrepaired == ()
    assert result.lines()[0].startswith("repaired spot/BTCUSDT 2024-01-02_2024-01-02.parquet from 1 kept archive;")
    # The same archive, the same conversion and merge: the very file that was there, the others untouched.
    assert digests(tmp_path) == good
    assert (after.errors, after.failed_files, after.files) == ((), (), 3)
    assert staged_inventory(tmp_path, "spot", "BTCUSDT") == []
    assert repair_count(tmp_path, "spot", "BTCUSDT") == 1 and damage_on_record(tmp_path, "spot", "BTCUSDT") == []


def test_truncated_file_is_rebuilt_from_the_kept_archives_of_the_days_in_its_name(tmp_path: Path) -> None:
    specs = real_lake(tmp_path, 3, target_bytes=BIG)  # one file holding three daily archives
    [path] = lake_files(tmp_path, "spot", "BTCUSDT")
    assert path.name == "2024-01-01_2024-01-03.parquet"
    good = digests(tmp_path)
    # A kept archive of another day is not one of its sources.
    keep_archive(tmp_path, ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, 5)), 100_000)
    os.truncate(path, path.stat().st_size // 2)

    result, after = repair(tmp_path, target=BIG)
    [done] = result.repaired
    assert done.archives == tuple(s.key for s in specs) and done.sources_from == "file name"
    assert done.uncovered == ""
    assert result.lines()[0].startswith(
        "repaired spot/BTCUSDT 2024-01-01_2024-01-03.parquet from 3 kept archives (footer unreadable")
    assert digests(tmp_path) == good
    assert after.errors == ()


def test_archives_deleted_by_cleanup_are_named_with_their_re_download(tmp_path: Path) -> None:
    specs = real_lake(tmp_path, 2, target_bytes=BIG)
    [path] = lake_files(tmp_path, "spot", "BTCUSDT")
    assert len(cleanup_symbol(tmp_path, "spot", "BTCUSDT", START, END).removed) == 2  # the real cleanup step
    flip_byte_in_column(path, "qty", row_group=0)
    damaged = path.read_bytes()

    result, after = repair(tmp_path, target=BIG)
    assert result.repaired == ()
    [left] = result.unrepaired
    assert left.missing == tuple(s.key for s in specs)
    line = result.lines()[0]
    assert line.startswith(f"NOT REPAIRED spot/BTCUSDT {path.name}: 2 of its 2 archives are no longer kept")
    assert "re-download of these archives: " + ", ".join(s.key for s in specs) in line
    assert after.failed_files == (path,) and path.read_bytes() == damaged  # left as it was
    # On record for the next runs: the download step fetches those archives again, the lake
    # does not count as holding them, and the features refuse the symbol.
    assert [p for p, _ in damage_on_record(tmp_path, "spot", "BTCUSDT")] == [path]
    assert restore_specs(tmp_path, "spot", "BTCUSDT") == specs
    assert [k for k, _ in lake_sources(tmp_path, "spot", "BTCUSDT")] == [s.key for s in specs]
    assert intact_sources(tmp_path, "spot", "BTCUSDT") == {}
    with pytest.raises(LakeValidationError) as info:
        compute_feature(tmp_path, "spot", "BTCUSDT", parse_feature("tick:threshold=500"))
    assert info.value.source == str(path) and "features not computed" in info.value.reason

    # Re-downloaded (the same published bytes): the next repair rebuilds it, and the record clears.
    for i, spec in enumerate(specs):
        keep_archive(tmp_path, spec, 1 + i * 2500, seed=i)
    result, after = repair(tmp_path, target=BIG)
    assert [r.file for r in result.repaired] == [path.name] and after.errors == ()
    assert damage_on_record(tmp_path, "spot", "BTCUSDT") == [] and restore_specs(tmp_path, "spot", "BTCUSDT") == []


def test_a_damaged_kept_archive_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    specs = real_lake(tmp_path, 2)
    files = lake_files(tmp_path, "spot", "BTCUSDT")
    os.truncate(files[0], 100)
    zip_path = specs[0].local_zip(tmp_path)
    zip_path.write_bytes(zip_path.read_bytes()[:-10])  # the backup rotted too
    before = digests(tmp_path)

    result, after = repair(tmp_path)
    [left] = result.unrepaired
    assert left.why.startswith("rebuild refused: checksum mismatch: ") and str(zip_path) in left.why
    assert "re-download" in left.why
    assert digests(tmp_path) == before and after.failed_files == (files[0],)
    assert staged_inventory(tmp_path, "spot", "BTCUSDT") == []


def test_features_keep_their_bars_on_a_damaged_lake_and_recompute_after_the_repair(tmp_path: Path) -> None:
    real_lake(tmp_path, 3)
    feature = parse_feature("tick:threshold=500")
    first = compute_feature(tmp_path, "spot", "BTCUSDT", feature)
    assert first.trades == 7500
    bars = read_feature(tmp_path, "spot", "BTCUSDT", feature)
    files = lake_files(tmp_path, "spot", "BTCUSDT")
    os.truncate(files[1], files[1].stat().st_size // 3)

    # Before: the truncated file was skipped and the bars recomputed from the 5,000 trades left.
    with pytest.raises(LakeValidationError) as info:
        compute_feature(tmp_path, "spot", "BTCUSDT", feature)
    assert info.value.source == str(files[1]) and "unreadable footer" in info.value.reason
    assert read_feature(tmp_path, "spot", "BTCUSDT", feature).equals(bars)

    repair(tmp_path)
    again = compute_feature(tmp_path, "spot", "BTCUSDT", feature)
    assert (again.mode, again.trades) == ("recomputed", 7500)
    assert again.reason == "a lake file was repaired (rebuilt from its archives)"
    assert read_feature(tmp_path, "spot", "BTCUSDT", feature).equals(bars)
    assert compute_feature(tmp_path, "spot", "BTCUSDT", feature).mode == "up to date"


@pytest.mark.slow
def test_pipeline_names_the_loss_then_re_downloads_repairs_and_recomputes_features(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    """Through the flow: archives gone, a damaged file is named with its restore; the next normal run
    fetches the archives again, its validate step rebuilds the file, and the features recompute."""
    from tests.test_flow_e2e import run

    fa = fake_archive
    pubs = [publish_day(fa, "spot", "BTCUSDT", date(2024, 1, d), 3000, 1 + 3000 * (d - 1), d) for d in (1, 2)]
    data = tmp_path / "data"
    feature = parse_feature("tick:threshold=500")
    common: dict[str, Any] = {"market": "spot", "symbols": ("BTCUSDT",), "start": date(2024, 1, 1),
                              "end": date(2024, 1, 2), "granularity": "daily", "row_group_rows": 1000,
                              "features": ("tick:threshold=500",)}
    state, report = run(fa, data, dask_address, **common)
    assert state.is_completed(), state.message
    [path] = lake_files(data, "spot", "BTCUSDT")
    good = path.read_bytes()
    bars = read_feature(data, "spot", "BTCUSDT", feature)
    assert bars.num_rows == 12

    # The downloads are gone (as the cleanup step leaves them), then a bit flips in the file.
    for pub in pubs:
        zip_path = pub.spec.local_zip(data)
        zip_path.with_name(zip_path.name + ".CHECKSUM").unlink()
        zip_path.unlink()
    flip_byte_in_column(path, "price", row_group=4)
    state, report = run(fa, data, dask_address, steps=("validate",), **common)
    assert state.is_failed()
    assert f"NOT REPAIRED spot/BTCUSDT {path.name}: 2 of its 2 archives are no longer kept" in report.summary()
    assert "re-download of these archives: " + ", ".join(p.key for p in pubs) in report.summary()
    assert "row group 4 column price unreadable" in report.summary()

    # A normal run fetches them again (the damaged copy does not count as holding them), its
    # validate step rebuilds the file, and the features, which ran beside the repair, are
    # computed again from the rebuilt file.
    fa.clear_requests()
    state, report = run(fa, data, dask_address, **common)
    assert state.is_completed(), state.message
    assert all(fa.count(p.key) == 1 for p in pubs)
    assert {o.archive: o.status for o in report.outcomes} == {p.key: "downloaded" for p in pubs}
    assert f"repaired spot/BTCUSDT {path.name} from 2 kept archives;" in report.summary()
    assert path.read_bytes() == good and report.validation_errors == []
    [feat] = report.features
    assert (feat.mode, feat.trades) == ("recomputed", 6000)
    assert feat.reason == "a lake file was repaired (rebuilt from its archives)"
    assert read_feature(data, "spot", "BTCUSDT", feature).equals(bars)
    assert [g.days_in_lake for g in report.gap_reports] == [2]


@pytest.mark.slow
def test_a_new_day_waits_for_the_repair_of_a_truncated_file_and_the_run_succeeds(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    """The merge meets an unreadable lake file: it leaves the symbol to the validate step, whose
    repair rebuilds the file and merges the new day with it; the run ends Completed."""
    from tests.test_flow_e2e import run

    fa = fake_archive
    for d in (1, 2):
        publish_day(fa, "spot", "BTCUSDT", date(2024, 1, d), 3000, 1 + 3000 * (d - 1), d)
    data = tmp_path / "data"
    common: dict[str, Any] = {"market": "spot", "symbols": ("BTCUSDT",), "granularity": "daily",
                              "start": date(2024, 1, 1), "row_group_rows": 1000, "features": ()}
    state, _ = run(fa, data, dask_address, end=date(2024, 1, 2), **common)
    assert state.is_completed(), state.message
    [path] = lake_files(data, "spot", "BTCUSDT")
    os.truncate(path, path.stat().st_size // 2)
    publish_day(fa, "spot", "BTCUSDT", date(2024, 1, 3), 3000, 6001, 3)
    state, report = run(fa, data, dask_address, end=date(2024, 1, 3), **common)
    assert state.is_completed(), state.message
    assert report.upkeep_errors == [] and report.deferred_merges == {}
    assert "waited for the repair of a damaged file" in report.summary()
    assert [p.name for p in lake_files(data, "spot", "BTCUSDT")] == ["2024-01-01_2024-01-03.parquet"]
    ids = ds.dataset(data / "lake" / "trades", partitioning="hive").to_table(columns=["trade_id"])["trade_id"]
    assert ids.to_pylist() == list(range(1, 9001))


def test_a_recompute_of_the_first_pass_is_what_the_report_keeps() -> None:
    """The features' first pass may run after the repair rebuilt the file: it recomputed, and the
    second pass finds nothing to do. The report then says what the run did: recomputed."""
    from flows.full_pipeline import kept_recomputes
    from tasks.features.incremental import FeatureResult

    recomputed = FeatureResult("tick", "spot", "BTCUSDT", "recomputed", 6000, 12, 1, 0.1,
                               "a lake file was repaired (rebuilt from its archives)")
    up_to_date = FeatureResult("tick", "spot", "BTCUSDT", "up to date", 0, 0, 1, 0.0)
    assert kept_recomputes([recomputed], [up_to_date]) == [recomputed]
    # The usual order: the first pass was refused or up to date, the second recomputes.
    assert kept_recomputes([up_to_date], [recomputed]) == [recomputed]
    other = FeatureResult("tick", "spot", "ETHUSDT", "up to date", 0, 0, 1, 0.0)
    assert kept_recomputes([recomputed], [other]) == [other]
