"""What a run did, per archive, for the CLI, the Prefect artifacts and the exit status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tasks.plan import MissingDay

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

    @property
    def failures(self) -> list[ArchiveOutcome]:
        return [o for o in self.outcomes if o.status in FAILED_STATUSES]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.validation_errors

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

    def summary(self) -> str:
        """A plain-text account for the terminal and the run's final markdown."""
        lines = []
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items())) or "no archives"
        rows = sum(o.rows or 0 for o in self.outcomes if o.status in ("ingested", "cached"))
        lines.append(f"archives: {counts}; rows in the lake for them: {rows:,}")
        if self.missing:
            lines.append(f"missing days (not published): {len(self.missing)}")
            for m in self.missing[:50]:
                lines.append(f"  {m.market} {m.symbol} {m.day}: {m.reason}")
            if len(self.missing) > 50:
                lines.append(f"  ... and {len(self.missing) - 50} more")
        if self.validated_files:
            lines.append(f"validated lake files: {self.validated_files}; trade-id gaps: {len(self.gaps)}")
            for g in self.gaps[:20]:
                lines.append(f"  gap {g.market} {g.symbol} {g.where}: ids {g.after_id} -> {g.before_id} "
                             f"({g.missing_ids} missing)")
            if len(self.gaps) > 20:
                lines.append(f"  ... and {len(self.gaps) - 20} more")
        for err in self.validation_errors:
            lines.append(f"VALIDATION FAILED {err}")
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
        if report.validation_errors:
            parts.append(f"{len(report.validation_errors)} lake file(s) failed validation: "
                         + "; ".join(report.validation_errors))
        super().__init__(" | ".join(parts) or "run failed")
        self.report = report

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.report,))
