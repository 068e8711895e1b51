"""How many archives a run landed so far, read from the data dir (for the Ctrl-C line).

Cheap and import-light (the standard library and `tasks.source.archive_spec`): it lists the
symbols' download and staging folders, nothing else, so an interrupted CLI can say
"interrupted: N archives landed; run again to resume" within its exit deadline.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import cast

from tasks.source.archive_spec import (
    MARKET_PATH,
    Granularity,
    Market,
    parse_archive_name,
    range_file_name,
    staging_symbol_dir,
    symbol_prefix,
)


def archives_landed(data_dir: Path, market: str, symbols: Iterable[str], since: float) -> int:
    """Archives of `symbols` verified on disk (downloaded with their checksum) or converted into staging
    since `since` (epoch seconds), each counted once.

    A verified download counts as soon as its `.CHECKSUM` is stored (it is written last); a
    converted archive once its staging file is committed. Both survive an interruption: the
    next run skips them. Archives merged into the lake by this run are counted by their
    download (the merge removes their staging files).
    """
    landed: set[tuple[str, str]] = set()
    if market not in MARKET_PATH:
        return 0
    for symbol in symbols:
        for granularity in cast(tuple[Granularity, ...], ("daily", "monthly")):
            folder = data_dir / "archive" / symbol_prefix(market, granularity, symbol)
            for name in _names(folder):
                if not name.endswith(".zip.CHECKSUM") or _mtime(folder / name) < since:
                    continue
                spec = parse_archive_name(cast(Market, market), granularity, name.removesuffix(".CHECKSUM"))
                if spec is not None:
                    landed.add((symbol, range_file_name(spec.first_day, spec.last_day)))
        staging = staging_symbol_dir(data_dir, market, symbol)
        for name in _names(staging):
            if name.endswith(".parquet") and not name.startswith(".") and _mtime(staging / name) >= since:
                landed.add((symbol, name))
    return len(landed)


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
