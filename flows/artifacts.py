"""The run's Prefect artifacts, built from its PipelineReport: what the UI shows of a run.

Plain functions return markdown or table rows (tested without Prefect); `publish_artifacts`
creates the artifacts. `run-summary` opens with what changed in the lake and what failed or
was refused, then the gaps and the timings, as short tables. `lake-gaps` names the days
(runs of days as `first..last`) and the size of each gap in three short columns. Numbers
carry thousands separators: the UI prints table cells as given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date

from tasks.labels import day_runs, span, span_with_count
from tasks.lake.gaps import GapReport
from tasks.report import ArchiveOutcome, PipelineReport
from tasks.source.plan import MissingDay
from tasks.units import plural

#: At most this many rows in the lake-gaps table (then one row says how many more, and where they are).
MAX_GAP_ROWS = 200
#: At most this many rows in a run-summary table.
MAX_SUMMARY_ROWS = 20
#: Longest reason shown in a table cell (the archive table and the gap reports keep the whole text).
MAX_REASON = 160


def num(value: int | None) -> str:
    """`1,234,567`; empty for an unknown number."""
    return "" if value is None else f"{value:,}"


def secs(value: float) -> str:
    """Seconds, with two decimals and thousands separators: `1,234.50`."""
    return f"{value:,.2f}"


def short(text: str, limit: int = MAX_REASON) -> str:
    """One line of at most `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


#: An archive's URL inside a reason (`checksum mismatch: http://.../X.zip: sha256 ...`): the row names it already.
_ARCHIVE_URL = re.compile(r"https?://\S+?\.zip(?:\.CHECKSUM)?:?\s*")


def reason(detail: str, limit: int = MAX_REASON) -> str:
    """A refusal's reason for a table cell: without the archive's URL (the row names the archive), one line."""
    return short(_ARCHIVE_URL.sub("", detail), limit)


def archive_name(key: str) -> str:
    """`ETHUSDT-trades-2024-01-03` for an archive key; a listing key (a folder) stays as it is."""
    name = key.rsplit("/", 1)[-1]
    return name.removesuffix(".zip") if name else key


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], right: Sequence[int] = ()) -> str:
    """A GitHub-flavoured markdown table; columns whose index is in `right` are right-aligned (numbers)."""
    def cell(value: object) -> str:
        return " ".join(str(value).split()).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("--:" if i in right else "---" for i in range(len(headers))) + "|"]
    lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return "\n".join(lines)


def _capped(rows: list[list[object]], width: int, what: str) -> list[list[object]]:
    if len(rows) <= MAX_SUMMARY_ROWS:
        return rows
    more: list[object] = [f"… and {len(rows) - MAX_SUMMARY_ROWS:,} more {what}", *[""] * (width - 1)]
    return [*rows[:MAX_SUMMARY_ROWS], more]


# --- run-summary ------------------------------------------------------------------------------

#: Where the archives' rows are at the end of the run, in the order the summary tells them.
_PLACES = (
    ("merged", "archives landed in the lake (new rows)", True),
    ("staging", "archives converted, waiting in staging (not merged)", True),
    ("downloads", "archives downloaded and verified, not converted", False),
)


def _place(o: ArchiveOutcome) -> str | None:
    """`merged`, `staging`, `downloads` (this run's), `lake` or `kept` (earlier runs') for an archive; None for a
    problem."""
    if o.status == "downloaded":
        return "downloads"
    if o.status == "cached" and o.where == "downloads":  # verified by an earlier run, not fetched again
        return "kept"
    if o.status in ("ingested", "cached"):
        return o.where or ("merged" if o.status == "ingested" else "lake")  # "": a report built without it
    return None


def _by_place(report: PipelineReport) -> dict[str, list[int]]:
    """[archives, rows, bytes] per place (`_place`) of the run's archives."""
    by_place: dict[str, list[int]] = {}
    for o in report.outcomes:
        place = _place(o)
        if place is None:
            continue
        got = by_place.setdefault(place, [0, 0, 0])
        got[0] += 1
        got[1] += o.rows or 0
        got[2] += o.bytes or 0
    return by_place


def changes_rows(report: PipelineReport) -> list[list[object]]:
    """What changed, one row per kind: [what, count, rows, bytes] (only the kinds that happened)."""
    by_place = _by_place(report)
    out: list[list[object]] = []
    for place, label, with_rows in _PLACES:
        if place in by_place:
            n, rows, size = by_place[place]
            out.append([label, num(n), num(rows) if with_rows else "", num(size) if size else ""])
    written = [c for c in report.compactions if c.files_written]
    if written:
        out.append(["lake files written", num(sum(len(c.files_written) for c in written)),
                    num(sum(c.rows_written for c in written)), num(sum(c.bytes_written for c in written))])
    removed = sum(len(c.files_removed) for c in report.compactions)
    if removed:
        out.append(["lake files replaced", num(removed), "", ""])
    earlier = sum(len(c.staged_merged) for c in report.compactions) - by_place.get("merged", [0])[0]
    if earlier > 0:  # staged by an earlier run (e.g. one with --steps download,convert)
        out.append(["archives converted earlier, merged now", num(earlier), "", ""])
    repaired = sum(len(r.repaired) for r in report.repairs)
    if repaired:
        out.append(["damaged lake files rebuilt", num(repaired), "", ""])
    computed = [f for f in report.features if f.mode != "up to date"]
    if computed:
        out.append([f"feature runs that wrote bars ({', '.join(sorted({f.mode for f in computed}))})",
                    num(len(computed)), num(sum(f.bars for f in computed)) + " bars", ""])
    if report.cleanups:
        out.append(["downloaded archives deleted (cleanup)", num(sum(len(c.removed) for c in report.cleanups)), "",
                    num(sum(c.bytes_freed for c in report.cleanups)) + " freed"])
    return out


def problem_rows(report: PipelineReport) -> list[list[object]]:
    """What failed or was refused: [what, which, why]; what fails the run first, then the known refusals."""
    out: list[list[object]] = [[_status(o), archive_name(o.archive), reason(o.detail)] for o in report.failures]
    out.extend(["validation failed", "", short(err)] for err in report.validation_errors)
    for err in report.upkeep_errors:
        which, _, why = err.partition(": ")
        out.append(["failed", which, short(why or err)])
    for r in report.repairs:
        out.extend(["not repaired", f"{r.market}/{r.symbol}", short(u.line(r.market, r.symbol))]
                   for u in r.unrepaired)
    if not report.strict:  # else they are among the failures above
        out.extend([_status(o), archive_name(o.archive), reason(o.detail)] for o in report.known_refusals)
    return out


def _status(o: ArchiveOutcome) -> str:
    if not o.known:
        return o.status
    return f"refused again (known since {o.since_day})" if o.since_day else "refused again (known)"


def headline(report: PipelineReport) -> str:
    """The first line: did the run succeed, where the archives' rows are now, what failed."""
    counts = _by_place(report)
    said = {"merged": "landed in the lake", "staging": "converted, waiting in staging",
            "downloads": "downloaded and verified"}
    parts = [f"{plural(counts[p][0], 'archive')} {said[p]}"
             + (f" ({num(counts[p][1])} rows)" if p != "downloads" else "") for p in said if p in counts]
    if not parts:
        parts.append("no new archives")
    written = sum(len(c.files_written) for c in report.compactions)
    if written:
        parts.append(f"{plural(written, 'lake file')} written")
    computed = [f for f in report.features if f.mode != "up to date"]
    if computed:
        parts.append(f"{plural(len(computed), 'feature run')} wrote bars")
    failing = len(problem_rows(report)) - (0 if report.strict else len(report.known_refusals))
    state = "**Run OK**" if report.ok else f"**Run failed: {plural(failing, 'problem')}**"
    known = len(report.known_refusals)
    if known and not report.strict:
        state += f" ({plural(known, 'known refusal')}, not failing the run)"
    return f"{state}: " + ", ".join(parts) + "."


def missing_ranges(missing: Sequence[MissingDay]) -> list[list[object]]:
    """Requested days no archive provides, as runs: [symbol, days, why]."""
    days: dict[tuple[str, str, str], set[date]] = {}
    for m in missing:
        symbol = m.symbol if m.dataset == "trades" else f"{m.symbol} {m.dataset}"
        days.setdefault((m.market, symbol, m.reason), set()).add(m.day)
    rows: list[list[object]] = []
    for (market, symbol, reason), got in sorted(days.items()):
        rows.extend([f"{market}/{symbol}", span_with_count(a, b), reason] for a, b in day_runs(got))
    return rows


def gap_overview_rows(report: PipelineReport) -> list[list[object]]:
    """Per symbol: [symbol, days, in lake, gaps] with the gaps counted by kind."""
    rows: list[list[object]] = []
    for g in report.gap_reports:
        kinds = []
        for n, what in ((len(g.not_published), "not published"), (len(g.refused), "refused"),
                        (len(g.not_in_lake), "not in the lake"), (len(g.no_trades), f"without {g.rows_word}"),
                        (len(g.truncated), "maybe truncated")):
            if n:
                kinds.append(f"{plural(n, 'day')} {what}")
        id_gaps = len(g.id_gaps_inside) + len(g.id_gaps_between)
        if id_gaps:
            ids = sum(int(x["missing_ids"]) for x in [*g.id_gaps_inside, *g.id_gaps_between])
            word = "kline gap" if g.unit == "intervals" else g.unit.replace(" ids", "-id gap")
            kinds.append(f"{plural(id_gaps, word)} ({num(ids)} {g.unit.split()[-1]})")
        total = (g.end - g.start).days + 1
        rows.append([g.label, span(g.start, g.end), f"{num(g.days_in_lake)} of {num(total)}",
                     "; ".join(kinds) or "none"])
    return rows


def timing_rows(report: PipelineReport) -> list[list[object]]:
    """Each stage's wall-clock span: [stage, from s, to s, seconds] from the first stage's start."""
    if not report.stages:
        return []
    origin = min(a for a, _ in report.stages.values())
    return [[name, secs(a - origin), secs(b - origin), secs(b - a)]
            for name, (a, b) in sorted(report.stages.items(), key=lambda kv: kv[1])]


def summary_markdown(report: PipelineReport) -> str:
    """The run-summary artifact: what changed and what failed first, then gaps, timings and notes."""
    parts = [headline(report)]
    changes = changes_rows(report)
    places = _by_place(report)
    untouched = " ".join(text for text in (
        f"Already in the lake, left as they were: {plural(places['lake'][0], 'archive')} "
        f"({num(places['lake'][1])} rows)." if "lake" in places else "",
        f"Already downloaded and verified by an earlier run: {plural(places['kept'][0], 'archive')}."
        if "kept" in places else "") if text)
    parts.append("### What changed\n\n" + (markdown_table(["what", "count", "rows", "bytes"], changes, right=(1, 2, 3))
                                          if changes else "Nothing: the lake was already up to date.")
                 + (f"\n\n{untouched}" if untouched else ""))
    problems = problem_rows(report)
    if problems:
        parts.append("### Failed or refused\n\n"
                     + markdown_table(["what", "which", "why"], _capped(problems, 3, "problems")))
    files = [c for c in report.compactions if c.files_written or c.files_removed]
    if files:
        parts.append("### Lake files\n\n" + markdown_table(
            ["symbol", "written", "rows", "bytes", "replaced"],
            _capped([[f"{c.market}/{c.symbol}", _names(c.files_written), num(c.rows_written), num(c.bytes_written),
                      num(len(c.files_removed))] for c in files], 5, "symbols"),
            right=(2, 3, 4)))
    if report.features:
        parts.append("### Features\n\n" + markdown_table(
            ["feature", "symbol", "result", "trades read", "bars written"],
            _capped([[f.feature, f"{f.market}/{f.symbol}", f.mode + (f" ({short(f.reason, 80)})" if f.reason else ""),
                      num(f.trades), num(f.bars)] for f in report.features], 5, "feature runs"),
            right=(3, 4)))
    gaps = gap_overview_rows(report)
    if gaps:
        parts.append("### Gaps (details: the lake-gaps artifact)\n\n"
                     + markdown_table(["symbol", "days", "in lake", "gaps"], _capped(gaps, 4, "symbols"), right=(2,)))
    elif report.missing:
        parts.append("### Days not published\n\n" + markdown_table(
            ["symbol", "days", "why"], _capped(missing_ranges(report.missing), 3, "runs of days")))
    audit_rows: list[list[object]] = [
        [f"{a.market}/{a.symbol}", m.day, m.kind, num(m.count), short(m.samples[0], 80) if m.samples else ""]
        for a in report.audits for m in a.mismatches
    ]
    if audit_rows:
        parts.append("### Audit: datasets that disagree (a fact about the archive; the data landed)\n\n"
                     + markdown_table(["symbol", "day", "kind", "count", "e.g."], _capped(audit_rows, 5, "mismatches"),
                                      right=(3,)))
    elif report.audits:
        checks = sum(sum(a.checked.values()) for a in report.audits)
        parts.append(f"Audit: {num(checks)} day checks across datasets, all in agreement.")
    if report.validated_files:
        at_write = f" ({num(report.validated_at_write)} as the merge wrote them)" if report.validated_at_write else ""
        parts.append(f"Validated {num(report.validated_files)} lake files{at_write}.")
    timings = timing_rows(report)
    if timings:
        parts.append("### Timings (wall clock; stages overlap)\n\n"
                     + markdown_table(["stage", "from s", "to s", "seconds"], timings, right=(1, 2, 3)))
    if report.notes:
        parts.append("### Notes\n\n" + "\n".join(f"- {short(n.strip(), 300)}" for n in report.notes[:50]))
    return "\n\n".join(parts) + "\n"


def _names(names: Sequence[str]) -> str:
    if len(names) <= 3:
        return ", ".join(names) or "nothing"
    return f"{names[0]} … {names[-1]} ({num(len(names))} files)"


# --- table artifacts --------------------------------------------------------------------------

def archive_rows(report: PipelineReport) -> list[dict[str, object]]:
    """The ingest-archives table: one row per archive, numbers with separators."""
    return [{"archive": o.archive, "status": o.status, "rows": num(o.rows), "bytes": num(o.bytes),
             "seconds": secs(o.seconds), "detail": short(o.detail), "known since": o.since_day}
            for o in report.outcomes]


def lake_file_rows(report: PipelineReport) -> list[dict[str, object]]:
    """The lake-files table: per symbol, what merge/optimize wrote and replaced."""
    return [{"symbol": f"{c.market}/{c.symbol}", "written": _names(c.files_written), "rows": num(c.rows_written),
             "bytes": num(c.bytes_written), "replaced": num(len(c.files_removed)),
             "merged archives": num(len(c.staged_merged)),
             "re-published": ", ".join(archive_name(a) for a in c.replaced_archives), "seconds": secs(c.seconds)}
            for c in report.compactions]


def feature_rows(report: PipelineReport) -> list[dict[str, object]]:
    """The features table: per feature and symbol, what the run did and how many bars there are."""
    return [{"feature": f.feature, "symbol": f"{f.market}/{f.symbol}", "result": f.mode, "trades": num(f.trades),
             "bars": num(f.bars), "parts": num(f.parts), "seconds": secs(f.seconds), "why": short(f.reason)}
            for f in report.features]


def gap_findings(g: GapReport) -> list[tuple[str, str]]:
    """(days, finding) for every gap of one symbol, in day order; runs of days as `first..last (n days)`."""
    found: list[tuple[date, str, str]] = []
    for days, what in ((g.not_published, "not published"), (g.not_in_lake, "not in the lake (not fetched yet)"),
                       (g.no_trades, f"no {g.rows_word} (its archive is in the lake)")):
        found.extend((a, span_with_count(a, b), what) for a, b in day_runs(days))
    # Refused days: a monthly archive refuses a whole month, one row per archive.
    refused: dict[str, list[dict[str, str]]] = {}
    for r in g.refused:
        refused.setdefault(r["archive"], []).append(r)
    for archive, rs in refused.items():
        days = sorted(date.fromisoformat(r["day"]) for r in rs)
        found.append((days[0], span_with_count(days[0], days[-1]),
                      f"refused {archive_name(archive)}: {reason(rs[0]['reason'], 100)}"))
    for x in g.id_gaps_inside:
        day = date.fromisoformat(str(x["day"]))
        n = int(x["gaps"])
        found.append((day, str(day), f"{num(int(x['missing_ids']))} {g.unit} missing inside the day "
                                     f"({num(n)} gap{'s' if n > 1 else ''})"))
    for x in g.id_gaps_between:
        after, before = date.fromisoformat(str(x["after"])), date.fromisoformat(str(x["before"]))
        found.append((after, span(after, before), f"{num(int(x['missing_ids']))} {g.unit} missing after id "
                                                  f"{num(int(x['after_id']))} (before id {num(int(x['before_id']))})"))
    for t in g.truncated:
        day = date.fromisoformat(str(t["day"]))
        first, last = str(t["first"])[11:19], str(t["last"])[11:19]
        found.append((day, str(day), f"truncated? {g.rows_word} only from {first} to {last} UTC"))
    found.sort(key=lambda f: f[0])
    return [(days, what) for _, days, what in found]


def gap_rows(report: PipelineReport) -> list[dict[str, object]]:
    """The lake-gaps table: per symbol a first row (days in the lake), then one row per gap.

    Three short columns (symbol, days, gap); at most MAX_GAP_ROWS rows, the last saying how many
    more there are and where the whole report is.
    """
    rows: list[dict[str, object]] = []
    for g in report.gap_reports:
        total = (g.end - g.start).days + 1
        findings = gap_findings(g)
        rows.append({"symbol": g.label, "days": span(g.start, g.end),
                     "gap": f"{num(g.days_in_lake)} of {num(total)} days in the lake; "
                            + (f"{num(len(findings))} gaps" if findings else "no gaps")})
        rows.extend({"symbol": g.symbol, "days": days, "gap": what} for days, what in findings)
    if len(rows) > MAX_GAP_ROWS:
        more = len(rows) - MAX_GAP_ROWS + 1
        rows = [*rows[: MAX_GAP_ROWS - 1], {"symbol": "…", "days": "",
                                            "gap": f"{num(more)} more rows: see reports/gaps/ in the data dir"}]
    return rows


def publish_artifacts(report: PipelineReport) -> None:
    """Create the run's artifacts in the Prefect API (inside a flow run)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    if report.outcomes:
        create_table_artifact(key="ingest-archives", table=archive_rows(report),
                              description="Per archive: status, rows, bytes, seconds, detail.")
    if report.compactions:
        create_table_artifact(key="lake-files", table=lake_file_rows(report),
                              description="Per symbol: lake files written and replaced by merge/optimize.")
    if report.features:
        create_table_artifact(key="features", table=feature_rows(report),
                              description="Per feature and symbol: what this run did, trades read, bars.")
    if report.gap_reports:
        create_table_artifact(key="lake-gaps", table=gap_rows(report),
                              description="Per symbol: days in the lake, then each gap: its days and its size.")
    create_markdown_artifact(key="run-summary", markdown=summary_markdown(report),
                             description="What this run changed and what failed, then gaps and timings.")
