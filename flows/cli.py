"""The command line of `python -m flows.full_pipeline`: arguments checked before the heavy imports.

Importing this module costs what pydantic costs (a few tenths of a second); Prefect,
pyarrow, Dask and Numba (about 4 s) are imported only once the arguments and the data dir
are known to be good, while the temporary API server boots beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from flows.api_server import TemporaryApiServer, discard, launch_early, server_template
from flows.interrupt import Interrupted
from flows.warm import hand_off, in_child, keep_warm_seconds
from tasks.dataset_ids import DATASET_NAMES
from tasks.errors import DataDirRefused, DateRangeRefused, SymbolNotListed, TemporaryServerFailed, describe
from tasks.lake.landed import archives_landed
from tasks.preflight import check_run, version_line
from tasks.settings import ALL_STEPS, STEPS, CliParser, Settings, describe_settings_error
from tasks.units import plural

Verbosity = Literal["quiet", "normal", "verbose"]


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m flows.full_pipeline`."""
    p = CliParser(
        prog="python -m flows.full_pipeline",
        description="Download Binance trade archives, verify their SHA-256, and land them in a Parquet lake "
        "at <data-dir>/lake/trades/market=<m>/symbol=<S>/. Exits 1 if any archive was refused or failed.",
    )
    p.add_argument("--data-dir", required=True, type=Path, help="root of the lake, downloads and quarantine")
    p.add_argument("--market", default="spot", choices=["spot", "um", "cm"],
                   help="spot, um (USD-M futures) or cm (COIN-M futures); default spot")
    p.add_argument("--symbols", nargs="+", required=True, help="one or more symbols, e.g. BTCUSDT ETHUSDT")
    p.add_argument("--start", required=True, help="first day, YYYY-MM-DD (UTC, inclusive)")
    p.add_argument("--end", required=True, help="last day, YYYY-MM-DD (UTC, inclusive)")
    p.add_argument("--granularity", default="auto", choices=["daily", "monthly", "auto"],
                   help="daily archives, monthly archives, or auto: monthly for whole published months and "
                   "daily for the rest, never both for the same days (default)")
    p.add_argument("--dataset", nargs="+", default=None, choices=DATASET_NAMES,
                   help="datasets to bring up to date, in order (default trades)")
    p.add_argument("--interval", nargs="+", default=None, metavar="INTERVAL",
                   help="intervals of the kline datasets (klines, indexPriceKlines, markPriceKlines, "
                        "premiumIndexKlines): 1s (spot klines) 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d, "
                        "monthly also 3d 1w 1mo (default 1m)")
    p.add_argument("--base-url", default=None, help="archive root (default https://data.binance.vision)")
    p.add_argument("--listing-url", default=None,
                   help="S3 listing endpoint (default https://s3-ap-northeast-1.amazonaws.com/data.binance.vision)")
    p.add_argument("--concurrency", type=int, default=None, help="downloads in flight at once (default 8)")
    p.add_argument("--steps", default=None,
                   help=f"comma-separated subset of {','.join(ALL_STEPS)} (default {','.join(STEPS)}). Without "
                   "download, archives already downloaded are converted; cleanup deletes downloaded archives "
                   "whose rows are verified in the lake")
    p.add_argument("--features", nargs="+", default=None, metavar="KIND[:FIELD=VALUE,...]",
                   help="bar kinds to compute from the lake (default ema_dollar_imbalance), e.g. "
                   "ema_dollar_imbalance:exp_num_ticks_init=5000,min_ticks=20 dollar:threshold=1e7,name=dollar_10m; "
                   "kinds: ema_dollar_imbalance, ema_volume_imbalance, ema_tick_imbalance, ema_dollar_run, dollar, "
                   "volume, tick")
    p.add_argument("--target-file-bytes", type=int, default=None,
                   help="lake files are packed up to this size (default 1073741824, 1 GiB)")
    p.add_argument("--dask-address", default=None, help="an existing Dask scheduler (default: a local cluster)")
    p.add_argument("--audit-sources", action="store_true", default=None,
                   help="also download the other source of the same days (monthly for days taken daily, daily for "
                   "a month taken monthly), never landed, so the audit step compares monthly with daily")
    p.add_argument("--strict", action="store_true", default=None,
                   help="exit 1 on any refused archive, also one refused before under the same published checksum "
                   "(by default such a known refusal is reported, and only new ones fail the run)")
    p.add_argument("--create", action="store_true",
                   help="create the data dir's missing parent folders too (without it, a missing parent is "
                   "refused as a likely typo; the data dir itself is always created)")
    p.add_argument("--version", action="version", version=version_line(), help="print the version and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (archives per symbol and granularity, bytes to download, days not "
                   "published, what the lake holds) and exit; writes nothing, starts no server")
    add_verbosity_arguments(p)
    add_keep_warm_argument(p)
    return p


def add_keep_warm_argument(p: argparse.ArgumentParser) -> None:
    """`--keep-warm SECONDS`, shared by the run CLIs (flows/warm.py)."""
    p.add_argument("--keep-warm", type=float, default=None, metavar="SECONDS",
                   help="run on the data dir's warm runner, which keeps the Prefect server and the loaded modules "
                   "between runs and stops after this many idle seconds (BINANCE_LAKE_KEEP_WARM; default 900 in a "
                   "terminal, 0 otherwise); the first run starts it, later runs skip about 9 s of start-up; "
                   "0 runs in this process only")


def add_verbosity_arguments(p: argparse.ArgumentParser) -> None:
    """`--quiet` and `--verbose`, shared by the CLIs."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", action="store_true",
                       help="print only the summary and errors (no progress, no plan)")
    group.add_argument("--verbose", "-v", action="store_true",
                       help="also print Prefect's log lines of every task (by default: warnings and errors only)")


def verbosity(args: argparse.Namespace) -> Verbosity:
    """What `--quiet` / `--verbose` ask for."""
    return "quiet" if args.quiet else "verbose" if args.verbose else "normal"


def preflight(settings: Settings, create: bool, check_symbols: bool = True) -> tuple[Settings, Path, list[str]] | int:
    """`tasks.preflight.check_run` for a CLI: its result, or the exit status once one line is printed.

    2 for a refused data dir, range or symbol (`error: ...`); 130 for a Ctrl-C while the listing
    is asked about the symbols (nothing started yet).
    """
    try:
        return check_run(settings, create=create, check_symbols=check_symbols)
    except (DataDirRefused, DateRangeRefused, SymbolNotListed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(NOTHING_STARTED, file=sys.stderr)
        return 130


def dry_run_cli(settings: Settings, create: bool = False) -> int:
    """`--dry-run`: print the plan; 0, or 1 when a listing could not be read (a real run fails then too).

    The run's own checks (tasks/preflight.py) without their writes: a data dir a run would
    refuse, or a symbol the listing does not know, exits 2; an end after yesterday is capped.
    Nothing is written (the data dir is not created) and no server starts.
    """
    from tasks.preflight import cap_settings, check_data_dir_usable, refuse_unlisted
    from tasks.source.run_plan import dry_run, http_options  # pyarrow (lake footers), aiohttp: not Prefect

    try:
        check_data_dir_usable(settings.data_dir, create)
        settings, note = cap_settings(settings)
        if "download" in settings.steps:
            refuse_unlisted(settings.listing_url, settings.market, settings.symbols, http_options(settings),
                            settings.dataset)
    except (DataDirRefused, DateRangeRefused, SymbolNotListed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if note:
        print(f"note: {note}", file=sys.stderr)
    try:
        plan = dry_run(settings, sys.stdout)
    except DataDirRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if any(p.unlisted for p in plan.symbols) else 0


def settings_from_args(argv: Sequence[str] | None = None) -> Settings:
    """Parse the command line into Settings (environment variables BINANCE_LAKE_* fill the rest)."""
    return Settings(**_given_settings(build_parser().parse_args(argv)))


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields the command line gives (the others come from the environment)."""
    given: dict[str, Any] = {
        "data_dir": args.data_dir, "market": args.market, "symbols": tuple(args.symbols), "start": args.start,
        "end": args.end, "granularity": args.granularity,
    }
    for name in ("base_url", "listing_url", "concurrency", "steps", "dask_address", "target_file_bytes",
                 "features", "audit_sources", "strict"):
        value = getattr(args, name)
        if value is not None:
            given[name] = tuple(value) if isinstance(value, list) else value
    if args.dataset is not None or args.interval is not None:
        from tasks.dataset_ids import dataset_ids

        given["datasets"] = dataset_ids(args.dataset, args.interval)
    return given


#: What a CLI says on Ctrl-C (exit 130): archives verified so far stay, and no half-written
#: file is visible; the next run skips what landed and finishes or undoes a swap it finds.
INTERRUPTED = "interrupted: what landed stays and nothing half-written is visible; run the same command to resume"
#: What a CLI says on Ctrl-C during its checks, before any run started (exit 130).
NOTHING_STARTED = "interrupted: before the run started; nothing was changed"


def print_validation_error(exc: ValidationError | SettingsError, given: Collection[str] = ()) -> None:
    """One `error: ...` line on stderr naming each invalid argument or variable, its value and what is allowed."""
    if isinstance(exc, ValidationError):
        print(describe_settings_error(exc, given), file=sys.stderr)
    else:  # the environment could not be read at all
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)


def interrupted_line(settings: Settings, data_dir: Path, since: float) -> str:
    """What a Ctrl-C'd run says: how many archives it landed (verified or converted) and kept.

    Counted from the data dir (`tasks.lake.landed`), so it is true whichever thread was
    interrupted, and quick: it lists only the requested symbols' folders.
    """
    return landed_line(archives_landed(data_dir, settings.market, settings.symbols, since))


def landed_line(landed: int) -> str:
    """The Ctrl-C line for a run that landed `landed` archives."""
    return (f"interrupted: {plural(landed, 'archive')} landed (verified, kept for the next run); "
            "nothing half-written is visible; run the same command to resume")


@contextmanager
def run_home(scratch: Path | None) -> Iterator[None]:
    """Inside the block, Prefect's home is the run's temporary folder (set before Prefect is imported).

    In a terminal, Prefect's client writes a device id and milestone markers under
    `$PREFECT_HOME/.sdk_telemetry` whatever DO_NOT_TRACK says (Prefect 3.9); with a temporary
    server nothing else of the user's Prefect home is needed, so nothing outlives the run
    outside the data dir. The user's profiles are still read where they are. `None` (an API
    is configured): the user's Prefect home, as it is.
    """
    if scratch is None:
        yield
        return
    saved = {name: os.environ.get(name) for name in ("PREFECT_HOME", "PREFECT_PROFILES_PATH")}
    user_home = Path(saved["PREFECT_HOME"] or "~/.prefect").expanduser()
    os.environ.setdefault("PREFECT_PROFILES_PATH", str(user_home / "profiles.toml"))
    os.environ["PREFECT_HOME"] = str(scratch / "client")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: Whether the process may end without the interpreter's teardown (see `finish`).
_QUICK_EXIT = {"allowed": False}


def allow_quick_exit(allowed: bool) -> None:
    """Say whether `finish` may end the process at once (after a run on a temporary server, or a Ctrl-C)."""
    _QUICK_EXIT["allowed"] = allowed


def finish(code: int) -> NoReturn:
    """End a CLI (`python -m flows.full_pipeline`, `flows.daily_update`) with `code`; at once if nothing is left.

    After a run on a temporary server (or a Ctrl-C) everything that matters is done: files
    committed, the lock released, the run's last logs sent and the server stopped. What the
    interpreter's teardown would still do (join idle thread pools, close Dask's and Prefect's
    clients, run their exit hooks) took 1-2 s of a one-day run, so the process ends with
    `os._exit` once its output is flushed. With a configured API, Prefect's exit hooks still
    send the last logs and events: a normal exit.
    """
    if not _QUICK_EXIT["allowed"]:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: returns the exit status (0 all good, 1 archives refused or failed, 2 bad arguments).

    Bad arguments or `BINANCE_LAKE_*` variables are refused in one line on stderr, with exit
    status 2, before anything is created or any server started, and before the seconds of
    Prefect, pyarrow, Dask and Numba imports: only then does the temporary API server
    start, and it boots while those imports run.
    """
    args = build_parser().parse_args(argv)
    given = _given_settings(args)
    try:
        settings = Settings(**given)
    except (ValidationError, SettingsError) as exc:
        print_validation_error(exc, given)
        return 2
    if args.dry_run:
        return dry_run_cli(settings, args.create)
    # Before any server starts, so a typo fails in a second (tasks/preflight.py): the data dir
    # (then created and marked: the server keeps its schema template in it), the days (an end
    # after yesterday is capped), the symbols (asked of the listing).
    # A warm runner's child (flows/warm.py) repeats the checks its CLI made, without asking
    # the listing again or printing the notes twice.
    child = in_child()
    keep_warm = keep_warm_or_exit(args.keep_warm)
    if isinstance(keep_warm, int):
        return keep_warm
    checked = preflight(settings, create=args.create, check_symbols=not child)
    if isinstance(checked, int):
        return checked
    settings, data_dir, notes = checked
    for note in notes if not child else ():
        print(f"note: {note}", file=sys.stderr)
    handed = hand_off("full_pipeline", argv, data_dir, keep_warm, quiet=args.quiet)
    if handed is not None:
        return handed
    since = time.time()

    def run(early: TemporaryApiServer | None) -> int:
        from flows.full_pipeline import run_from_cli  # Prefect, pyarrow, Dask, Numba: seconds

        return run_from_cli(settings, data_dir, early, verbosity(args))

    return run_on_early_server(data_dir, partial(interrupted_line, settings, data_dir, since), run)


def keep_warm_or_exit(given: float | None) -> float | int:
    """The warm runner's idle seconds (`flows.warm.keep_warm_seconds`), or 2 after one `error:` line."""
    try:
        return keep_warm_seconds(given)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_on_early_server(data_dir: Path, interrupted: Callable[[], str],
                        run: Callable[[TemporaryApiServer | None], int]) -> int:
    """A CLI's run once its arguments are checked: the temporary server launched first, then `run(early)`.

    `run` imports the flow's module (seconds; the server boots meanwhile) and runs it on the
    server, which it owns from then on. Ctrl-C: the `interrupted` line and 130; a server that
    failed to start: one line and 1. Either way the server is stopped and its folder removed.
    """
    handler = Interrupted(interrupted)
    with handler:
        try:
            early = launch_early(server_template(data_dir))
            with run_home(early.scratch if early is not None else None):
                try:
                    code = run(early)
                finally:
                    discard(early)  # stopped already once the run owned it; a second stop does nothing
                allow_quick_exit(early is not None)
                return code
        except TemporaryServerFailed as exc:
            print(f"error: {describe(exc)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            handler.announce()
            allow_quick_exit(True)
            return 130
