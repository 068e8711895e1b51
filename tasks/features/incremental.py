"""Bars from the lake, incrementally: `features/<name>/market=<m>/symbol=<S>/`.

A feature is a named `BarSpec` (`tasks.features.bars`). Its output for a symbol is a sequence of
part files, one per run that found new trades (beyond `MAX_PARTS` they are consolidated
into one), each named by the days of the trades it consumed (`<first>_<last>.parquet`)
and carrying in its footer everything the next run
needs: the spec, the last trade id consumed, the kernel state after it (the open bar,
the EWMA histories and the trailing rate; `BarState.to_bytes`), and a fingerprint of the lake archives
that fed it. A run resumes from the last part's state and reads only trades after its
last id, so the daily update costs one day of trades; the kernels are chunk-invariant,
so the parts equal one pass over the whole history (tested).

The result is recomputed from the first trade when it cannot be extended: the spec
changed, or an archive already consumed was re-published or a day back-filled before
the last consumed trade (the fingerprint differs). A part is committed together with its
state; every change of a symbol's parts (a new part, recomputation, consolidation) is one
folder swap (`tasks.atomic.swap_folder`), so readers never see old and new bars together,
and what a killed run left is finished or undone by the next one.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import swap_folder, temp_path_for
from tasks.errors import LakeValidationError
from tasks.features.bars import BARS_SCHEMA, BarSpec, BarState, Kind, Metric, process_chunk
from tasks.lake.inventory import LakeEntry, lake_inventory, range_files, range_of
from tasks.lake.repair import refuse_damaged_lake, repair_count
from tasks.read_ahead import read_ahead
from tasks.source.archive_spec import check_symbol, range_file_name
from tasks.utc import day_of_us

FEATURE_METADATA_KEY = b"binance_lake.features"
# Whole-name patterns (`\Z`, not `$`, which matches before a trailing newline; `[0-9]`, not
# `\d`, which matches any Unicode digit): see tasks/source/archive_spec.py.
_NAME_RE = re.compile(r"\A[a-z0-9_]{1,64}\Z")
#: A `--features` spec longer than this is refused (the longest useful one is about 300).
MAX_SPEC_CHARS = 1000
_READ_COLUMNS = ["trade_id", "price", "qty", "time", "is_buyer_maker"]
#: Daily runs add a part each; beyond this many they are rewritten as one (bars are small).
MAX_PARTS = 32

def _preset(kind: Kind, metric: Metric) -> BarSpec:
    """A production preset: target rate 50 bars a day (tasks.features.bars_nb)."""
    if kind == "standard":
        return BarSpec(kind, metric, bars_per_day=50.0, exp_num_ticks_init=1_000.0)
    return BarSpec(kind, metric, bars_per_day=50.0, exp_num_ticks_init=1_000.0, exp_num_ticks_min=10.0,
                   num_prev_bars=20, min_ticks=10)


#: The bar kinds `--features` knows by name, in production mode: side from is_buyer_maker,
#: O(1) EWMA, and a target rate of 50 bars a day (`bars_per_day`, see tasks.features.bars_nb): E[T]
#: (or a standard bar's threshold) follows the symbol's trailing activity, so the same
#: defaults hold at any activity (measured: 46 bars a day at 645 trades a day; 18-103 a
#: day from 0.28 to 4.4 M trades, bench_bar_behaviour). The first bar has
#: 1,000 trades (before any rate is known); bars have at least 10 trades and at most
#: 10·E[T]. Every field can be overridden (`name:field=value,...`); `bars_per_day=0` gives
#: the book's E[T] (EWMA of past bar lengths), which collapses or explodes (README).
PRESETS: dict[str, BarSpec] = {
    "ema_dollar_imbalance": _preset("imbalance", "dollar"),
    "ema_volume_imbalance": _preset("imbalance", "volume"),
    "ema_tick_imbalance": _preset("imbalance", "tick"),
    "ema_dollar_run": _preset("run", "dollar"),
    "ema_volume_run": _preset("run", "volume"),
    "ema_tick_run": _preset("run", "tick"),
    "dollar": _preset("standard", "dollar"),
    "volume": _preset("standard", "volume"),
    "tick": _preset("standard", "tick"),
}


@dataclass(frozen=True)
class Feature:
    """A named bar spec: its output lives in `features/<name>/`."""

    name: str
    spec: BarSpec

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"feature name {self.name!r} must match [a-z0-9_]{{1,64}}")

    def folder(self, data_dir: Path, market: str, symbol: str) -> Path:
        """`<data_dir>/features/<name>/market=<m>/symbol=<S>`."""
        return data_dir / "features" / self.name / f"market={market}" / f"symbol={check_symbol(symbol)}"


def parse_feature(text: str) -> Feature:
    """`ema_dollar_imbalance` or `ema_dollar_imbalance:exp_num_ticks_init=5000,min_ticks=20[,name=my_bars]`.

    Raises ValueError naming the spec, the field, its value and what is allowed: an unknown
    kind or field, a field given twice, a value of the wrong type or out of `BarSpec`'s
    bounds, a name that is not a folder name `[a-z0-9_]{1,64}`.
    """
    if not isinstance(text, str) or len(text) > MAX_SPEC_CHARS:
        shown = repr(text)[:60] + "..." if isinstance(text, str) else repr(text)
        raise ValueError(f"feature {shown}: a spec is a string of at most {MAX_SPEC_CHARS} characters")
    preset, _, rest = text.partition(":")
    if preset not in PRESETS:
        raise ValueError(f"unknown bar kind {preset!r}; known: {', '.join(PRESETS)}")
    base = json.loads(PRESETS[preset].to_json())
    name = preset
    seen: set[str] = set()
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip(" ")  # spaces only: a newline or tab in a name is refused, not dropped
        if not eq:
            raise ValueError(f"{text!r}: expected field=value, got {item!r}")
        if key in seen:
            raise ValueError(f"{text!r}: {key} is given twice")
        seen.add(key)
        if key == "name":
            name = value.strip(" ")
            continue
        if key not in base:
            raise ValueError(f"{text!r}: {key!r} is not a bar parameter; known: name, {', '.join(sorted(base))}")
        base[key] = _parse_value(text, key, value.strip(" "), base[key])
    if "bars_per_day" not in seen and (base["threshold"] is not None or not base["ema"] or base["ewma"] == "exact"):
        # `dollar:threshold=5e6`, `...:ema=false`, `...:ewma=exact`: the modes the target rate excludes
        base["bars_per_day"] = 0.0
    try:
        feature = Feature(name, BarSpec(**base))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if feature.spec.kind == "standard" and feature.spec.threshold is None and not feature.spec.bars_per_day:
        raise ValueError(f"{text!r}: standard bars need threshold=... (> 0) or bars_per_day=... (> 0)")
    return feature


def _parse_value(text: str, key: str, value: str, current: object) -> object:
    """`value` as the type of the field's default (None defaults are numbers: thresholds)."""
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, str):
            return value
        return float(value)
    except ValueError:
        kind = "number" if current is None else type(current).__name__
        raise ValueError(f"{text!r}: {key}={value!r} is not a valid {kind}") from None


def lake_fingerprint(entries: list[LakeEntry], through: date | None) -> str:
    """sha256 of the (archive, sha256) pairs of the lake's sources up to `through` (all when None)."""
    pairs = sorted((s.archive, s.sha256) for e in entries for s in e.sources
                   if through is None or s.first_day <= through)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


@dataclass(frozen=True)
class FeatureResult:
    """What one feature run did for a symbol."""

    feature: str
    market: str
    symbol: str
    mode: str  # "up to date", "extended" or "recomputed"
    trades: int
    bars: int
    parts: int
    seconds: float
    reason: str = ""


def from_cache(result: FeatureResult) -> FeatureResult:
    """What a run that hit the feature's cache record did: nothing, the bars were up to date.

    The record holds the result of the run that computed them ("recomputed", "extended"),
    which is not what this run did.
    """
    return dataclasses.replace(result, mode="up to date", trades=0, bars=0, seconds=0.0, reason="from cache")


def _parts(folder: Path) -> list[Path]:
    return range_files(folder)  # named like lake files, by the days of the trades they consumed


def _part_meta(path: Path) -> dict[str, Any]:
    raw = (pq.read_schema(path).metadata or {}).get(FEATURE_METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: no feature metadata")
    doc: dict[str, Any] = json.loads(raw)
    return doc


def _trades_after(entries: list[LakeEntry], last_id: int, batch_rows: int) -> Generator[pa.RecordBatch, None, None]:
    """The lake's trades with id > last_id, in id order, a row group at a time."""
    for entry in entries:
        try:
            with pq.ParquetFile(entry.path, page_checksum_verification=True) as pf:
                meta = pf.metadata
                for rg in range(meta.num_row_groups):
                    stats = meta.row_group(rg).column(0).statistics
                    if stats is not None and stats.has_min_max and int(stats.max) <= last_id:
                        continue  # consumed by an earlier run: skipped without reading
                    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=_READ_COLUMNS,
                                                 use_threads=False):
                        ids = batch.column(0).to_numpy()
                        if ids[0] <= last_id:
                            batch = batch.slice(int(np.searchsorted(ids, last_id, side="right")))
                        if batch.num_rows:
                            yield batch
        except (OSError, pa.ArrowException) as exc:  # a damaged page (checksum) or a file cut short
            raise LakeValidationError(str(entry.path), f"unreadable ({exc}); features not computed, their bars "
                                      "kept until the file is repaired") from exc


def compute_feature(data_dir: Path, market: str, symbol: str, feature: Feature, batch_rows: int = 1 << 20
                    ) -> FeatureResult:
    """Bring one feature of one symbol up to the lake's last trade (see the module doc)."""
    started = time.perf_counter()
    folder = feature.folder(data_dir, market, symbol)
    entries = lake_inventory(data_dir, market, symbol)
    # An unreadable or damaged lake file: refused, never bars rebuilt from fewer trades (tasks.lake.repair).
    refuse_damaged_lake(data_dir, market, symbol, entries)
    repairs = repair_count(data_dir, market, symbol)
    parts = _parts(folder)
    state, last_id, through, reason = BarState.initial(feature.spec), 0, None, "no earlier result"
    if parts:
        try:
            meta = _part_meta(parts[-1])
            if meta["spec"] != feature.spec.to_json():
                reason = "parameters changed"
            else:
                through = date.fromisoformat(meta["through"])
                if meta["lake_fingerprint"] != lake_fingerprint(entries, through):
                    reason = "lake data already consumed changed (re-published or back-filled archives)"
                    through = None
                elif meta.get("lake_repairs", 0) != repairs:  # bars may come from the damaged file
                    reason, through = "a lake file was repaired (rebuilt from its archives)", None
                else:
                    state = BarState.from_bytes(base64.b64decode(meta["state"]))
                    last_id, reason = int(meta["last_trade_id"]), ""
        except (ValueError, KeyError, OSError) as exc:
            reason, through = f"unreadable earlier result: {exc}", None
    recompute = bool(reason)
    pieces: list[pa.Table] = []
    trades = 0
    first_time = last_time = None
    new_last = last_id
    # The lake is read (decoded) in a thread ahead of the kernel: both release the GIL.
    batches = _trades_after(entries, last_id, batch_rows)
    with closing(batches), closing(read_ahead(batches.__next__, depth=2, name="features-read-ahead")) as ahead:
        for batch in ahead:
            ids = batch.column(0).to_numpy()
            times = batch.column(3).cast(pa.int64()).to_numpy()
            bars, state = process_chunk(
                feature.spec, state, times, batch.column(1).to_numpy(), batch.column(2).to_numpy(),
                batch.column(4).to_numpy(zero_copy_only=False), ids,
            )
            if bars.num_rows:
                pieces.append(bars)
            trades += batch.num_rows
            new_last = int(ids[-1])
            first_time = int(times.min()) if first_time is None else min(first_time, int(times.min()))
            last_time = int(times.max()) if last_time is None else max(last_time, int(times.max()))
    if trades == 0:
        if recompute and parts:  # nothing left in the lake to build from: the old result goes
            swap_folder(data_dir, folder, [], parts)
        return FeatureResult(feature.name, market, symbol, "recomputed" if recompute else "up to date", 0, 0,
                             len(_parts(folder)), time.perf_counter() - started, reason)
    table = pa.concat_tables(pieces) if pieces else BARS_SCHEMA.empty_table()
    assert first_time is not None and last_time is not None
    first_day, last_day = day_of_us(first_time), day_of_us(last_time)
    last_lake_day = max((e.last_day for e in entries), default=last_day)
    doc = {
        "feature": feature.name, "spec": feature.spec.to_json(), "market": market, "symbol": symbol,
        "last_trade_id": new_last, "through": last_lake_day.isoformat(),
        "lake_fingerprint": lake_fingerprint(entries, last_lake_day),
        "state": base64.b64encode(state.to_bytes()).decode(), "trades": trades, "bars": table.num_rows,
        "lake_repairs": repairs,
    }
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / range_file_name(first_day, last_day)
    if not recompute and out.exists():
        # New trades start after the last lake day consumed, so a part's name is always new.
        raise ValueError(f"{out}: a part for these days exists already; delete {folder} to recompute")
    tmp = _write_part(out, table, doc)
    # A recomputation replaces every earlier part in one step: readers never see old and
    # new bars together, and what a killed run left is finished or undone by the next one.
    swap_folder(data_dir, folder, [(tmp, out)], parts if recompute else [])
    if not recompute and len(parts) + 1 > MAX_PARTS:
        _consolidate(data_dir, folder)
    return FeatureResult(feature.name, market, symbol, "recomputed" if recompute else "extended", trades,
                         table.num_rows, len(_parts(folder)), time.perf_counter() - started, reason)


def _consolidate(data_dir: Path, folder: Path) -> None:
    """Rewrite a symbol's parts as one (bars are small), keeping the last part's resume state."""
    parts = _parts(folder)
    meta = _part_meta(parts[-1])
    table = pa.concat_tables(pq.read_table(p).cast(BARS_SCHEMA) for p in parts)
    first, last = range_of(parts[0].name), range_of(parts[-1].name)
    assert first is not None and last is not None
    out = folder / range_file_name(first[0], last[1])
    tmp = _write_part(out, table, {**meta, "bars": table.num_rows, "consolidated_parts": len(parts)})
    swap_folder(data_dir, folder, [(tmp, out)], parts)


def _write_part(out: Path, table: pa.Table, doc: dict[str, Any]) -> Path:
    """Write a part beside `out` under a hidden temporary name; returns that name (not yet committed)."""
    tmp = temp_path_for(out)
    schema = BARS_SCHEMA.with_metadata({FEATURE_METADATA_KEY: json.dumps(doc).encode()})
    try:
        pq.write_table(table.cast(schema), tmp, compression="zstd", write_statistics=True, write_page_checksum=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def read_feature(data_dir: Path, market: str, symbol: str, feature: Feature) -> pa.Table:
    """Every bar of a feature for a symbol, in order."""
    parts = _parts(feature.folder(data_dir, market, symbol))
    if not parts:
        return BARS_SCHEMA.empty_table()
    return pa.concat_tables(pq.read_table(p).cast(BARS_SCHEMA) for p in parts)
