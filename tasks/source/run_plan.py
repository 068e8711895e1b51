"""A run's plan, before anything is fetched: the archives per symbol and granularity, the bytes
to download, the requested days not published, and what the lake already holds.

`plan_run` is what a real run plans from (flows/full_pipeline.py), and `RunPlan.render` the
`plan:` block it prints first; `dry_run` computes the same plan without Prefect, without a
server and without writing anything (the data dir is not even created), then prints it.
The published checksums are not fetched for a plan: an archive already in the lake or
downloaded earlier is counted as such by its name, as a real run does when its checksum is
unchanged (a re-published one is fetched again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TextIO

from tasks.datadir import check_data_dir
from tasks.dataset_ids import PUBLICATION_ENDED_WHY
from tasks.labels import day_runs
from tasks.lake.inventory import coverage, lake_inventory, staged_inventory
from tasks.lake.repair import restore_specs
from tasks.settings import Settings
from tasks.source.archive_spec import ArchiveSpec, Granularity, parse_archive_name
from tasks.source.download import local_archives, verified_download
from tasks.source.http import HttpOptions
from tasks.source.listing import Discovery, discover
from tasks.source.plan import MissingDay, counterpart_specs, plan_symbol
from tasks.units import format_bytes

#: Ranges of days not published shown per symbol; the rest are counted.
MAX_RANGES = 12


@dataclass
class SymbolPlan:
    """One symbol's part of the plan."""

    symbol: str
    not_listed: str | None = None  # the listing does not know the symbol (a typo?): what to say; nothing planned
    archives: list[ArchiveSpec] = field(default_factory=list)  # planned, each day from one archive
    sizes: dict[ArchiveSpec, int] = field(default_factory=dict)  # listed zip sizes (every listed archive)
    missing: list[MissingDay] = field(default_factory=list)
    unlisted: list[Discovery] = field(default_factory=list)  # folders whose listing failed: nothing planned
    rejected: list[tuple[str, str]] = field(default_factory=list)  # listing keys refused, and why
    restoring: list[ArchiveSpec] = field(default_factory=list)  # fetched again to repair a damaged lake file
    counterparts: list[ArchiveSpec] = field(default_factory=list)  # the other source of the days, for the audit
    in_lake: set[ArchiveSpec] = field(default_factory=set)  # planned archives the lake holds already
    downloaded: set[ArchiveSpec] = field(default_factory=set)  # planned archives downloaded earlier, not in the lake
    lake_days: int = 0  # requested days the lake holds
    lake_rows: int = 0  # rows of the lake's archives that hold them
    lake_span: tuple[date, date] | None = None  # first and last day of the whole lake of the symbol
    staged: int = 0  # converted archives waiting in staging to be merged
    ended: tuple[date, int] | None = None  # the dataset's last published day, and the days asked after it

    @property
    def fetch(self) -> list[ArchiveSpec]:
        """Every archive a run with the download step asks the archive for."""
        extra = [s for s in (*self.restoring, *self.counterparts) if s not in self.archives]
        return self.archives + list(dict.fromkeys(extra))

    @property
    def to_download(self) -> list[ArchiveSpec]:
        """The archives whose bytes a run downloads (not in the lake, not downloaded before)."""
        return [s for s in self.fetch if s not in self.in_lake and s not in self.downloaded]

    def bytes_of(self, specs: Iterable[ArchiveSpec]) -> int:
        return sum(self.sizes.get(s, 0) for s in specs)


@dataclass
class RunPlan:
    """The whole run's plan, per symbol."""

    market: str
    start: date
    end: date
    granularity: str
    downloading: bool
    symbols: list[SymbolPlan] = field(default_factory=list)
    dataset: str = "trades"

    @property
    def archives(self) -> list[ArchiveSpec]:
        return [s for p in self.symbols for s in (p.fetch if self.downloading else p.archives)]

    @property
    def missing(self) -> list[MissingDay]:
        return [m for p in self.symbols for m in p.missing]

    def render(self) -> str:
        """The `plan:` block: a line per symbol and granularity, days not published as ranges, the lake."""
        days = (self.end - self.start).days + 1
        absent = "not published" if self.downloading else "not downloaded"
        symbols = count(len(self.symbols), "symbol")
        lines = [f"plan: {self.market}, {symbols}, {self.start}..{self.end} ({count(days, 'day')}), "
                 f"granularity {self.granularity}"]
        for p in self.symbols:
            name = p.symbol
            if p.not_listed is not None:
                lines.append(f"  {name}: NOT LISTED, nothing of it is planned: {p.not_listed}")
                continue
            for d in p.unlisted:
                lost = ("nothing of it is planned" if self.granularity in ("auto", d.granularity)
                        else "its days are planned, the audit of monthly against daily is not done")
                lines.append(f"  {name} {d.granularity}: LISTING FAILED, {lost}: {d.error}")
            for key, reason in p.rejected:
                lines.append(f"  {name}: refused listing key {key}: {reason}")
            specs = p.fetch if self.downloading else p.archives
            for g in ("monthly", "daily"):
                mine = [s for s in specs if s.granularity == g]
                if not mine:
                    continue
                first, last = min(s.period for s in mine), max(s.period for s in mine)
                span = f"{first:%Y-%m}..{last:%Y-%m}" if g == "monthly" else f"{first}..{last}"
                parts = [f"{count(len(mine), 'archive')} ({span}), {format_bytes(p.bytes_of(mine))}"]
                held = len([s for s in mine if s in p.in_lake])
                earlier = len([s for s in mine if s in p.downloaded])
                if held:
                    parts.append(f"{held:,} in the lake already")
                if earlier:
                    parts.append(f"{earlier:,} downloaded earlier")
                if self.downloading:
                    todo = [s for s in mine if s not in p.in_lake and s not in p.downloaded]
                    parts.append(f"to download: {len(todo):,}, {format_bytes(p.bytes_of(todo))}")
                lines.append(f"  {name} {g}: " + "; ".join(parts))
            if p.counterparts and self.downloading:
                lines.append(f"  {name}: of these, {count(len(p.counterparts), 'archive')} "
                             f"({format_bytes(p.bytes_of(p.counterparts))}) only for the audit of monthly against "
                             "daily: downloaded and compared, never landed")
            if not specs and not p.unlisted:
                lines.append(f"  {name}: no archive to fetch")
            if p.ended is not None:
                lines.append(f"  {name}: {ended_text(self.dataset, self.market, *p.ended)}")
            if p.missing:
                ranges = day_runs(m.day for m in p.missing)
                shown = ", ".join(_range(a, b) for a, b in ranges[:MAX_RANGES])
                more = f", and {len(ranges) - MAX_RANGES} more ranges" if len(ranges) > MAX_RANGES else ""
                lines.append(f"  {name}: {absent}: {count(len(p.missing), 'day')}, {shown}{more}")
            if p.lake_span is None:
                lines.append(f"  {name}: in the lake: nothing yet")
            else:
                lines.append(f"  {name}: in the lake: {p.lake_days:,} of the {days:,} days, {p.lake_rows:,} rows "
                             f"(it holds {p.lake_span[0]}..{p.lake_span[1]})")
            if p.staged:
                lines.append(f"  {name}: {count(p.staged, 'converted archive')} waiting in staging to be merged")
        if self.downloading:
            todo_all = [(p, s) for p in self.symbols for s in p.to_download]
            head = (f"to download: {count(len(todo_all), 'archive')}, "
                    f"{_size(sum(p.sizes.get(s, 0) for p, s in todo_all))}; planned: {len(self.archives):,}")
        else:
            head = f"to convert: {count(len(self.archives), 'archive')} downloaded earlier (no download step)"
        lines.append(f"  {head}; {absent}: {count(len(self.missing), 'day')}")
        return "\n".join(lines)


def ended_text(dataset_id: str, market: str, last: date, days_after: int) -> str:
    """`publication of bookTicker for um ended 2024-03-31 (binance-public-data#334, ...): 3 days after it not asked
    for`."""
    why = PUBLICATION_ENDED_WHY.get(dataset_id)
    return (f"publication of {dataset_id} for {market} ended {last}{f' ({why})' if why else ''}: "
            f"{count(days_after, 'day')} after it not asked for")


def _size(n: int) -> str:
    """`1.2 MB (1,234,567 bytes)`."""
    return f"{format_bytes(n)} ({n:,} bytes)" if n >= 1000 else f"{n:,} bytes"


def count(n: int, noun: str) -> str:
    """`1 archive`, `3 archives`, `1,024 days`."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _range(a: date, b: date) -> str:
    n = (b - a).days + 1
    return f"{a}" if a == b else f"{a}..{b} ({n} days)"


def http_options(settings: Settings) -> HttpOptions:
    """The HTTP bounds of a run (timeouts, retries, rates, sizes) from its settings."""
    return HttpOptions(
        settings.connect_timeout, settings.read_timeout, settings.retries, settings.retry_base_delay,
        min_rate=settings.min_download_rate, deadline_floor=settings.download_deadline_floor_s,
        size_margin=settings.download_size_margin_bytes, retry_after_cap=settings.retry_after_cap_s,
        cross_host_redirects=settings.allow_cross_host_redirects,
    )


def granularities(settings: Settings) -> list[Granularity]:
    """The archive kinds a run lists: both for `auto`, and for the audit of monthly against daily."""
    if settings.granularity == "auto" or (settings.audit_sources and "audit" in settings.steps):
        return ["daily", "monthly"]
    return [settings.granularity]


def local_discoveries(settings: Settings, data_dir: Path) -> list[Discovery]:
    """What was downloaded before, for runs without the download step."""
    found = []
    for symbol in settings.symbols:
        for g in granularities(settings):
            probe = ArchiveSpec(settings.market, symbol, g, settings.start.replace(day=1), settings.dataset)
            specs = {}
            for path in local_archives(data_dir, probe.folder_key):
                spec = parse_archive_name(settings.market, g, path.name, settings.dataset)
                if spec is not None and spec.symbol == symbol:
                    specs[spec] = path.stat().st_size
            found.append(Discovery(settings.market, symbol, g, specs, dataset=settings.dataset))
    return found


def plan_run(settings: Settings, discoveries: Sequence[Discovery], data_dir: Path,
             not_listed: Mapping[str, str] | None = None) -> RunPlan:
    """The plan of a run from what the listing publishes (`discoveries`) and what the data dir holds.

    `not_listed`: symbols the listing does not know, and what to say of them; nothing of them
    is planned. Only reads the data dir (file names and Parquet footers), which need not exist.
    """
    downloading = "download" in settings.steps
    planned_from = {"daily", "monthly"} if settings.granularity == "auto" else {settings.granularity}
    plan = RunPlan(settings.market, settings.start, settings.end, settings.granularity, downloading,
                   dataset=settings.dataset)
    for symbol in settings.symbols:
        p = SymbolPlan(symbol, not_listed=(not_listed or {}).get(symbol))
        plan.symbols.append(p)
        if p.not_listed is not None:
            continue
        mine = [d for d in discoveries if d.symbol == symbol]
        p.unlisted = [d for d in mine if d.error]
        if any(d.granularity in planned_from for d in p.unlisted):
            # Its listing could not be read: nothing of this symbol is planned (its days are not "not published").
            continue
        # A failed listing of the other granularity, listed for the audit only, costs the audit of
        # monthly against daily (no counterparts), not the symbol's days.
        for d in mine:
            p.sizes.update(d.archives)
            p.rejected.extend(d.rejected)
        daily = set().union(*(d.periods() for d in mine if d.granularity == "daily"))
        monthly = set().union(*(d.periods() for d in mine if d.granularity == "monthly"))
        entries = lake_inventory(data_dir, settings.market, symbol, settings.dataset)
        held = coverage(entries)
        # The plan reads the granularity asked for (the other is listed for the audit only).
        asked = settings.granularity
        planned = plan_symbol(settings.market, symbol, settings.start, settings.end, asked,
                              daily if asked != "monthly" else set(), monthly if asked != "daily" else set(),
                              held, settings.dataset)
        p.archives, p.missing, p.ended = planned.archives, planned.missing, planned.ended
        if downloading and settings.dataset == "trades":  # repairs: trades only so far
            p.restoring = restore_specs(data_dir, settings.market, symbol)
        if downloading and settings.audit_sources and "audit" in settings.steps:
            p.counterparts = counterpart_specs(settings.market, symbol, settings.start, settings.end, daily, monthly,
                                               p.archives, settings.dataset)
        sources = {s.archive for e in entries for s in e.sources}
        p.in_lake = {s for s in p.fetch if s.key in sources}
        p.downloaded = {s for s in p.fetch if s not in p.in_lake and verified_download(s, data_dir)}
        requested = [d for d in held if settings.start <= d <= settings.end]
        p.lake_days = len(requested)
        p.lake_rows = sum(s.rows for s in {held[d] for d in requested})
        p.lake_span = (min(held), max(held)) if held else None
        p.staged = len(staged_inventory(data_dir, settings.market, symbol, settings.dataset))
    return plan


def dry_run(settings: Settings, out: TextIO) -> RunPlan:
    """Plan the run as a real one would and print the plan; nothing is written, the data dir is not created.

    Raises DataDirRefused for a data dir a real run would refuse.
    """
    data_dir = check_data_dir(settings.data_dir)
    if "download" in settings.steps:
        discoveries = asyncio.run(discover(settings.listing_url, settings.market, list(settings.symbols),
                                           granularities(settings), http_options(settings),
                                           settings.concurrency))
    else:
        discoveries = local_discoveries(settings, data_dir)
    plan = plan_run(settings, discoveries, data_dir)
    print(plan.render(), file=out, flush=True)
    return plan
