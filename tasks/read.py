"""Reading the lake from Python, without Prefect: one symbol's trades or bars for a range of days, and
the symbols that traded on a day (`universe`).

    from tasks.lake import read_trades, read_bars, to_pandas
    t = read_trades("data", "spot", "BTCUSDT", "2024-01-01", "2024-01-31")   # a pyarrow Table
    df = to_pandas(t)                         # is_best_match as pandas' nullable `boolean`

Days are UTC and inclusive at both ends, as everywhere in the CLI: `end="2024-01-31"` holds the
trades of 2024-01-31 up to 23:59:59.999999; `start`/`end` left out mean the first/last day held.
Trades are returned sorted by `trade_id` in the lake's schema (`tasks.schema.TRADES_SCHEMA`,
only `columns` if given); bars (`features/<feature>/...`) sorted by `first_trade_id`, a bar
belonging to the day of its `close_time`.

Only the files whose name (`<first>_<last>.parquet`) overlaps the range are opened, and of
those only the row groups whose `time` (bars: `close_time`) statistics overlap it are read;
rows are then cut exactly to the range. Pages are read with their CRC32 checked.

A run may swap a symbol's folder while it is read (README, "Consistency for readers"). The
files are listed and opened through one handle on the folder, and kept only if that folder
is still the live one once all are open: the read then holds exactly one set of files, old
or new, never a mix, even if the set it holds is deleted meanwhile. A listed file that
vanished, or a folder swapped during the opens, makes it list again (up to `_ATTEMPTS` times).

Every failure is a `LakeReadError` naming the path (or argument) and the reason: an unknown
market, symbol or feature, a malformed day, an unknown column, a damaged file.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import LakeReadError, PipelineError
from tasks.lake.inventory import range_of
from tasks.schema import TRADES_SCHEMA, same_columns
from tasks.source.archive_spec import MARKETS, SYMBOL_RE, lake_symbol_dir
from tasks.utc import DAY_US, day_start_us

if TYPE_CHECKING:
    import pandas as pd

#: A day: a `datetime.date` or `YYYY-MM-DD` (a `datetime` is refused: ranges are whole UTC days).
Day = date | str
#: Listings of a folder tried before giving up while runs keep swapping it (each swap takes ms).
_ATTEMPTS = 3
#: A feature's name, as `tasks.features.incremental` checks it (not imported from there: it loads Numba).
_FEATURE_NAME = re.compile(r"\A[a-z0-9_]{1,64}\Z")
_DAY_RE = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


@dataclass(frozen=True)
class _Layout:
    """How one kind of range folder is read: the time column that days apply to, the id it is sorted by."""

    time_column: str
    id_column: str
    schema: pa.Schema | None  # the columns every file must have (None: taken from the files)
    dataset: str | None = None  # the lake dataset whose schema the files must have (None: bars)


_TRADES = _Layout("time", "trade_id", TRADES_SCHEMA.remove_metadata(), "trades")
_BARS = _Layout("close_time", "first_trade_id", None)


def read_trades(data_dir: str | Path, market: str, symbol: str, start: Day | None = None, end: Day | None = None,
                columns: Sequence[str] | None = None) -> pa.Table:
    """The trades of `market`/`symbol` from day `start` to day `end` (UTC, both inclusive), sorted by trade_id.

    `columns` selects (and orders) columns of the lake's schema; all of them by default.
    Raises `LakeReadError` (path and reason) for an unknown market or symbol, a bad day or
    column, or a damaged file. A symbol with no trade in the range gives an empty table.
    """
    folder = _symbol_folder(Path(data_dir), "lake/trades", market, symbol)
    return _read_folder(folder, _TRADES, _days(start, end), columns)


def read_dataset(data_dir: str | Path, market: str, symbol: str, dataset: str, start: Day | None = None,
                 end: Day | None = None, columns: Sequence[str] | None = None) -> pa.Table:
    """Any dataset of the lake (`aggTrades`, `klines-1m`, `fundingRate`, `metrics`, `bookTicker`, ...) for
    `market`/`symbol`: rows whose time (the dataset's `time` column) falls from day `start` to day
    `end` (UTC, both inclusive), sorted by the dataset's key, in its schema (`tasks.datasets`).
    Errors as in `read_trades`; an unknown dataset id is a LakeReadError too.
    """
    from tasks.datasets import dataset as declared

    try:
        data = declared(dataset)
    except PipelineError as exc:
        raise LakeReadError(f"dataset={dataset!r}", exc.reason) from None
    layout = _Layout(data.time, data.key, data.schema.remove_metadata(), data.id)
    folder = _symbol_folder(Path(data_dir), f"lake/{data.lake_folder}", market, symbol)
    return _read_folder(folder, layout, _days(start, end), columns)


def read_bars(data_dir: str | Path, market: str, symbol: str, feature: str, start: Day | None = None,
              end: Day | None = None, columns: Sequence[str] | None = None) -> pa.Table:
    """The bars of `feature` (its folder under `features/`, e.g. `ema_dollar_imbalance`) for `market`/`symbol`.

    Bars whose `close_time` falls from day `start` to day `end` (UTC, both inclusive), sorted by
    `first_trade_id`; `columns` as in `read_trades` (of `tasks.features.bars.BARS_SCHEMA`).
    """
    if not isinstance(feature, str) or not _FEATURE_NAME.fullmatch(feature):
        raise LakeReadError(f"feature={feature!r}", "a feature name matches [a-z0-9_]{1,64} (the --features name)")
    folder = _symbol_folder(Path(data_dir), f"features/{feature}", market, symbol)
    return _read_folder(folder, _BARS, _days(start, end), columns)


def universe(data_dir: str | Path, market: str, day: Day, dataset: str = "trades") -> list[str]:
    """The symbols of `market` whose `dataset` was published on `day` (UTC): the universe of that day.

    From the lake's universe table (`tasks.lake.universe_table`, refreshed by the daily update or
    `python -m flows.status --universe --refresh`), which keeps delisted symbols and settled
    contracts: a study over past days sees the symbols that traded then, not today's.
    Raises `LakeReadError` for an unknown market or dataset, a bad day, a missing or damaged table.
    """
    from tasks.lake.universe_table import read_universe, universe_path

    if market not in MARKETS:
        raise LakeReadError(f"market={market!r}", f"unknown market: one of {', '.join(MARKETS)}")
    when = _day(day, "day")
    assert when is not None
    try:
        path = universe_path(Path(data_dir), market, dataset)
    except PipelineError as exc:
        raise LakeReadError(f"dataset={dataset!r}", exc.reason) from None
    held = read_universe(Path(data_dir), market, dataset)  # type: ignore[arg-type]
    if held is None:
        raise LakeReadError(str(path), "no universe table: refresh it with `python -m flows.status --data-dir "
                            f"{data_dir} --universe --refresh --market {market} --dataset {dataset}`")
    return held.trading_on(when)


def pandas_types() -> Callable[[pa.DataType], Any]:
    """A `types_mapper` for pyarrow's `to_pandas` giving pandas' nullable `boolean` for boolean columns.

    NumPy has no nullable bool, so pyarrow turns a boolean column holding a null (`is_best_match`
    of futures trades) into `object`; with this mapper it stays typed, for every market alike.
    """
    import pandas as pd

    return {pa.bool_(): pd.BooleanDtype()}.get


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """`table` as a pandas DataFrame whose nullable boolean columns are pandas' `boolean` (never `object`).

    Columns that can hold no null (`is_buyer_maker`) stay NumPy `bool`; the rest convert as pyarrow does.
    """
    df = table.to_pandas(types_mapper=pandas_types())
    for f in table.schema:
        if pa.types.is_boolean(f.type) and not f.nullable:
            df[f.name] = df[f.name].astype(bool)
    return df


def read_trades_pandas(data_dir: str | Path, market: str, symbol: str, start: Day | None = None,
                       end: Day | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """`read_trades` as a pandas DataFrame (`to_pandas`: `is_best_match` is a nullable `boolean`)."""
    return to_pandas(read_trades(data_dir, market, symbol, start, end, columns))


def _symbol_folder(data_dir: Path, area: str, market: str, symbol: str) -> Path:
    """The folder of `market`/`symbol` under `data_dir/area`, or LakeReadError saying what the lake holds instead."""
    if market not in MARKETS:
        raise LakeReadError(f"market={market!r}", f"unknown market; one of {', '.join(MARKETS)}")
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        raise LakeReadError(f"symbol={symbol!r}", "a symbol matches [A-Z0-9_]{1,40} (e.g. BTCUSDT)")
    root = data_dir.joinpath(*area.split("/"))
    folder = lake_symbol_dir(data_dir, market, symbol) if area == "lake/trades" else (
        root / f"market={market}" / f"symbol={symbol}")
    if folder.is_dir():
        return folder
    if not root.is_dir():
        what = "no lake here (no lake/trades folder)" if area == "lake/trades" else (
            f"not in this lake (no {area} folder): back-fill it with --dataset" if area.startswith("lake/") else
            f"no such feature (no {area} folder; the --features name, e.g. ema_dollar_imbalance)")
        raise LakeReadError(str(root), what)
    held = sorted(p.name.removeprefix("symbol=") for p in (root / f"market={market}").glob("symbol=*"))
    elsewhere = sorted(p.parent.name.removeprefix("market=") for p in root.glob(f"market=*/symbol={symbol}"))
    hint = f"; {symbol} is held for {', '.join(elsewhere)}" if elsewhere else ""
    listed = ", ".join(held[:10]) + (", ..." if len(held) > 10 else "")
    raise LakeReadError(str(folder), f"no such symbol for {market} (held: {listed or 'none'}){hint}")


def _day(value: Day | None, what: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):  # a subclass of date: refused rather than silently cut to its day
        raise LakeReadError(f"{what}={value!r}", "a day (datetime.date or YYYY-MM-DD), not a time: days are whole, UTC")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _DAY_RE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:  # 2024-02-30
            pass
    raise LakeReadError(f"{what}={value!r}", "expected a day: YYYY-MM-DD or a datetime.date (UTC, inclusive)")


def _days(start: Day | None, end: Day | None) -> tuple[date | None, date | None]:
    first, last = _day(start, "start"), _day(end, "end")
    if first is not None and last is not None and first > last:
        raise LakeReadError(f"start={first} end={last}", "start is after end (both days are inclusive)")
    return first, last


def _open_set(folder: Path, first: date | None, last: date | None) -> list[tuple[Path, IO[bytes]]]:
    """Open the committed files of `folder` overlapping [first, last], all of one set (see the module doc)."""
    for _ in range(_ATTEMPTS):
        try:
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # without the exchange, a swap leaves the folder missing for an instant
            continue
        opened: list[tuple[Path, IO[bytes]]] = []
        try:
            names = []
            for name in os.listdir(dir_fd):
                days = range_of(name)
                if days is not None and (last is None or days[0] <= last) and (first is None or days[1] >= first):
                    names.append((days, name))
            for _days_of, name in sorted(names):
                fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
                fh = os.fdopen(fd, "rb")
                opened.append((folder / name, fh))
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise LakeReadError(str(folder / name), "not a regular file in a lake folder")
            held, live = os.fstat(dir_fd), os.stat(folder)
            if (held.st_dev, held.st_ino) == (live.st_dev, live.st_ino):
                return opened  # the folder read is still the live one: its set was whole when listed
        except FileNotFoundError:
            pass  # a listed file vanished: the set was superseded meanwhile
        except BaseException:
            _close(opened)
            raise
        finally:
            os.close(dir_fd)
        _close(opened)
    raise LakeReadError(str(folder), f"swapped by a run during each of {_ATTEMPTS} reads; read again")


def _close(opened: list[tuple[Path, IO[bytes]]]) -> None:
    for _, fh in opened:
        fh.close()


def _read_folder(folder: Path, layout: _Layout, days: tuple[date | None, date | None],
                 columns: Sequence[str] | None) -> pa.Table:
    first, last = days
    lo = day_start_us(first) if first is not None else None
    hi = day_start_us(last) + DAY_US if last is not None else None  # exclusive: the end day is whole
    opened = _open_set(folder, first, last)
    pieces: list[pa.Table] = []
    schema = layout.schema
    try:
        for path, fh in opened:
            try:
                piece, file_schema = _read_file(path, fh, layout, columns, (lo, hi), days)
            except LakeReadError:
                raise
            except (OSError, pa.ArrowException, ValueError) as exc:  # a page failing its CRC, a file cut short
                raise LakeReadError(str(path), f"damaged file, not read ({exc}); the next run's validate step "
                                    "rebuilds it from its archives") from exc
            schema = schema or file_schema
            pieces.append(piece)
    finally:
        _close(opened)
    if schema is None:  # no bars part in the range to take the columns from
        from tasks.features.bars import BARS_SCHEMA  # here only: tasks.features.bars loads Numba

        schema = BARS_SCHEMA
    out = _select(schema, columns)
    read = out if layout.id_column in out.names else pa.schema([*out, schema.field(layout.id_column)])
    table = pa.concat_tables([p.cast(read) for p in pieces]) if pieces else read.empty_table()
    ids = table[layout.id_column].to_numpy()
    if len(ids) > 1 and not (ids[1:] >= ids[:-1]).all():
        # Never the case in a validated lake (files disjoint and sorted): checked, not trusted.
        table = table.sort_by(layout.id_column)
    return table.select(out.names)


def _read_file(path: Path, fh: IO[bytes], layout: _Layout, columns: Sequence[str] | None,
               bounds: tuple[int | None, int | None], days: tuple[date | None, date | None]
               ) -> tuple[pa.Table, pa.Schema]:
    """One file's rows with times in [lo, hi) (µs): the asked columns and the id column; the file's schema."""
    (lo, hi), (first, last) = bounds, days
    with pq.ParquetFile(fh, page_checksum_verification=True) as pf:
        schema = pf.schema_arrow.remove_metadata()
        if layout.schema is not None and not _same_columns(layout, pf.schema_arrow):
            raise LakeReadError(str(path), "not the lake's schema (names, types or nullability differ)")
        for c in (layout.time_column, layout.id_column):
            if c not in schema.names:
                raise LakeReadError(str(path), f"no {c} column: not a file of this folder's kind")
        wanted = _select(schema, columns).names
        if layout.id_column not in wanted:
            wanted.append(layout.id_column)
        time_i = schema.names.index(layout.time_column)
        meta = pf.metadata
        groups = []
        for rg in range(meta.num_row_groups):
            st = meta.row_group(rg).column(time_i).statistics
            if st is not None and st.has_min_max and (
                    (lo is not None and st.max_raw < lo) or (hi is not None and st.min_raw >= hi)):
                continue  # wholly outside the range: not read
            groups.append(rg)
        # Lake files need no cut when their days lie inside the range: validation keeps every trade
        # inside its file's days. Bars are always cut (a part's name is not checked against its bars).
        file_days = range_of(path.name)
        inside = layout is _TRADES and file_days is not None and (first is None or file_days[0] >= first) and (
            last is None or file_days[1] <= last)
        need = wanted if inside or layout.time_column in wanted else [*wanted, layout.time_column]
        if not groups:
            return schema.empty_table().select(wanted), schema
        table = pf.read_row_groups(groups, columns=need, use_threads=True)
    if not inside and (lo is not None or hi is not None):
        times = table[layout.time_column].cast(pa.int64())
        keep = [pc.greater_equal(times, lo)] if lo is not None else []
        keep += [pc.less(times, hi)] if hi is not None else []
        table = table.filter(keep[0] if len(keep) == 1 else pc.and_(keep[0], keep[1]))
    return table.select(wanted).replace_schema_metadata(None), schema


def _same_columns(layout: _Layout, schema: pa.Schema) -> bool:
    if layout.dataset in (None, "trades"):
        return same_columns(schema)
    from tasks.datasets import dataset as declared

    return declared(layout.dataset).same_columns(schema)


def _select(schema: pa.Schema, columns: Sequence[str] | None) -> pa.Schema:
    """The fields `columns` names, in that order (all when None); LakeReadError for an unknown or repeated one."""
    if columns is None:
        return schema
    if isinstance(columns, str):
        raise LakeReadError(f"columns={columns!r}", "a list of column names, not one string")
    unknown = [c for c in columns if c not in schema.names]
    if unknown or len(set(columns)) != len(columns):
        reason = f"unknown column {unknown[0]!r}" if unknown else "a column is named twice"
        raise LakeReadError(f"columns={list(columns)!r}", f"{reason}; columns: {', '.join(schema.names)}")
    return pa.schema([schema.field(c) for c in columns])
