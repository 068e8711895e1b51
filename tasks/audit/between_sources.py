"""Monthly against daily: the same days from both sources of the archive must hold the same rows.

Binance publishes each dataset twice, as daily and as monthly archives, and they disagree at
times (binance-public-data#475). The lake takes every day from one source only
(`tasks/source/plan.py`); with `audit_sources` a run also downloads the other source of the same
days, verified by its checksum and never landed. This check converts both (into temporary
files under `staging/`, removed afterwards, swept after a kill) and compares them day by day,
by the dataset's key: rows only in the monthly archive, rows only in the daily one, and rows
of the same key whose values differ.

Memory is bounded by one day: the monthly file is read a day at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import temp_path_for
from tasks.audit.between_datasets import MAX_SAMPLES, AuditReport, Findings, Mismatch, column_values, day_tables
from tasks.convert.archive import convert_archive
from tasks.datasets import Dataset, dataset
from tasks.errors import PipelineError
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import ArchiveSpec, Market, month_end
from tasks.source.download import verified_download
from tasks.source.plan import days_between, months_touching
from tasks.utc import EPOCH_DAY

#: Where the conversions of the compared archives are written while the check runs.
SCRATCH = ("staging", "audit")


def check_name(dataset_id: str) -> str:
    """The check's name in reports: `aggTrades monthly vs daily`."""
    return f"{dataset_id} monthly vs daily"


def held_source_pairs(
    data_dir: Path, market: Market, symbol: str, dataset_id: str, start: date, end: date
) -> Iterator[tuple[ArchiveSpec, list[ArchiveSpec]]]:
    """Each month touching [start, end] whose monthly archive and some daily ones of its days are downloaded.

    Only verified downloads count (a `.CHECKSUM` beside the zip, written once the hash matched).
    Yields (the monthly archive, the daily archives of requested days), months in order.
    """
    for month in months_touching(start, end):
        monthly = ArchiveSpec(market, symbol, "monthly", month, dataset_id)
        if verified_download(monthly, data_dir) is None:
            continue
        dailies = [ArchiveSpec(market, symbol, "daily", d, dataset_id)
                   for d in days_between(max(start, month), min(end, month_end(month)))]
        held = [s for s in dailies if verified_download(s, data_dir) is not None]
        if held:
            yield monthly, held


def audit_sources(
    data_dir: Path, market: Market, symbol: str, dataset_id: str, start: date, end: date,
    options: ConvertOptions, report: AuditReport,
) -> None:
    """Compare the downloaded monthly and daily archives of the same days; mismatches go into `report`.

    An archive that cannot be converted (the converter's refusal) is reported as the month
    `not compared`, with the reason; the other months go on.
    """
    data = dataset(dataset_id)
    check = check_name(dataset_id)
    scratch = data_dir.joinpath(*SCRATCH)
    for monthly, dailies in held_source_pairs(data_dir, market, symbol, dataset_id, start, end):
        made: list[Path] = []
        try:
            try:
                monthly_path = _convert(monthly, data_dir, options, scratch, made)
                daily_paths = [_convert(s, data_dir, options, scratch, made) for s in dailies]
            except PipelineError as exc:
                report.mismatches.append(Mismatch(f"{monthly.period:%Y-%m}", f"{check}: not compared", 1,
                                                  (str(exc)[:400],)))
                continue
            months = day_tables([monthly_path], data.time, dailies[0].period, dailies[-1].period)
            head = next(months, None)
            for spec, path in zip(dailies, daily_paths, strict=True):
                day = spec.period.toordinal() - EPOCH_DAY.toordinal()
                while head is not None and head[0] < day:
                    head = next(months, None)
                from_month = head[1] if head is not None and head[0] == day else None
                from_day = pq.read_table(path)  # one day
                report.rows[f"{dataset_id} (monthly archives)"] = (
                    report.rows.get(f"{dataset_id} (monthly archives)", 0)
                    + (from_month.num_rows if from_month is not None else 0))
                report.rows[f"{dataset_id} (daily archives)"] = (
                    report.rows.get(f"{dataset_id} (daily archives)", 0) + from_day.num_rows)
                compare_day(from_month, from_day, data, check, Findings(report, day))
                report.checked[check] = report.checked.get(check, 0) + 1
        finally:
            for p in made:
                p.unlink(missing_ok=True)


def _convert(spec: ArchiveSpec, data_dir: Path, options: ConvertOptions, scratch: Path, made: list[Path]) -> Path:
    sha = verified_download(spec, data_dir)
    assert sha is not None  # held_source_pairs checked it
    out = temp_path_for(scratch / f"{spec.file_name}.parquet")  # a temporary name: swept if the run is killed
    made.append(out)
    convert_archive(spec.local_zip(data_dir), spec, sha, out, options)
    return out


def _keys(table: pa.Table | None, key: str) -> np.ndarray[Any, Any]:
    return column_values(table, key).astype(np.int64) if table is not None else np.zeros(0, np.int64)


def _same(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    same = np.asarray(a == b)
    if a.dtype.kind == "f":
        same |= np.isnan(a) & np.isnan(b)
    return same


def compare_day(from_month: pa.Table | None, from_day: pa.Table, data: Dataset, check: str, found: Findings) -> None:
    """One day's rows from the monthly archive against the daily archive's (both sorted by `data.key`)."""
    key = data.key
    km, kd = _keys(from_month, key), _keys(from_day, key)
    only_month = np.setdiff1d(km, kd, assume_unique=True)
    only_day = np.setdiff1d(kd, km, assume_unique=True)
    found.add(f"{check}: rows only in the monthly archive", len(only_month),
              [f"{key} {int(k)}" for k in only_month[:MAX_SAMPLES]])
    found.add(f"{check}: rows only in the daily archive", len(only_day),
              [f"{key} {int(k)}" for k in only_day[:MAX_SAMPLES]])
    if from_month is None or not len(km) or not len(kd):
        return
    common, im, id_ = np.intersect1d(km, kd, assume_unique=True, return_indices=True)
    differs = np.zeros(len(common), dtype=bool)
    samples: list[str] = []
    for name in data.schema.names:
        if name == key:
            continue
        a, b = column_values(from_month, name)[im], column_values(from_day, name)[id_]
        bad = ~_same(a, b)
        differs |= bad
        for i in np.flatnonzero(bad)[:MAX_SAMPLES]:
            samples.append(f"{key} {int(common[i])}: {name} {a[i]!r} monthly, {b[i]!r} daily")
    found.add(f"{check}: rows that differ", differs, samples)
