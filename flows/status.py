"""What the lake holds: `python -m flows.status --data-dir ./data`.

Per dataset, market and symbol: days covered, first and last day, rows, bytes on disk,
files, archives waiting in staging, the last gap report's findings (trades) and audit's
mismatches (datasets against each other), and what the next daily update would fetch
(every day after the last one in the lake, up to yesterday UTC).
A coloured table in a terminal, plain tab-separated text when piped (or `--plain`).
Reads file names and Parquet footers only: instant on a lake of terabytes.
"""

from __future__ import annotations

import json
import os
import sys
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import cast

from tasks.audit.between_datasets import report_path as audit_report_path
from tasks.dataset_ids import all_dataset_ids, markets_of, monthly_only, parse_id, publication_end
from tasks.datasets import dataset
from tasks.errors import DataDirRefused
from tasks.lake.gaps import quarantined, report_path, reported
from tasks.lake.inventory import coverage, lake_inventory, staged_inventory
from tasks.preflight import check_status_data_dir, version_line
from tasks.settings import DEFAULT_LISTING_URL, CliParser, parse_day
from tasks.source.archive_spec import MARKETS, SYMBOL_RE, Market
from tasks.source.plan import months_touching


@dataclass(frozen=True)
class SymbolStatus:
    """One (market, symbol) of the lake."""

    market: str
    symbol: str
    files: int
    days: int
    first_day: date | None
    last_day: date | None
    rows: int
    bytes: int
    staged: int
    gaps: str  # the last gap report's findings, or "no report"
    next_update: str  # the days the next daily update would fetch
    problems: int
    dataset: str = "trades"


def _gap_summary(data_dir: Path, market: str, symbol: str, dataset_id: str = "trades") -> tuple[str, int]:
    if not reported(dataset_id):
        ordered = dataset(dataset_id).continuity == "ordered"
        why = "no fixed spacing of rows" if ordered else "intervals longer than a day"
        return f"not reported day by day ({why})", 0
    path = report_path(data_dir, market, symbol, dataset_id)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return "no report", 0
    parts = []
    for key, label in (("not_published", "unpublished"), ("refused", "refused"), ("not_in_lake", "absent"),
                       ("id_gaps_between", "id gaps between days"), ("id_gaps_inside", "days with id gaps"),
                       ("truncated", "truncated?")):
        if doc.get(key):
            parts.append(f"{len(doc[key])} {label}")
    return (", ".join(parts) or "none") + f" ({doc.get('start')}..{doc.get('end')})", int(doc.get("problems", 0))


def _audit_summary(data_dir: Path, market: str, symbol: str) -> tuple[str, int]:
    try:
        doc = json.loads(audit_report_path(data_dir, market, symbol).read_text())
        found = [m for m in doc.get("mismatches", []) if isinstance(m, dict)]
    except (OSError, ValueError, AttributeError):
        return "", 0
    days = len({m.get("day") for m in found})
    text = f"audit: {len(found)} mismatch kinds on {days} days" if found else "audit: no mismatch"
    return f"{text} ({doc.get('start')}..{doc.get('end')})", len(found)


def symbol_status(data_dir: Path, market: str, symbol: str, today: date, dataset: str = "trades",
                  with_audit: bool | None = None) -> SymbolStatus:
    """The status of one symbol of one dataset of the lake, as of `today` (UTC).

    `with_audit`: add the symbol's last audit verdict (by default on the trades row; `lake_status`
    puts it on the symbol's first row, whatever its dataset).
    """
    entries = lake_inventory(data_dir, market, symbol, dataset)
    days = coverage(entries)
    staged = staged_inventory(data_dir, market, symbol, dataset)
    first = min(days) if days else None
    last = max(days) if days else None
    yesterday = today - timedelta(days=1)
    month_ago = today.replace(day=1) - timedelta(days=1)  # the last day of the last whole month
    ended = publication_end(dataset, market)
    if ended is not None and last is not None and last >= ended:
        nxt = f"up to date: publication ended {ended}"
    elif ended is not None and last is not None and ended < yesterday:
        n = (ended - last).days
        nxt = f"{n} day{'s' if n > 1 else ''}: {last + timedelta(days=1)}..{ended} (publication ended {ended})"
    elif last is None:
        nxt = "nothing in the lake yet: run a back-fill"
    elif last >= yesterday or (monthly_only(dataset) and last >= month_ago):
        nxt = "up to date"
    elif monthly_only(dataset):  # published a month at a time, in the first half of the next month (#328)
        first_month = (last + timedelta(days=1)).replace(day=1)
        n = len(months_touching(first_month, month_ago))
        nxt = (f"{n} month{'s' if n > 1 else ''}: {first_month:%Y-%m}..{month_ago:%Y-%m} "
               "(monthly archives, usually out by mid-month)")
    else:
        n = (yesterday - last).days
        nxt = f"{n} day{'s' if n > 1 else ''}: {last + timedelta(days=1)}..{yesterday}"
    gaps, problems = _gap_summary(data_dir, market, symbol, dataset)
    if with_audit or (with_audit is None and dataset == "trades"):
        audit, mismatches = _audit_summary(data_dir, market, symbol)
        if audit:
            gaps, problems = f"{gaps}; {audit}", problems + mismatches
    # Refused archives whose days the lake does not hold, even when no gap report was written since.
    refused = {v["archive"] for d, v in quarantined(data_dir, cast(Market, market), symbol, dataset).items()
               if d not in days}
    if refused:
        gaps += f"; {len(refused)} archive{'s' if len(refused) > 1 else ''} refused (see quarantine/)"
        problems = max(problems, len(refused))
    return SymbolStatus(
        market, symbol, len(entries), len(days), first, last,
        rows=sum(s.rows for e in entries for s in e.sources),
        bytes=sum(e.path.stat().st_size for e in entries),
        staged=len(staged), gaps=gaps, next_update=nxt,
        problems=problems + sum(1 for e in entries if e.problem), dataset=dataset,
    )


def lake_status(data_dir: Path, today: date | None = None) -> list[SymbolStatus]:
    """Every (dataset, market, symbol) found in the lake or in staging, trades first."""
    today = today or datetime.now(UTC).date()
    found: set[tuple[int, str, str, str]] = set()
    for order, ds in enumerate(all_dataset_ids()):
        for area in ("lake", "staging"):
            root = data_dir / area / dataset(ds).lake_folder
            for folder in root.glob("market=*/symbol=*") if root.is_dir() else []:
                market, symbol = folder.parent.name.split("=", 1)[1], folder.name.split("=", 1)[1]
                if SYMBOL_RE.fullmatch(symbol) and market in MARKETS:
                    found.add((order, ds, market, symbol))
    rows, seen = [], set()
    for _, ds, m, s in sorted(found):
        rows.append(symbol_status(data_dir, m, s, today, ds, with_audit=(m, s) not in seen))
        seen.add((m, s))
    return rows


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


COLUMNS = ("dataset", "market", "symbol", "days", "first", "last", "rows", "size", "files", "staged", "gaps",
           "next update")


def render(rows: list[SymbolStatus], colour: bool) -> str:
    """A table: aligned with colours for a terminal, tab-separated without."""
    cells = [
        [r.dataset, r.market, r.symbol, str(r.days), str(r.first_day or "-"), str(r.last_day or "-"), f"{r.rows:,}",
         _size(r.bytes), str(r.files), str(r.staged), r.gaps, r.next_update]
        for r in rows
    ]
    if not colour:
        return "\n".join("\t".join(line) for line in [list(COLUMNS), *cells])
    widths = [max(len(c[i]) for c in [list(COLUMNS), *cells]) for i in range(len(COLUMNS))]
    bold, red, green, yellow, reset = "\033[1m", "\033[31m", "\033[32m", "\033[33m", "\033[0m"
    out = [bold + "  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True)) + reset]
    for r, line in zip(rows, cells, strict=True):
        parts = [c.ljust(w) for c, w in zip(line, widths, strict=True)]
        parts[10] = (red if r.problems else green) + parts[10] + reset
        parts[11] = (green if r.next_update.startswith("up to date") else yellow) + parts[11] + reset
        out.append("  ".join(parts))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: print the lake's status; exit 0 (2, with one line on stderr, for bad arguments or a data dir
    that does not exist or cannot be read)."""
    p = CliParser(prog="python -m flows.status", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, type=Path, help="the data dir given to the pipeline")
    p.add_argument("--plain", action="store_true", help="tab-separated text even in a terminal")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.add_argument("--version", action="version", version=version_line(), help="print the version and exit")
    u = p.add_argument_group("universe", "the symbols each market published, delisted ones too (see --universe)")
    u.add_argument("--universe", action="store_true",
                   help="list the universe of --market and --dataset instead of the lake: every symbol's first "
                        "and last published day, or with --date the symbols trading that day")
    u.add_argument("--date", default=None, metavar="YYYY-MM-DD",
                   help="with --universe: the symbols trading on this UTC day")
    u.add_argument("--market", choices=MARKETS, action="append", default=None,
                   help="with --universe: the market (repeatable; default every market held)")
    u.add_argument("--dataset", default="trades", help="with --universe: the dataset id (default trades)")
    u.add_argument("--refresh", action="store_true",
                   help="with --universe: list the archive first and rewrite the table (network; needs --market)")
    u.add_argument("--full", action="store_true",
                   help="with --refresh: list every symbol folder from the start, delisted ones too")
    u.add_argument("--listing-url", default=DEFAULT_LISTING_URL, help="with --refresh: the bucket listing's URL")
    args = p.parse_args(argv)
    if args.date is not None:
        try:
            args.date = parse_day(args.date)
        except ValueError as exc:
            p.error(f"argument --date: {exc}")
    if not args.universe and (args.date or args.market or args.refresh or args.full or args.dataset != "trades"):
        print("error: --date, --market, --dataset, --refresh and --full go with --universe", file=sys.stderr)
        return 2
    try:
        data_dir = check_status_data_dir(args.data_dir)  # a reader: never creates anything
    except DataDirRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.universe:
        try:  # the refresh's asyncio.run cancels its task on Ctrl-C and then raises KeyboardInterrupt
            return _universe_main(args, data_dir)
        except KeyboardInterrupt:
            print("interrupted: the universe tables are as they were (a table is written only whole); "
                  "run the same command to refresh", file=sys.stderr)
            return 130
    try:
        rows = lake_status(data_dir)
    except OSError as exc:  # e.g. lake/trades is a file, or a folder we may not read
        print(f"error: {args.data_dir}: cannot read the lake: {exc}", file=sys.stderr)
        return 2
    if args.json:  # version 2: gaps as data (days, kinds, sizes); see flows/status_json.py
        from flows.status_json import status_document

        print(json.dumps(status_document(args.data_dir.resolve(), rows), indent=1))
    elif not rows:
        print(f"{args.data_dir}: the lake is empty")
    else:
        print(render(rows, colour=sys.stdout.isatty() and not args.plain))
    if not args.json:
        from flows.status_universe import frontier_line
        from tasks.lake.universe_table import held_tables

        today = datetime.now(UTC).date()
        for held in held_tables(data_dir):
            print("universe " + frontier_line(held, today))
    return 0


def _universe_main(args: Namespace, data_dir: Path) -> int:
    """`--universe`: refresh the tables first if asked, then print them."""
    from flows.status_universe import universe_report
    from tasks.errors import PipelineError, describe

    today = datetime.now(UTC).date()
    try:
        parse_id(args.dataset)
    except PipelineError as exc:
        print(f"error: --dataset: {exc.reason}", file=sys.stderr)
        return 2
    markets = args.market
    failed = False
    if args.refresh:
        if not markets:
            print("error: --refresh needs --market (spot, um or cm)", file=sys.stderr)
            return 2
        wrong = [m for m in markets if m not in markets_of(args.dataset)]
        if wrong:
            print(f"error: {args.dataset} is published for {' and '.join(markets_of(args.dataset))} only, "
                  f"not {' '.join(wrong)}", file=sys.stderr)
            return 2
        from tasks.source.http import HttpOptions
        from tasks.source.universe_scan import refresh_universe

        for market in markets:
            print(f"listing {market} {args.dataset} at {args.listing_url} ...", file=sys.stderr, flush=True)
            try:
                scan = refresh_universe(data_dir, market, args.dataset, args.listing_url, HttpOptions(),
                                        today=today, full=args.full)
            except (PipelineError, OSError) as exc:
                print(f"error: {market} {args.dataset}: the universe was not refreshed: "
                      f"{describe(exc) if isinstance(exc, PipelineError) else exc}", file=sys.stderr)
                failed = True
                continue
            print(f"{market} {args.dataset}: {scan.listed} symbol folders listed, {scan.kept} delisted ones "
                  f"kept as held, {len(scan.spans)} symbols in the table"
                  + (f"; {len(scan.errors)} folders could not be listed (their spans kept)" if scan.errors else ""),
                  file=sys.stderr)
            for symbol, reason in list(scan.errors.items())[:10]:
                print(f"  {symbol}: {reason}", file=sys.stderr)
            failed = failed or bool(scan.errors)
    lines, code = universe_report(data_dir, markets, args.dataset, args.date, today)
    print("\n".join(lines), file=sys.stderr if code else sys.stdout)
    if args.refresh and failed:
        return 1  # what is printed is the table held, not (or not wholly) refreshed
    return code


def _stdout_closed() -> int:
    """`... | head` closed our stdout early: exit quietly, as `ls | head` does (no BrokenPipeError traceback)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush then goes nowhere
    return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe


if __name__ == "__main__":
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        code = _stdout_closed()
    sys.exit(code)
