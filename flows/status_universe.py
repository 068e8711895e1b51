"""`python -m flows.status --universe`: the symbols of a market and dataset, and who traded on a day.

    python -m flows.status --data-dir ./data --universe --market um --date 2023-06-01
    python -m flows.status --data-dir ./data --universe --market um --refresh     # list the archive first

Reads the lake's universe tables (`tasks.lake.universe_table`); `--refresh` scans the listing and
rewrites the table first (the only network use of `flows.status`). Delisted symbols and settled
contracts stay in the table, so a past day lists the symbols that traded then.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from tasks.lake.universe_table import Universe, frontier, held_universes, read_universe
from tasks.source.archive_spec import Market


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "unknown"


def frontier_line(held: Universe, today: date) -> str:
    """`um trades: 530 symbols, 412 trading on 2026-12-02; published up to 2026-12-02 (refreshed ...)`."""
    last = frontier(held.spans)
    yesterday = today - timedelta(days=1)
    trading = len(held.trading_on(last)) if last else 0
    up_to = "nothing published" if last is None else f"published up to {last}"
    if last is not None and last < yesterday:
        up_to += f" ({(yesterday - last).days} days behind yesterday)"
    return (f"{held.market} {held.dataset}: {len(held.spans)} symbols, {trading} trading on {last or '-'}; "
            f"{up_to} (universe refreshed {_when(held.refreshed_at)})")


def universe_report(data_dir: Path, markets: list[Market] | None, dataset_id: str, day: date | None,
                    today: date) -> tuple[list[str], int]:
    """The lines to print and the exit status (2 when no table is held for what was asked)."""
    wanted = [t for m, d in held_universes(data_dir) if d == dataset_id and (not markets or m in markets)
              if (t := read_universe(data_dir, m, d)) is not None]
    if not wanted:
        where = " ".join(markets or ["any market"])
        return [f"error: {data_dir}: no universe table for {where} {dataset_id}: add --refresh to list the "
                "archive (or run the daily update)"], 2
    lines: list[str] = []
    for held in wanted:
        lines.append(frontier_line(held, today))
        if day is None:
            rows = list(held.spans.values())
            lines.append(f"{len(rows)} symbols, all days:")
        else:
            rows = [held.spans[s] for s in held.trading_on(day)]
            lines.append(f"{len(rows)} of {len(held.spans)} symbols trading on {day}:")
        lines.append("symbol\tfirst\tlast")
        for span in rows:
            first = f"{span.first_day}" + (" (month)" if span.first_precision == "month" else "")
            last = f"{span.last_day}" + (" (month)" if span.last_precision == "month" else "")
            lines.append(f"{span.symbol}\t{first}\t{last}")
    return lines, 0
