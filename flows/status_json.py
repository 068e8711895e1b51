"""`python -m flows.status --json`: the lake's status as one versioned JSON document, gaps as data.

Version 2 (version 1 was a bare list whose `gaps` was a sentence):

    {"version": 2, "data_dir": "/abs/data", "as_of": "2024-01-08",
     "symbols": [{"market": "spot", "symbol": "BTCUSDT", "files": 1, "days": 5, "first_day": "2024-01-01",
                  "last_day": "2024-01-05", "rows": 5000, "bytes": 81234, "staged": 0, "problems": 2,
                  "next_update": "2 days: 2024-01-06..2024-01-07",
                  "next_update_days": {"from": "2024-01-06", "to": "2024-01-07", "days": 2},
                  "gaps_summary": "1 unpublished, 1 id gaps between days (2024-01-01..2024-01-05)",
                  "gaps": {"report": "reports/gaps/market=spot/symbol=BTCUSDT.json", "unit": "trade ids",
                           "start": "2024-01-01", "end": "2024-01-05", "days_in_lake": 4,
                           "not_published": [{"from": "2024-01-03", "to": "2024-01-03", "days": 1}],
                           "refused": [{"from": ..., "to": ..., "days": 1, "archive": "data/...zip", "reason": ...}],
                           "not_in_lake": [], "no_trades": [],
                           "id_gaps_inside": [{"day": ..., "gaps": 2, "missing_ids": 7}],
                           "id_gaps_between": [{"after_day": ..., "before_day": ..., "after_id": 2000,
                                                "before_id": 3001, "missing_ids": 1000}],
                           "truncated": [{"day": ..., "first": ..., "last": ..., "rows": 10}],
                           "totals": {"not_published_days": 1, "refused_days": 0, "refused_archives": 0,
                                      "not_in_lake_days": 0, "no_trades_days": 0, "days_with_id_gaps": 0,
                                      "id_gaps_between": 1, "missing_ids": 1000, "truncated_days": 0}}}]}

Every key of version 1 but `gaps` keeps its name and meaning; its sentence is `gaps_summary`.
Day ranges are inclusive. `gaps` comes from the symbol's last gap report
(`reports/gaps/...json`; `report`, `start`, `end` and `days_in_lake` are null without one),
plus the archives refused into quarantine whose days the lake does not hold. Each dataset
has its row (`dataset`); `unit` says what `missing_ids` counts: trade ids, aggTrade ids, or
kline intervals (whose `after_id`/`before_id` are open times in µs). Klines longer than a
day have no gap report: their `gaps` is empty. `publication_ended` is the last day of a
dataset Binance stopped publishing (bookTicker), else null. Added keys, same version:
`universes`, one entry per universe table held (`{"market", "dataset", "symbols",
"published_up_to", "refreshed_at"}`; see `python -m flows.status --universe`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tasks.dataset_ids import publication_end
from tasks.lake.gaps import quarantined, report_path, reported, unit_of
from tasks.lake.inventory import coverage, lake_inventory
from tasks.source.archive_spec import Market

if TYPE_CHECKING:
    from flows.status import SymbolStatus

VERSION = 2


def status_document(data_dir: Path, rows: Sequence[SymbolStatus], as_of: date | None = None) -> dict[str, Any]:
    """The version-2 document for `rows` (from `flows.status.lake_status`) of `data_dir`."""
    as_of = as_of or datetime.now(UTC).date()
    return {"version": VERSION, "data_dir": str(data_dir), "as_of": as_of.isoformat(),
            "symbols": [_symbol(data_dir, r, as_of) for r in rows], "universes": _universes(data_dir)}


def _universes(data_dir: Path) -> list[dict[str, Any]]:
    """Each universe table held: its market, dataset, symbol count, publication frontier, refresh time."""
    from tasks.lake.universe_table import frontier, held_tables

    out = []
    for held in held_tables(data_dir):
        last = frontier(held.spans)
        out.append({"market": held.market, "dataset": held.dataset, "symbols": len(held.spans),
                    "published_up_to": last.isoformat() if last else None,
                    "refreshed_at": held.refreshed_at.isoformat() if held.refreshed_at else None})
    return out


def _symbol(data_dir: Path, row: SymbolStatus, as_of: date) -> dict[str, Any]:
    doc = {k: (v.isoformat() if isinstance(v, date) else v) for k, v in row.__dict__.items() if k != "gaps"}
    ended = publication_end(row.dataset, row.market)
    yesterday = as_of - timedelta(days=1) if ended is None else min(ended, as_of - timedelta(days=1))
    doc["next_update_days"] = (_span(row.last_day + timedelta(days=1), yesterday)
                               if row.last_day is not None and row.last_day < yesterday else None)
    doc["publication_ended"] = ended.isoformat() if ended is not None else None
    doc["gaps_summary"] = row.gaps
    # Klines longer than a day have no gap report (not day-based).
    doc["gaps"] = gap_details(data_dir, row.market, row.symbol, row.dataset) if reported(row.dataset) else {}
    return doc


def gap_details(data_dir: Path, market: str, symbol: str, dataset_id: str = "trades") -> dict[str, Any]:
    """The gaps of one symbol's dataset as data: kinds, day ranges with their sizes, id gaps with their ids."""
    path = report_path(data_dir, market, symbol, dataset_id)
    try:
        report: dict[str, Any] = json.loads(path.read_text())
        if not isinstance(report, dict):
            raise ValueError(path)
    except (OSError, ValueError):
        report = {}
    held = coverage(lake_inventory(data_dir, market, symbol, dataset_id))
    refused_days = {str(r["day"]): r for r in report.get("refused", []) if isinstance(r, dict) and "day" in r}
    for day, r in quarantined(data_dir, cast(Market, market), symbol, dataset_id).items():
        if day not in held:
            refused_days.setdefault(day.isoformat(), r)
    refused = _refused_ranges(refused_days.values())
    inside = [{"day": g.get("day"), "gaps": g.get("gaps"), "missing_ids": g.get("missing_ids")}
              for g in report.get("id_gaps_inside", [])]
    between = [{"after_day": g.get("after"), "before_day": g.get("before"), "after_id": g.get("after_id"),
                "before_id": g.get("before_id"), "missing_ids": g.get("missing_ids")}
               for g in report.get("id_gaps_between", [])]
    ranges = {key: _ranges(report.get(key, [])) for key in ("not_published", "not_in_lake", "no_trades")}
    truncated = list(report.get("truncated", []))
    return {
        "report": str(path.relative_to(data_dir)) if report else None,
        # What `missing_ids` counts: trade ids, aggTrade ids, or intervals (klines: ids are open times in µs).
        "unit": unit_of(dataset_id),
        "start": report.get("start"), "end": report.get("end"), "days_in_lake": report.get("days_in_lake"),
        "not_published": ranges["not_published"], "refused": refused,
        "not_in_lake": ranges["not_in_lake"], "no_trades": ranges["no_trades"],
        "id_gaps_inside": inside, "id_gaps_between": between, "truncated": truncated,
        "totals": {
            "not_published_days": _days(ranges["not_published"]), "refused_days": _days(refused),
            "refused_archives": len({r["archive"] for r in refused}),
            "not_in_lake_days": _days(ranges["not_in_lake"]), "no_trades_days": _days(ranges["no_trades"]),
            "days_with_id_gaps": len(inside), "id_gaps_between": len(between),
            "missing_ids": sum(int(g["missing_ids"] or 0) for g in [*inside, *between]),
            "truncated_days": len(truncated),
        },
    }


def _span(first: date, last: date) -> dict[str, Any]:
    return {"from": first.isoformat(), "to": last.isoformat(), "days": (last - first).days + 1}


def _ranges(days: Iterable[object]) -> list[dict[str, Any]]:
    """ISO days as runs of consecutive days: `[{"from", "to", "days"}]`, ascending."""
    out: list[dict[str, Any]] = []
    parsed = sorted({date.fromisoformat(str(d)) for d in days})
    for d in parsed:
        if out and date.fromisoformat(out[-1]["to"]) + timedelta(days=1) == d:
            out[-1].update(to=d.isoformat(), days=out[-1]["days"] + 1)
        else:
            out.append(_span(d, d))
    return out


def _refused_ranges(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Refused days as runs per archive (a refused monthly archive is one entry of its days) with the reason."""
    by_archive: dict[tuple[str, str], list[str]] = {}
    for e in entries:
        by_archive.setdefault((str(e.get("archive", "")), str(e.get("reason", ""))), []).append(str(e["day"]))
    out = [{**span, "archive": archive, "reason": reason}
           for (archive, reason), days in by_archive.items() for span in _ranges(days)]
    return sorted(out, key=lambda r: (r["from"], r["archive"]))


def _days(ranges: list[dict[str, Any]]) -> int:
    return sum(int(r["days"]) for r in ranges)
