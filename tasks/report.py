"""What a run did, per archive, for the CLI, the Prefect artifacts and the exit status."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from tasks.audit.between_datasets import AuditReport
from tasks.datasets import dataset
from tasks.features.incremental import FeatureResult
from tasks.labels import day_runs
from tasks.lake.cleanup import CleanupResult
from tasks.lake.compact import CompactionResult
from tasks.lake.gaps import GapReport
from tasks.lake.repair import RepairResult
from tasks.source.plan import MissingDay
from tasks.units import plural
from tasks.utc import micros_to_datetime

Status = Literal["ingested", "cached", "downloaded", "missing", "refused", "failed"]
FAILED_STATUSES = ("refused", "failed")
#: Where an archive's rows are at the end of the run: in the lake before the run ("lake"), put
#: into the lake by this run's merge ("merged"), converted but not merged ("staging"), or only
#: downloaded and verified ("downloads"); "" when not set (then rows counted are in the lake).
Where = Literal["", "lake", "merged", "staging", "downloads"]


@dataclass
class ArchiveOutcome:
    """One row of the run's table: an archive (or a refused listing key) and what became of it."""

    archive: str
    status: Status
    rows: int | None = None
    bytes: int | None = None
    seconds: float = 0.0
    detail: str = ""
    #: The error's kind for a refused or failed archive (`PipelineError.kind`, e.g. "checksum mismatch").
    kind: str = ""
    #: For a refusal already known (the same archive and published checksum refused before,
    #: tasks.source.refusals): the ISO time of its first refusal. Known refusals fail the run only with --strict.
    known_since: str | None = None
    where: Where = ""

    @property
    def since_day(self) -> str:
        """The day (UTC) a known refusal was first made, `YYYY-MM-DD`; "" if not known."""
        return (self.known_since or "")[:10]

    @property
    def known(self) -> bool:
        """A refusal already known from an earlier run (see `known_since`)."""
        return self.status == "refused" and self.known_since is not None


@dataclass
class GapNote:
    """A trade-id gap or overlap found by validation (gaps are real in Binance data, #363)."""

    market: str
    symbol: str
    where: str
    after_id: int
    before_id: int
    missing_ids: int
    dataset: str = "trades"


@dataclass
class PipelineReport:
    """Everything a run reports."""

    outcomes: list[ArchiveOutcome] = field(default_factory=list)
    missing: list[MissingDay] = field(default_factory=list)
    gaps: list[GapNote] = field(default_factory=list)
    validation_errors: list[str] = field(default_factory=list)
    validated_files: int = 0
    validated_at_write: int = 0  # of those, validated in full by this run's merge as it wrote them
    compactions: list[CompactionResult] = field(default_factory=list)
    gap_reports: list[GapReport] = field(default_factory=list)
    audits: list[AuditReport] = field(default_factory=list)  # datasets of a symbol checked against each other
    cleanups: list[CleanupResult] = field(default_factory=list)
    features: list[FeatureResult] = field(default_factory=list)
    repairs: list[RepairResult] = field(default_factory=list)  # damaged lake files rebuilt, or not (validate step)
    upkeep_errors: list[str] = field(default_factory=list)  # merge, optimize, gaps or cleanup refused
    #: Symbols whose merge met a damaged lake file and waits for the validate step's repair:
    #: symbol -> the merge's error, which becomes an upkeep error unless the repair succeeds.
    deferred_merges: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the calling flow wants said (e.g. late days)
    #: Wall-clock span of each stage, (first start, last end) in epoch seconds. Stages overlap:
    #: conversion starts while downloads run, and validate, gaps and features run together
    #: (their ends are when the flow collected them, in that order, so gaps and features
    #: never end before validate).
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Known refusals fail the run too (`--strict`); otherwise they are reported and the run goes on.
    strict: bool = False

    def stage_started(self, name: str) -> None:
        """Mark a stage's start (the first mark counts)."""
        now = time.time()
        self.stages.setdefault(name, (now, now))

    def stage_ended(self, name: str) -> None:
        """Mark a stage's end (the last mark counts)."""
        now = time.time()
        start = self.stages.get(name, (now, now))[0]
        self.stages[name] = (start, now)

    def stage_seconds(self, name: str) -> float | None:
        """How long a stage ran, from its first start to its last end; None if it did not run."""
        span = self.stages.get(name)
        return None if span is None else span[1] - span[0]

    def timeline(self) -> str:
        """`stage start-end s` for each stage, in seconds from the first stage's start."""
        if not self.stages:
            return ""
        origin = min(a for a, _ in self.stages.values())
        return ", ".join(f"{name} {a - origin:.2f}-{b - origin:.2f} s"
                         for name, (a, b) in sorted(self.stages.items(), key=lambda kv: kv[1]))

    @property
    def failures(self) -> list[ArchiveOutcome]:
        """Refused or failed archives that fail the run: all but the known refusals, unless strict."""
        return [o for o in self.outcomes if o.status in FAILED_STATUSES and (self.strict or not o.known)]

    @property
    def known_refusals(self) -> list[ArchiveOutcome]:
        """Archives refused again exactly as an earlier run refused them (same published checksum)."""
        return [o for o in self.outcomes if o.known]

    @property
    def not_ingested(self) -> list[ArchiveOutcome]:
        """Every refused or failed archive, known refusals included."""
        return [o for o in self.outcomes if o.status in FAILED_STATUSES]

    @property
    def ok(self) -> bool:
        unrepaired = any(r.unrepaired for r in self.repairs)  # a damaged lake file left as it is
        return not self.failures and not self.validation_errors and not self.upkeep_errors and not unrepaired

    def refuse(self, archive: str, detail: str, kind: str = "") -> None:
        """Mark an archive refused after the fact (the merge quarantined it): its rows are not in the lake."""
        for o in self.outcomes:
            if o.archive == archive:
                o.status, o.rows, o.detail, o.kind, o.where = "refused", None, detail, kind, ""
                return
        self.outcomes.append(ArchiveOutcome(archive, "refused", detail=detail, kind=kind))

    def landed(self, archives: Sequence[str], where: Where) -> None:
        """Say where the rows of these archives are now (the merge put them into the lake, or found them there)."""
        keys = set(archives)
        for o in self.outcomes:
            if o.archive in keys and o.status in ("ingested", "cached"):
                o.where = where

    def counts(self) -> dict[str, int]:
        """Archives per status."""
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out

    def merge(self, other: PipelineReport) -> None:
        """Add another run's findings to this report (the daily update runs one per window)."""
        self.outcomes.extend(other.outcomes)
        self.missing.extend(other.missing)
        self.gaps.extend(other.gaps)
        self.validation_errors.extend(other.validation_errors)
        self.validated_files += other.validated_files
        self.validated_at_write += other.validated_at_write
        self.compactions.extend(other.compactions)
        self.gap_reports.extend(other.gap_reports)
        self.audits.extend(other.audits)
        self.cleanups.extend(other.cleanups)
        self.features.extend(other.features)
        self.repairs.extend(other.repairs)
        self.upkeep_errors.extend(other.upkeep_errors)
        self.deferred_merges.update(other.deferred_merges)
        self.notes.extend(other.notes)
        self.strict = self.strict or other.strict
        for name, (a, b) in other.stages.items():
            mine = self.stages.get(name)
            self.stages[name] = (a, b) if mine is None else (min(mine[0], a), max(mine[1], b))

    def headline(self) -> str:
        """One line on the archives: where their rows are now, and how many were refused or failed.

        True after any subset of steps: rows are "in the lake" only once merged; converted
        archives not merged are "waiting in staging"; downloads alone are "downloaded and verified".
        """
        if not self.outcomes:
            return "archives: none"
        groups: dict[str, list[ArchiveOutcome]] = {}
        for o in self.outcomes:
            groups.setdefault(_place(o), []).append(o)
        parts = []
        for place, label in _PLACES:
            got = groups.get(place, [])
            if not got:
                continue
            rows = sum(o.rows or 0 for o in got)
            with_rows = place in ("merged", "lake", "staging") and rows
            parts.append(f"{len(got)} {label}" + (f" ({rows:,} rows)" if with_rows else ""))
        return "archives: " + ", ".join(parts)

    def problem_lines(self) -> list[str]:
        """What failed or was refused, first the new (they fail the run), then the known refusals."""
        lines = [f"{f.status.upper()} {f.archive}: {f.detail}"
                 + (f" (known since {f.since_day}; --strict fails the run on it)" if f.known else "")
                 for f in self.failures]
        if not self.strict:  # else they are among the failures above
            lines.extend(f"refused again, known since {o.since_day}: {o.archive}: {o.detail}"
                         for o in self.known_refusals)
        lines.extend(f"VALIDATION FAILED {err}" for err in self.validation_errors)
        lines.extend(f"FAILED {err}" for err in self.upkeep_errors)
        for rr in self.repairs:
            lines.extend(u.line(rr.market, rr.symbol) for u in rr.unrepaired)
        return lines

    def missing_lines(self, limit: int = 50) -> list[str]:
        """The requested days no archive provides, as runs of consecutive days per market, symbol and reason."""
        if not self.missing:
            return []
        days: dict[tuple[str, str, str], set[date]] = {}
        for m in self.missing:  # trades: `spot BTCUSDT`; another dataset: `spot BTCUSDT aggTrades`
            symbol = m.symbol if m.dataset == "trades" else f"{m.symbol} {m.dataset}"
            days.setdefault((m.market, symbol, m.reason), set()).add(m.day)
        runs = [(market, symbol, first, last, reason)
                for (market, symbol, reason), got in days.items() for first, last in day_runs(got)]
        runs.sort(key=lambda r: (r[0], r[1], r[2]))
        total = sum(len(v) for v in days.values())
        lines = [f"missing days (no archive for them): {total}"]
        for market, symbol, first, last, reason in runs[:limit]:
            n = (last - first).days + 1
            span = str(first) if first == last else f"{first}..{last}"
            lines.append(f"  {market} {symbol} {span}: {n} day{'s' if n > 1 else ''}, {reason}")
        if len(runs) > limit:
            lines.append(f"  ... and {len(runs) - limit} more runs of days")
        return lines

    def summary(self) -> str:
        """A plain-text account for the terminal and the run's final markdown.

        In order: what failed or was refused (new, then known), what changed (archives, lake
        files, repairs, features, cleanup), the days missing as ranges, then the rest
        (validation, gap reports, the stages' timeline).
        """
        lines = self.problem_lines()
        lines.append(self.headline())
        lines.extend(self.notes)
        for rr in self.repairs:
            lines.extend(r.line(rr.market, rr.symbol) for r in rr.repaired)
            if rr.compaction is not None and rr.repaired:
                lines.append(f"  rebuilt as {', '.join(rr.compaction.files_written) or 'nothing'} "
                             f"({rr.compaction.rows_written:,} rows)")
        for c in self.compactions:
            if c.files_written or c.files_removed:
                lines.append(f"lake {c.market}/{c.symbol}: wrote {', '.join(c.files_written) or 'nothing'} "
                             f"({c.rows_written:,} rows, {c.bytes_written:,} bytes), removed {len(c.files_removed)} "
                             f"files, merged {_n(len(c.staged_merged), 'archive')}")
            for a in c.replaced_archives:
                lines.append(f"  re-published, re-ingested: {a}")
            if c.staged_dropped:
                lines.append(f"lake {c.market}/{c.symbol}: {len(c.staged_dropped)} staged archives were already in "
                             "the lake (left by a killed run): dropped from staging, not merged twice")
            if c.leftover:
                lines.append(f"warning: lake {c.market}/{c.symbol}: {c.leftover}")
        lines.extend(feature_line(fr) for fr in self.features)
        for cl in self.cleanups:
            lines.append(f"cleanup {cl.market}/{cl.symbol}: removed {len(cl.removed)} archives, "
                         f"{cl.bytes_freed:,} bytes freed; kept {len(cl.kept)}")
        lines.extend(self.missing_lines())
        if self.validated_files:
            at_write = f" ({self.validated_at_write} as the merge wrote them)" if self.validated_at_write else ""
            lines.append(f"validated lake files: {self.validated_files}{at_write}; gaps: {len(self.gaps)}")
            for g in self.gaps[:20]:
                if dataset(g.dataset).continuity == "interval":  # open times (µs), and missing intervals
                    after, before = (micros_to_datetime(x).isoformat() for x in (g.after_id, g.before_id))
                    what = "klines" if dataset(g.dataset).interval is not None else "rows"
                    lines.append(f"  gap {g.market} {g.symbol} {g.where}: {what} {after} -> {before} "
                                 f"({g.missing_ids} intervals missing)")
                    continue
                lines.append(f"  gap {g.market} {g.symbol} {g.where}: ids {g.after_id} -> {g.before_id} "
                             f"({g.missing_ids} missing)")
            if len(self.gaps) > 20:
                lines.append(f"  ... and {len(self.gaps) - 20} more")
        for gr in self.gap_reports:
            lines.extend(gr.summary_lines())
        for audit in self.audits:
            lines.extend(audit.summary_lines())
        if self.stages:
            lines.append(f"stages (wall clock, they overlap): {self.timeline()}")
        return "\n".join(lines)

    def log_line(self) -> str:
        """The one line the flow logs at its end: the headline and counts of problems (details: the artifact)."""
        problems = []
        if self.failures:
            problems.append(f"{len(self.failures)} refused or failed")
        if self.known_refusals and not self.strict:
            problems.append(f"{len(self.known_refusals)} refused again (known)")
        errors = len(self.validation_errors) + len(self.upkeep_errors)
        if errors:
            problems.append(f"{errors} upkeep or validation errors")
        if self.missing:
            problems.append(f"{len(self.missing)} days missing")
        tail = f"; {', '.join(problems)}" if problems else ""
        archives = self.headline().removeprefix("archives: ")
        return f"run done, archives: {archives}{tail} (details: the run-summary artifact)"


#: Headline groups, in the order they are told.
_PLACES = (
    ("merged", "landed in the lake"),
    ("lake", "already in the lake"),
    ("staging", "converted, waiting in staging"),
    ("downloads", "downloaded and verified"),
    ("kept", "already downloaded and verified"),
    ("missing", "listed but not published (404)"),
    ("refused", "refused"),
    ("known", "refused again (known)"),
    ("failed", "failed"),
)


def _place(o: ArchiveOutcome) -> str:
    if o.known:
        return "known"
    if o.status in ("refused", "failed", "missing"):
        return o.status
    if o.status == "downloaded":
        return "downloads"
    if o.where == "downloads":  # a cached download: verified by an earlier run, not fetched again
        return "kept"
    if o.where:
        return o.where
    return "merged" if o.status == "ingested" else "lake"  # a report built without `where`


def _n(count: int, noun: str) -> str:
    return plural(count, noun)


def feature_line(fr: FeatureResult) -> str:
    """One feature's line in the summary, saying what happened to its bars in this run."""
    head = f"features {fr.feature} {fr.market}/{fr.symbol}: "
    if fr.mode == "up to date":
        how = fr.reason or "no new trades in the lake"
        return head + f"up to date, {how} ({plural(fr.parts, 'part')})"
    why = f" ({fr.reason})" if fr.reason else ""
    new = "new " if fr.mode == "extended" else ""
    return head + f"{fr.mode}, {fr.trades:,} {new}trades -> {fr.bars:,} bars ({plural(fr.parts, 'part')}){why}"


class RunFailed(Exception):
    """Raised at the end of a run that refused or failed archives; carries the whole report."""

    def __init__(self, report: PipelineReport) -> None:
        parts = []
        if report.failures:
            names = "; ".join(f"{f.archive} ({f.detail})" for f in report.failures)
            parts.append(f"{len(report.failures)} archive(s) not ingested: {names}")
        if report.upkeep_errors:
            parts.append("; ".join(report.upkeep_errors))
        if report.validation_errors:
            parts.append(f"{len(report.validation_errors)} lake file(s) failed validation: "
                         + "; ".join(report.validation_errors))
        unrepaired = [u.file for r in report.repairs for u in r.unrepaired]
        if unrepaired:
            parts.append(f"{len(unrepaired)} damaged lake file(s) not repaired: {', '.join(unrepaired)}")
        super().__init__(" | ".join(parts) or "run failed")
        self.report = report

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.report,))
