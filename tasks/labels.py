"""Short names for what a task or a table row holds: symbols and days first, as ranges.

Prefect's log panel and the UI's tables cut long names: `download data/spot/daily.` said
nothing. These labels start with what differs between runs (the symbol, the days), and
write runs of consecutive days as `first..last`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta

from tasks.source.archive_spec import ArchiveSpec


def day_runs(days: Iterable[date]) -> list[tuple[date, date]]:
    """Consecutive days as (first, last) pairs, in order; duplicates count once."""
    runs: list[tuple[date, date]] = []
    for d in sorted(set(days)):
        if runs and d == runs[-1][1] + timedelta(days=1):
            runs[-1] = (runs[-1][0], d)
        else:
            runs.append((d, d))
    return runs


def span(first: date, last: date) -> str:
    """`2024-01-03` for one day, `2024-01-03..2024-01-05` for more."""
    return str(first) if first == last else f"{first}..{last}"


def span_with_count(first: date, last: date) -> str:
    """`2024-01-03`, or `2024-01-03..2024-01-05 (3 days)`."""
    n = (last - first).days + 1
    return span(first, last) + (f" ({n:,} days)" if n > 1 else "")


def symbols_label(symbols: Sequence[str]) -> str:
    """`BTCUSDT`, `BTCUSDT, ETHUSDT`, or `BTCUSDT +2 symbols` (short, for names)."""
    unique = list(dict.fromkeys(symbols))
    if len(unique) <= 2:
        return ", ".join(unique)
    return f"{unique[0]} +{len(unique) - 1} symbols"


def batch_label(specs: Sequence[ArchiveSpec]) -> str:
    """What a conversion batch holds: `BTCUSDT 2024-01-01..2024-01-07 (7 archives)`, or `BTCUSDT 2024-01-03`.

    Months read `2024-01..2024-03`. The range is from the batch's first to its last period:
    a batch may skip periods (the last archives are spread over the workers), hence the count.
    """
    if not specs:
        return "no archives"
    ordered = sorted(specs, key=lambda s: (s.first_day, s.symbol))
    who = symbols_label(sorted({s.symbol for s in specs}))
    first = ordered[0]
    last = max(specs, key=lambda s: s.last_day)
    if len(specs) == 1:
        return f"{who} {first.label}"
    if all(s.granularity == first.granularity for s in specs):
        labels = sorted(s.label for s in specs)
        when = f"{labels[0]}..{labels[-1]}" if labels[0] != labels[-1] else labels[0]
    else:
        when = span(first.first_day, last.last_day)
    return f"{who} {when} ({len(specs):,} archives)"
