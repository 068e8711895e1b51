"""The scheduled daily update: from the lake's state, fetch what is new or late, then merge.

For each symbol it takes every day after the last day in the lake up to yesterday (UTC),
plus a re-probe of the last `reprobe_days` days, because Binance publishes late at times
(#151, #411) and re-publishes corrected archives (a changed checksum is re-ingested).
A symbol the lake has no history of yet is back-filled: from its first published day
(daily or monthly archive, whichever is earlier), monthly archives for whole months,
and the summary says "new symbol XYZ: back-filled from <day>" (`backfill_new_symbols`
False, or `--no-backfill`: only the re-probe window, as for the others).
Symbols are the given ones, or every symbol of the market that the listing shows,
filtered by include/exclude patterns (shell-style, e.g. `*USDT`). In that "all symbols" mode
the universe tables (`tasks.lake.universe_table`) are refreshed first: a new symbol is back-filled
over its published life (to its last day if it is delisted already), and a delisted one the
lake holds to its last day is left alone instead of being probed every day. Days not published yet
are not failures; a day still missing once it is older than the re-probe window is
reported in the run's summary.

Run it ad hoc:  python -m flows.daily_update --data-dir ./data --symbols BTCUSDT ETHUSDT
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # The command line checks its arguments and launches the API server before this module's
    # imports (seconds of Prefect, pyarrow, Dask, Numba), which it then imports by name.
    from flows.cli import finish
    from flows.daily_cli import main

    finish(main())

import fnmatch
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.client.schemas.objects import State
from prefect.logging import get_run_logger

from flows.api_server import TemporaryApiServer
from flows.cli import Verbosity

# The command line lives in flows.daily_cli (it imports no Prefect); its names stay importable here.
from flows.daily_cli import MAX_REPROBE_DAYS as MAX_REPROBE_DAYS
from flows.daily_cli import main as main
from flows.full_pipeline import final_state, run_pipeline
from flows.progress import cli_progress
from flows.runtime import dask_runner, default_dask_runner, server_template, shared_api_server
from tasks.dataset_ids import markets_of, monthly_only
from tasks.lake.inventory import coverage, lake_inventory, staged_inventory
from tasks.lake.universe_table import SymbolSpan
from tasks.prefect_tasks import discover_task
from tasks.report import PipelineReport, RunFailed
from tasks.settings import DEFAULT_LISTING_URL, Settings
from tasks.source.archive_spec import Granularity, Market
from tasks.source.http import HttpOptions
from tasks.source.listing import Discovery
from tasks.source.universe_scan import refresh_universe
from tasks.units import plural

#: By this day of the month, last month's monthly archives are out (#328); before it, one not
#: published yet is not reported missing.
MONTHLY_DUE_DAY = 15


def last_day_held(data_dir: Path, market: Market, symbol: str, datasets: Sequence[str] = ("trades",)) -> date | None:
    """The last day the lake (or staging) holds for a symbol in every one of `datasets`; None when one has nothing.

    The earliest of the datasets' last days: the update window then covers the dataset that lags.
    """
    last: list[date] = []
    for ds in datasets:
        days = (coverage(lake_inventory(data_dir, market, symbol, ds))
                | coverage(staged_inventory(data_dir, market, symbol, ds)))
        if not days:
            return None
        last.append(max(days))
    return min(last) if last else None


def update_window(last: date | None, today: date, reprobe_days: int) -> tuple[date, date]:
    """First and last day to fetch: after `last` (or the re-probe window, if earlier) up to yesterday."""
    yesterday = today - timedelta(days=1)
    reprobe_from = yesterday - timedelta(days=max(reprobe_days, 1) - 1)
    start = reprobe_from if last is None else min(last + timedelta(days=1), reprobe_from)
    return start, yesterday


def first_published_days(discoveries: Sequence[Discovery]) -> dict[str, date | None]:
    """Per symbol, its first published day (daily or monthly archive); None if nothing is published or a
    folder could not be listed (then the first day is not known)."""
    out: dict[str, date | None] = {}
    unknown: set[str] = set()
    for d in discoveries:
        if d.error:
            unknown.add(d.symbol)
        first = min(d.periods(), default=None)
        mine = out.get(d.symbol)
        out[d.symbol] = first if mine is None else mine if first is None else min(mine, first)
    return {s: None if s in unknown else day for s, day in out.items()}


def select_symbols(found: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """The listed symbols matching any include pattern (all if none) and no exclude pattern."""
    return sorted(s for s in found if (not include or any(fnmatch.fnmatchcase(s, p) for p in include))
                  and not any(fnmatch.fnmatchcase(s, p) for p in exclude))


@task(name="refresh-universe", task_run_name="universe {market} {dataset_id}", persist_result=False, retries=2,
      retry_delay_seconds=5)
def refresh_universe_task(data_dir: Path, market: Market, dataset_id: str, listing_url: str,
                          today: date) -> dict[str, SymbolSpan]:
    """Refresh the lake's universe table of (market, dataset) from the listing; its spans by symbol.

    On Sundays every folder is listed from the start (`full`): the other days skip symbols
    taken as delisted, and a symbol re-listed later is found within a week.
    """
    logger = get_run_logger()
    scan = refresh_universe(data_dir, market, dataset_id, listing_url, HttpOptions(), today=today,
                            full=today.weekday() == 6)
    logger.info("universe %s %s: %d symbol folders listed, %d delisted kept, %d symbols", market, dataset_id,
                scan.listed, scan.kept, len(scan.spans))
    for symbol, reason in scan.errors.items():
        logger.warning("universe %s %s: %s could not be listed, its span is the one held: %s", market, dataset_id,
                       symbol, reason)
    return scan.spans


def merged_spans(per_dataset: Sequence[dict[str, SymbolSpan]]) -> dict[str, SymbolSpan]:
    """One span per symbol over several datasets: the earliest first day and the latest last day."""
    out: dict[str, SymbolSpan] = {}
    for spans in per_dataset:
        for symbol, span in spans.items():
            mine = out.get(symbol)
            out[symbol] = span if mine is None else replace(
                mine, first_day=min(mine.first_day, span.first_day), last_day=max(mine.last_day, span.last_day))
    return out


@flow(name="daily-update", task_runner=default_dask_runner())
def daily_update(
    data_dir: Path,
    market: Market = "spot",
    symbols: list[str] | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    reprobe_days: int = 3,
    today: date | None = None,
    base_url: str | None = None,
    listing_url: str | None = None,
    dask_address: str | None = None,
    strict: bool | None = None,
    backfill_new_symbols: bool = True,
    datasets: list[str] | None = None,
) -> PipelineReport | State[PipelineReport]:
    """Bring every configured symbol up to yesterday (UTC) and re-probe the last `reprobe_days` days.

    `symbols` None: every symbol of the market in the listing, filtered by `include` /
    `exclude` (shell patterns). `today` defaults to the current UTC date (set it to replay a day).
    `strict`: fail on any refused archive, also one refused before under the same published
    checksum (default: such a known refusal is reported and does not fail the run again).
    A symbol without history in the lake is back-filled from its first published day
    (granularity auto) unless `backfill_new_symbols` is False. `datasets`: dataset ids
    (trades, aggTrades, klines-1m, ...; default trades), each brought up to date.
    Other settings (concurrency, target file size, ...) come from `BINANCE_LAKE_*` variables.
    """
    logger = get_run_logger()
    today = today or datetime.now(UTC).date()
    overrides: dict[str, Any] = {k: v for k, v in (("base_url", base_url), ("listing_url", listing_url),
                                                   ("dask_address", dask_address), ("strict", strict))
                                 if v is not None}
    wanted = tuple(datasets or ("trades",))
    overrides["datasets"] = wanted
    data_dir = data_dir.resolve()
    notes = []
    # "All symbols": the universe tables (refreshed here) say which symbols exist and when they
    # were published, delisted ones included.
    spans: dict[str, SymbolSpan] | None = None
    if symbols is None:
        spans = merged_spans([refresh_universe_task(data_dir, market, d, listing_url or DEFAULT_LISTING_URL, today)
                              for d in wanted if market in markets_of(d)])
        symbols = select_symbols(list(spans), include or [], exclude or [])
        logger.info("%d of %d listed %s symbols selected", len(symbols), len(spans), market)
    if not symbols:
        notes.append("no symbol selected: nothing to do")
        return PipelineReport(notes=notes)
    report = PipelineReport(notes=notes)
    # Datasets published monthly only (fundingRate) are due a month at a time: their window
    # stops at the last whole month, so they run apart from the daily ones.
    families = [tuple(d for d in wanted if not monthly_only(d)), tuple(d for d in wanted if monthly_only(d))]
    for family in (f for f in families if f):
        report.merge(_update(data_dir, market, symbols, family, spans, today, reprobe_days, backfill_new_symbols,
                             listing_url, {**overrides, "datasets": family}))
    _not_due_yet(report, today)
    window_start = today - timedelta(days=max(reprobe_days, 1))
    late = sorted({(m.symbol, m.day) for m in report.missing if m.day < window_start})
    if late:
        report.notes.append(f"missing for longer than the {reprobe_days}-day re-probe window: "
                            f"{plural(len(late), 'day')}")
        report.notes.extend(f"  {s} {d}" for s, d in late[:50])
    return final_state(report)


def _update(data_dir: Path, market: Market, symbols: list[str], wanted: tuple[str, ...],
            spans: dict[str, SymbolSpan] | None, today: date, reprobe_days: int, backfill_new_symbols: bool,
            listing_url: str | None, overrides: dict[str, Any]) -> PipelineReport:
    """One family of datasets (daily, or monthly only) of the daily update: windows per symbol, then the runs."""
    logger = get_run_logger()
    notes: list[str] = []
    held = {s: last_day_held(data_dir, market, s, wanted) for s in symbols}
    if spans is not None:
        # A symbol whose last archive is older than the re-probe window and that the lake holds
        # to that day has nothing left to fetch: it is delisted (or settled), not late.
        window_start = today - timedelta(days=max(reprobe_days, 1))
        if all(monthly_only(d) for d in wanted):  # only a month whose archive is due says "ended"
            window_start = last_due_month(today)
        ended = [s for s in symbols if spans[s].last_day < window_start and (h := held[s]) is not None
                 and h >= spans[s].last_day]
        if ended:
            notes.append(f"{plural(len(ended), 'symbol')} delisted and held to their last day, not updated: "
                         + ", ".join(f"{s} (last {spans[s].last_day})" for s in ended[:20])
                         + (" ..." if len(ended) > 20 else ""))
            symbols = [s for s in symbols if s not in ended]
    # A dataset published monthly only (fundingRate) is brought up to date by whole months, up to
    # the last whole one: the current month's archive comes after it ends.
    monthly = any(monthly_only(d) for d in wanted)
    granularity: Granularity | Literal["auto"] = "auto" if monthly else "daily"
    windows: dict[str, tuple[date, date, Granularity | Literal["auto"]]] = {
        s: (*update_window(held[s], today, reprobe_days), granularity) for s in symbols}
    for s, (start, end, g) in list(windows.items()):
        if spans is not None and start <= spans[s].last_day < end:  # delisted meanwhile: up to its last day
            windows[s] = (start, spans[s].last_day, g)
    new = [s for s in symbols if held[s] is None]
    if new and backfill_new_symbols and spans is not None:
        # The universe knows each new symbol's life: back-fill from its first to its last day.
        yesterday = today - timedelta(days=1)
        for s in new:
            born, last = spans[s].first_day, min(spans[s].last_day, yesterday)
            if born <= last:
                windows[s] = (born, last, "auto")
                notes.append(f"new symbol {s}: back-filled from {born}"
                             + (f" to its last day {last}" if last < yesterday else ""))
    elif new and backfill_new_symbols:
        listed = discover_task(listing_url or DEFAULT_LISTING_URL, market, new, ["daily", "monthly"], HttpOptions(), 8)
        yesterday = today - timedelta(days=1)
        for s, first in first_published_days(listed).items():
            if first is not None and first <= yesterday:
                windows[s] = (first, yesterday, "auto")
                notes.append(f"new symbol {s}: back-filled from {first}")
            elif first is None and any(d.error for d in listed if d.symbol == s):
                notes.append(f"new symbol {s}: its listing could not be read, so it was not back-filled; "
                             f"a later update back-fills it while the lake holds nothing of it")
    if monthly:  # nothing after the last whole month; a symbol held up to it is up to date
        last_whole = today.replace(day=1) - timedelta(days=1)
        windows = {s: (start, min(end, last_whole), g) for s, (start, end, g) in windows.items()}
        symbols = [s for s in symbols if windows[s][0] <= windows[s][1]]
    # Symbols sharing a window (normally all: every one up to date) run together.
    groups: dict[tuple[date, date, Granularity | Literal["auto"]], list[str]] = {}
    for s in symbols:
        groups.setdefault(windows[s], []).append(s)
    report = PipelineReport(notes=notes)
    for (start, end, granularity), group in sorted(groups.items()):
        settings = Settings(data_dir=data_dir, market=market, symbols=tuple(group), start=start, end=end,
                            granularity=granularity, **overrides)
        logger.info("daily update of %d %s symbols over %s..%s", len(group), market, start, end)
        report.merge(run_pipeline(settings))
    return report


def last_due_month(today: date) -> date:
    """The first day of the latest month whose monthly archives must be out by `today` (#328: by mid-month)."""
    last_month = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    return last_month if today.day > MONTHLY_DUE_DAY else (last_month - timedelta(days=1)).replace(day=1)


def _not_due_yet(report: PipelineReport, today: date) -> None:
    """Last month's days of a monthly-only dataset, before mid-month: not out yet (#328), not missing."""
    last_month = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    early = [m for m in report.missing if monthly_only(m.dataset) and m.day >= last_month
             and today.day <= MONTHLY_DUE_DAY]
    if early:
        report.missing = [m for m in report.missing if m not in early]
        for dataset_id in sorted({m.dataset for m in early}):
            symbols = sorted({m.symbol for m in early if m.dataset == dataset_id})
            report.notes.append(f"{dataset_id} {last_month:%Y-%m}: the monthly archive is not out yet for "
                                f"{', '.join(symbols[:10])}{' ...' if len(symbols) > 10 else ''} (monthly archives "
                                f"come by mid-month, #328): a later update fetches it")


def run_from_cli(kwargs: dict[str, Any], probe: Settings, data_dir: Path,
                 early: TemporaryApiServer | None = None, verbosity: Verbosity = "normal") -> int:
    """The run of `python -m flows.daily_update` once its arguments are checked (`flows.daily_cli.main`).

    Prints the summary; returns the exit status: 0 all good, 1 an archive refused or failed.
    `verbosity`: progress and Prefect's console lines (`flows.progress.cli_progress`).
    """
    with cli_progress(verbosity), shared_api_server(server_template(data_dir), early=early):
        state = daily_update.with_options(task_runner=dask_runner(probe))(**kwargs, return_state=True)
    result = state.result(raise_on_failure=False)
    report = result.report if isinstance(result, RunFailed) else result
    if isinstance(report, PipelineReport):
        print(report.summary())
        return 0 if state.is_completed() else 1
    print(f"run ended {state.name}: {result}", file=sys.stderr)
    return 1
