"""The command line of `python -m flows.daily_update`: arguments checked before the heavy imports.

As `flows.cli` does for `flows.full_pipeline`: the arguments, the data dir and the symbols
are checked first (a typo is refused in a second), then the temporary API server is
launched, and it boots while Prefect, pyarrow, Dask and Numba are imported.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from datetime import date
from functools import partial
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from flows.api_server import TemporaryApiServer
from flows.cli import (
    add_keep_warm_argument,
    add_verbosity_arguments,
    keep_warm_or_exit,
    landed_line,
    preflight,
    print_validation_error,
    run_on_early_server,
    verbosity,
)
from flows.warm import hand_off, in_child
from tasks.dataset_ids import DATASET_NAMES
from tasks.lake.landed import archives_landed
from tasks.preflight import version_line
from tasks.settings import CliParser, Settings, parse_day

DESCRIPTION = ("Bring the lake up to yesterday (UTC): fetch what is new or late for each symbol, back-fill "
               "new symbols, then merge, validate and compute the features.")
#: `--reprobe-days` bounds: a year of re-probing is far more than Binance's late uploads need.
MAX_REPROBE_DAYS = 366


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m flows.daily_update`."""
    p = CliParser(prog="python -m flows.daily_update", description=DESCRIPTION)
    p.add_argument("--data-dir", required=True, type=Path,
                   help="root of the lake, downloads and quarantine (the one given to flows.full_pipeline)")
    p.add_argument("--market", default="spot", choices=["spot", "um", "cm"],
                   help="spot, um (USD-M futures) or cm (COIN-M futures); default spot")
    p.add_argument("--symbols", nargs="+", default=None,
                   help="symbols to update, e.g. BTCUSDT ETHUSDT (default: every listed symbol, see --include)")
    p.add_argument("--include", nargs="+", default=None,
                   help="without --symbols: shell patterns of listed symbols to take, e.g. '*USDT'")
    p.add_argument("--exclude", nargs="+", default=None,
                   help="without --symbols: shell patterns of listed symbols to skip, e.g. '*UPUSDT'")
    p.add_argument("--reprobe-days", type=int, default=3,
                   help=f"re-check the last N days, which Binance may publish late (default 3, at most "
                   f"{MAX_REPROBE_DAYS})")
    p.add_argument("--today", default=None, help="replay as of this UTC date, YYYY-MM-DD (default: today)")
    p.add_argument("--no-backfill", dest="backfill_new_symbols", action="store_false",
                   help="a symbol without history in the lake gets only the re-probe window, instead of its "
                   "whole published history from its first published day")
    p.add_argument("--dataset", nargs="+", default=None, choices=DATASET_NAMES,
                   help="datasets to bring up to date, in order (default trades)")
    p.add_argument("--interval", nargs="+", default=None, metavar="INTERVAL",
                   help="intervals of the kline datasets (klines, markPriceKlines, ...), e.g. 1m 1h (default 1m)")
    p.add_argument("--base-url", default=None, help="archive root (default https://data.binance.vision)")
    p.add_argument("--listing-url", default=None,
                   help="S3 listing endpoint (default https://s3-ap-northeast-1.amazonaws.com/data.binance.vision)")
    p.add_argument("--dask-address", default=None, help="an existing Dask scheduler (default: a local cluster)")
    p.add_argument("--create", action="store_true",
                   help="create the data dir's missing parent folders too (without it, a missing parent is "
                   "refused as a likely typo; the data dir itself is always created)")
    p.add_argument("--version", action="version", version=version_line(), help="print the version and exit")
    p.add_argument("--strict", action="store_true", default=None,
                   help="exit 1 on any refused archive, also one refused before under the same published checksum "
                   "(by default such a known refusal is reported, and only new ones fail the run)")
    add_verbosity_arguments(p)
    add_keep_warm_argument(p)
    return p


def interrupted_line(market: str, symbols: Sequence[str] | None, data_dir: Path, since: float) -> str:
    """What a Ctrl-C'd daily update says: the archives it landed (verified or converted) and kept."""
    if symbols is None:  # every listed symbol: those with downloads in the data dir
        try:
            symbols = os.listdir(data_dir / "archive" / "data" / market / "daily" / "trades")
        except OSError:
            symbols = []
    return landed_line(archives_landed(data_dir, market, symbols, since))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: exit 0 when all went well, 1 when an archive was refused or failed, 2 for bad arguments."""
    p = build_parser()
    args = p.parse_args(argv)
    if not 1 <= args.reprobe_days <= MAX_REPROBE_DAYS:
        p.error(f"argument --reprobe-days: {args.reprobe_days} is out of range: allowed 1..{MAX_REPROBE_DAYS}")
    if args.today is not None:
        try:
            args.today = parse_day(args.today)
        except ValueError as exc:
            p.error(f"argument --today: {exc}")
    # The terminal's and the process's, not the flow's.
    kwargs = {k: v for k, v in vars(args).items() if k not in ("quiet", "verbose", "keep_warm", "dataset", "interval")}
    create = kwargs.pop("create")
    given = {k: v for k in ("base_url", "listing_url", "dask_address") if (v := kwargs[k])}
    if args.dataset is not None or args.interval is not None:
        from tasks.dataset_ids import dataset_ids

        given["datasets"] = dataset_ids(args.dataset, args.interval)
    try:
        probe = Settings(data_dir=args.data_dir, market=args.market, symbols=tuple(args.symbols or ["PROBE"]),
                         start=date(2020, 1, 1), end=date(2020, 1, 1), **given)
    except (ValidationError, SettingsError) as exc:
        print_validation_error(exc, {"data_dir", "market", "symbols", "start", "end", *given})
        return 2
    if "datasets" in given:
        kwargs["datasets"] = list(probe.datasets)
    # Before any server starts, so a typo fails in a second: the data dir (then created and
    # marked: the server keeps its schema template in it), and the symbols given.
    keep_warm = keep_warm_or_exit(args.keep_warm)
    if isinstance(keep_warm, int):
        return keep_warm
    checked = preflight(probe, create=create, check_symbols=args.symbols is not None and not in_child())
    if isinstance(checked, int):
        return checked
    data_dir = checked[1]
    handed = hand_off("daily_update", argv, data_dir, keep_warm, quiet=args.quiet)
    if handed is not None:
        return handed
    since = time.time()

    def run(early: TemporaryApiServer | None) -> int:
        from flows.daily_update import run_from_cli  # Prefect, pyarrow, Dask, Numba: seconds

        return run_from_cli(kwargs, probe, data_dir, early, verbosity(args))

    return run_on_early_server(data_dir, partial(interrupted_line, probe.market, args.symbols, data_dir, since), run)
