"""Plan: which archives to fetch for the requested days, daily or monthly, never both.

A pure function of what is requested, what the listing publishes and what the lake
already holds. Monthly and daily archives of the same period can disagree
(binance-public-data#475), so each day comes from exactly one source, and a day the
lake already holds keeps the source it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

from tasks.dataset_ids import daily_only, monthly_only, publication_end
from tasks.lake.inventory import SourceRef
from tasks.source.archive_spec import ArchiveSpec, Market, month_end


@dataclass(frozen=True)
class MissingDay:
    """A requested day that no archive will provide, and why."""

    market: Market
    symbol: str
    day: date
    reason: str
    dataset: str = "trades"


@dataclass
class Plan:
    """Archives to ingest and requested days that cannot be provided."""

    archives: list[ArchiveSpec] = field(default_factory=list)
    missing: list[MissingDay] = field(default_factory=list)
    #: The dataset's publication ended inside the range: its last day, and the days after it
    #: that were asked for (not planned, not missing: there is nothing to wait for).
    ended: tuple[date, int] | None = None


def days_between(start: date, end: date) -> list[date]:
    """Every day from start to end, inclusive."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def months_touching(start: date, end: date) -> list[date]:
    """First day of every month that overlaps [start, end]."""
    months, m = [], start.replace(day=1)
    while m <= end:
        months.append(m)
        m = (month_end(m) + timedelta(days=1)).replace(day=1)
    return months


def plan_symbol(
    market: Market,
    symbol: str,
    start: date,
    end: date,
    granularity: Literal["daily", "monthly", "auto"],
    published_daily: set[date],
    published_monthly: set[date],
    lake: dict[date, SourceRef],
    dataset: str = "trades",
) -> Plan:
    """Choose the archives for one symbol.

    - daily: one archive per requested day.
    - monthly: the monthly archive of every month touching the range (whole months).
    - auto: monthly for months lying wholly inside the range and published as such,
      daily for every other day; monthly for a dataset published monthly only, daily for one
      published daily only.
    A day already in the lake from the other granularity keeps that source; its archive
    is still planned when it is of the chosen kind, so a re-published checksum is noticed.
    Days after the dataset's publication ended (`dataset_ids.PUBLICATION_ENDED`) are neither
    planned nor missing: `ended` counts them.
    """
    plan = Plan()
    last_published = publication_end(dataset, market)
    if last_published is not None and end > last_published:
        after = max(start, last_published + timedelta(days=1))
        plan.ended = (last_published, (end - after).days + 1)
        end = last_published
        if start > end:
            return plan
    if granularity == "auto" and monthly_only(dataset):
        granularity = "monthly"  # nothing daily to choose from: whole months, and a missing one named as such
    elif granularity == "auto" and daily_only(dataset):
        granularity = "daily"
    for month in months_touching(start, end):
        m_first, m_last = month, month_end(month)
        req_days = days_between(max(start, m_first), min(end, m_last))
        whole = start <= m_first and m_last <= end
        daily_in_lake = any(lake[d].granularity == "daily" for d in days_between(m_first, m_last) if d in lake)
        use_monthly = granularity == "monthly" or (
            granularity == "auto" and whole and month in published_monthly and not daily_in_lake
        )
        if use_monthly and month in published_monthly and daily_in_lake:
            # An explicit monthly request over days ingested from daily archives: keep the dailies.
            use_monthly = False
            note = "monthly archive not used: days already in the lake from daily archives"
        else:
            note = ""
        if use_monthly:
            if month in published_monthly:
                plan.archives.append(ArchiveSpec(market, symbol, "monthly", month, dataset))
            else:
                plan.missing.extend(MissingDay(market, symbol, d, "monthly archive not published", dataset)
                                    for d in req_days)
            continue
        for day in req_days:
            held = lake.get(day)
            if held is not None and held.granularity == "monthly":
                continue  # provided by the monthly archive already in the lake
            if day in published_daily:
                plan.archives.append(ArchiveSpec(market, symbol, "daily", day, dataset))
            else:
                reason = "daily archive not published"
                plan.missing.append(MissingDay(market, symbol, day, f"{reason}; {note}" if note else reason, dataset))
    return plan


def counterpart_specs(
    market: Market,
    symbol: str,
    start: date,
    end: date,
    published_daily: set[date],
    published_monthly: set[date],
    planned: list[ArchiveSpec],
    dataset: str = "trades",
) -> list[ArchiveSpec]:
    """The other source of the requested days, for the audit: never landed, only compared.

    For every month touching [start, end] that is published both monthly and daily (for at
    least one requested day), both sources of the requested days, less what `planned` fetches
    already: the monthly archive of days taken daily, the daily archives of a month taken
    monthly. Monthly and daily archives of the same days disagree at times
    (binance-public-data#475); the audit says where.
    """
    have = set(planned)
    out: list[ArchiveSpec] = []
    for month in months_touching(start, end):
        if month not in published_monthly:
            continue
        days = [d for d in days_between(max(start, month), min(end, month_end(month))) if d in published_daily]
        if not days:
            continue
        both = [ArchiveSpec(market, symbol, "monthly", month, dataset),
                *(ArchiveSpec(market, symbol, "daily", d, dataset) for d in days)]
        out.extend(s for s in both if s not in have)
    return out
