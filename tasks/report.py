"""What a run did, per archive, for the CLI, the Prefect artifacts and the exit status."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from tasks.cleanup import CleanupResult
from tasks.compact import CompactionResult
from tasks.features import FeatureResult
from tasks.gaps import GapReport
from tasks.plan import MissingDay
from tasks.repair import RepairResult

Status = Literal["ingested", "cached", "downloaded", "missing", "refused", "failed"]
FAILED_STATUSES = ("refused", "failed")


@dataclass
class ArchiveOutcome:
    """One row of the run's table: an archive (or a refused listing key) and what became of it."""

    archive: str
    status: Status
    rows: int | None = None
    bytes: int | None = None
    seconds: float = 0.0
    detail: str = ""


@dataclass
class GapNote:
    """A trade-id gap or overlap found by validation (gaps are real in Binance data, #363)."""

    market: str
    symbol: str
    where: str
    after_id: int
    before_id: int
    missing_ids: int


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
        return [o for o in self.outcomes if o.status in FAILED_STATUSES]

    @property
    def ok(self) -> bool:
        unrepaired = any(r.unrepaired for r in self.repairs)  # a damaged lake file left as it is
        return not self.failures and not self.validation_errors and not self.upkeep_errors and not unrepaired

    def refuse(self, archive: str, detail: str) -> None:
        """Mark an archive refused after the fact (the merge quarantined it): its rows are not in the lake."""
        for o in self.outcomes:
            if o.archive == archive:
                o.status, o.rows, o.detail = "refused", None, detail
                return
        self.outcomes.append(ArchiveOutcome(archive, "refused", detail=detail))

    def counts(self) -> dict[str, int]:
        """Archives per status."""
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out

    def table(self) -> list[dict[str, object]]:
        """Rows for a Prefect table artifact."""
        return [
            {
                "archive": o.archive,
                "status": o.status,
                "rows": o.rows,
                "bytes": o.bytes,
                "seconds": round(o.seconds, 3),
                "detail": o.detail,
            }
            for o in self.outcomes
        ]

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
        self.cleanups.extend(other.cleanups)
        self.features.extend(other.features)
        self.repairs.extend(other.repairs)
        self.upkeep_errors.extend(other.upkeep_errors)
        self.deferred_merges.update(other.deferred_merges)
        self.notes.extend(other.notes)
        for name, (a, b) in other.stages.items():
            mine = self.stages.get(name)
            self.stages[name] = (a, b) if mine is None else (min(mine[0], a), max(mine[1], b))

    def compaction_table(self) -> list[dict[str, object]]:
        """Rows for the lake-files artifact."""
        return [
            {"symbol": f"{c.market}/{c.symbol}", "written": ", ".join(c.files_written), "rows": c.rows_written,
             "bytes": c.bytes_written, "removed": len(c.files_removed), "merged archives": len(c.staged_merged),
             "re-published": ", ".join(c.replaced_archives), "seconds": round(c.seconds, 3)}
            for c in self.compactions
        ]

    def gap_table(self) -> list[dict[str, object]]:
        """Rows for the lake-gaps artifact."""
        return [
            {"symbol": f"{g.market}/{g.symbol}", "days": f"{g.start}..{g.end}", "in lake": g.days_in_lake,
             "not published": len(g.not_published), "refused": len(g.refused), "not in lake": len(g.not_in_lake),
             "no trades": len(g.no_trades), "days with id gaps": len(g.id_gaps_inside),
             "gaps between days": len(g.id_gaps_between), "truncated?": len(g.truncated)}
            for g in self.gap_reports
        ]

    def summary(self) -> str:
        """A plain-text account for the terminal and the run's final markdown."""
        lines = []
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items())) or "no archives"
        rows = sum(o.rows or 0 for o in self.outcomes if o.status in ("ingested", "cached"))
        lines.append(f"archives: {counts}; rows in the lake for them: {rows:,}")
        lines.extend(self.notes)
        if self.missing:
            lines.append(f"missing days (not published): {len(self.missing)}")
            for m in self.missing[:50]:
                lines.append(f"  {m.market} {m.symbol} {m.day}: {m.reason}")
            if len(self.missing) > 50:
                lines.append(f"  ... and {len(self.missing) - 50} more")
        if self.validated_files:
            at_write = f" ({self.validated_at_write} as the merge wrote them)" if self.validated_at_write else ""
            lines.append(f"validated lake files: {self.validated_files}{at_write}; trade-id gaps: {len(self.gaps)}")
            for g in self.gaps[:20]:
                lines.append(f"  gap {g.market} {g.symbol} {g.where}: ids {g.after_id} -> {g.before_id} "
                             f"({g.missing_ids} missing)")
            if len(self.gaps) > 20:
                lines.append(f"  ... and {len(self.gaps) - 20} more")
        for rr in self.repairs:
            lines.extend(rr.lines())
        for c in self.compactions:
            if c.files_written or c.files_removed:
                lines.append(f"lake {c.market}/{c.symbol}: wrote {', '.join(c.files_written) or 'nothing'} "
                             f"({c.rows_written:,} rows, {c.bytes_written:,} bytes), removed {len(c.files_removed)} "
                             f"files, merged {len(c.staged_merged)} archives")
            for a in c.replaced_archives:
                lines.append(f"  re-published, re-ingested: {a}")
            if c.staged_dropped:
                lines.append(f"lake {c.market}/{c.symbol}: {len(c.staged_dropped)} staged archives were already in "
                             "the lake (left by a killed run): dropped from staging, not merged twice")
            if c.leftover:
                lines.append(f"warning: lake {c.market}/{c.symbol}: {c.leftover}")
        for gr in self.gap_reports:
            lines.extend(gr.summary_lines())
        for fr in self.features:
            why = f" ({fr.reason})" if fr.reason else ""
            lines.append(f"features {fr.feature} {fr.market}/{fr.symbol}: {fr.mode}, {fr.trades:,} trades -> "
                         f"{fr.bars:,} bars ({fr.parts} parts){why}")
        for cl in self.cleanups:
            lines.append(f"cleanup {cl.market}/{cl.symbol}: removed {len(cl.removed)} archives, "
                         f"{cl.bytes_freed:,} bytes freed; kept {len(cl.kept)}")
        if self.stages:
            lines.append(f"stages (wall clock, they overlap): {self.timeline()}")
        for err in self.validation_errors:
            lines.append(f"VALIDATION FAILED {err}")
        for err in self.upkeep_errors:
            lines.append(f"FAILED {err}")
        for f in self.failures:
            lines.append(f"{f.status.upper()} {f.archive}: {f.detail}")
        return "\n".join(lines)


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
