"""Checks a command line gets before any server starts: the data dir, the days, the symbols.

Each one answers in a second or so with one line naming the thing and the reason, where
the run itself would spend seconds starting up and then report something less clear (a
traceback, 700 days "not published", a whole path created). Plain functions, no Prefect:
`early_exit` runs before Prefect is even imported.

- `check_data_dir_usable` / `open_usable_data_dir`: a file, an unwritable folder, or a path
  whose parent does not exist (a typo, unless `--create`) is refused.
- `cap_end_date`: an end after yesterday (UTC) is capped to it, with a note; a start after
  yesterday is refused (nothing can be published yet).
- `find_unlisted` / `check_symbols_listed`: a well-formed symbol the listing does not know
  (`XRPUSDT` where only `XRPUSDC` is listed) is refused, with the closest listed names.
  A listing that cannot be reached is not evidence of anything: the run reports it.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import sys
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, cast

from tasks.datadir import check_data_dir, open_data_dir
from tasks.errors import DataDirRefused, DateRangeRefused, PipelineError, SymbolNotListed

if TYPE_CHECKING:
    from tasks.settings import Settings
    from tasks.source.archive_spec import Granularity, Market

T = TypeVar("T")

#: How long the symbol check may wait for the listing: it must not hold a run up (the run
#: lists again, with its own retries, and reports a listing it cannot read).
PROBE_TIMEOUT_S = 10.0
#: Close listed names offered for an unlisted symbol.
MAX_SUGGESTIONS = 3


# --- the data dir ---------------------------------------------------------------------------------------------------


def check_data_dir_usable(path: Path, create: bool = False) -> Path:
    """The resolved data dir if a run may use it, changing nothing; else DataDirRefused (one line's worth).

    On top of `tasks.datadir.check_data_dir` (a file, an unwritable folder, a folder that is
    not a lake): a data dir whose parent does not exist is refused unless `create`, since a
    mistyped parent (`/mnt/dtaa/lake`) would otherwise be created, whole, without a word.
    Creating the data dir itself inside an existing folder is fine.
    """
    resolved = check_data_dir(path)
    if not resolved.exists() and not resolved.parent.is_dir() and not create:
        missing = resolved.parent
        while not missing.parent.exists():
            missing = missing.parent
        raise DataDirRefused(str(path), f"{missing} does not exist (a typo? --create makes the missing folders)")
    return resolved


def open_usable_data_dir(path: Path, create: bool = False) -> Path:
    """Check `path` (see `check_data_dir_usable`), create and mark it, and prove it writable.

    The proof is a real write: `os.access` says yes to root on a folder it cannot write (an
    immutable folder, some network mounts), which would otherwise fail deep in the run.
    """
    check_data_dir_usable(path, create)
    try:
        resolved = open_data_dir(path)
        probe_write(resolved)
    except OSError as exc:
        raise DataDirRefused(str(path), f"cannot write in it: {exc.strerror or exc}") from None
    return resolved


def probe_write(folder: Path) -> None:
    """Create and remove a small temporary file in `folder`; OSError if it cannot be written."""
    from tasks.atomic import temp_path_for  # atomic imports nothing heavy, but only this needs it

    probe = temp_path_for(folder / ".write-probe")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"probe\n")
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def check_status_data_dir(path: Path) -> Path:
    """For readers (`flows.status`): an existing, readable folder, resolved; never creates anything."""
    resolved = path.expanduser().resolve()
    if not resolved.exists():
        raise DataDirRefused(str(path), "no such data dir")
    if not resolved.is_dir():
        raise DataDirRefused(str(path), "exists and is not a directory")
    if not os.access(resolved, os.R_OK | os.X_OK):
        raise DataDirRefused(str(path), "not readable by this user")
    return resolved


# --- the days -------------------------------------------------------------------------------------------------------


def yesterday_utc(today: date | None = None) -> date:
    """The last day Binance can have published (today's archive appears tomorrow)."""
    return (today or datetime.now(UTC).date()) - timedelta(days=1)


def cap_end_date(start: date, end: date, today: date | None = None) -> tuple[date, str | None]:
    """The end to use and a note when it was capped at yesterday (UTC); DateRangeRefused if start is later.

    Days after yesterday cannot be published yet: without the cap every one of them would
    be reported "not published", as if something were missing.
    """
    last = yesterday_utc(today)
    if start > last:
        raise DateRangeRefused(
            f"--start {start}", f"is after yesterday ({last}, UTC): no archive of it can be published yet")
    if end <= last:
        return end, None
    return last, f"--end {end} is in the future: capped at yesterday, {last} (UTC)"


# --- the symbols ----------------------------------------------------------------------------------------------------


def probe_options(http: Any = None) -> Any:
    """The run's HTTP options (`tasks.source.http.HttpOptions`), bounded so a dead listing answers within seconds."""
    from tasks.source.http import HttpOptions

    base = http or HttpOptions()
    return replace(base, retries=min(base.retries, 1), retry_base_delay=min(base.retry_base_delay, 0.5),
                   connect_timeout=min(base.connect_timeout, PROBE_TIMEOUT_S),
                   read_timeout=min(base.read_timeout, PROBE_TIMEOUT_S),
                   deadline_floor=min(base.deadline_floor, PROBE_TIMEOUT_S))


async def find_unlisted(listing_url: str, market: str, symbols: Sequence[str], http: Any,
                        dataset_id: str = "trades") -> dict[str, list[str]]:
    """The symbols the listing does not know (for `dataset_id`), each with the closest listed names (maybe none).

    A symbol is listed when its daily or its monthly folder of the dataset holds anything: one
    single-key listing request each. Only when one is missing are the market's symbol
    folders listed, for the suggestions. A symbol whose probe fails (network, a garbage
    page) counts as listed: the run lists it again and reports that failure itself.
    """
    from tasks.source.archive_spec import symbol_prefix
    from tasks.source.http import make_session
    from tasks.source.listing import list_symbols

    async def holds_anything(session: Any, prefix: str) -> bool | None:
        from tasks.source.http import fetch_bytes, with_retries
        from tasks.source.listing import listing_page_url, parse_listing_page

        url = listing_page_url(listing_url, prefix) + "&max-keys=1"
        try:
            page = parse_listing_page(await with_retries(lambda: fetch_bytes(session, url, options=http), http), url)
        except PipelineError:
            return None
        return bool(page.objects or page.prefixes)

    async with make_session(http) as session:
        answers = await asyncio.gather(*(holds_anything(session, symbol_prefix(market, g, s, dataset_id))
                                         for s in symbols for g in ("daily", "monthly")))
    unlisted = [s for i, s in enumerate(symbols) if answers[2 * i] is False and answers[2 * i + 1] is False]
    if not unlisted:
        return {}
    known: set[str] = set()
    granularities: tuple[Granularity, ...] = ("daily", "monthly")
    folders = [list_symbols(listing_url, cast("Market", market), g, http, dataset_id) for g in granularities]
    for found in await asyncio.gather(*folders, return_exceptions=True):
        if isinstance(found, list):
            known.update(found)
        elif not isinstance(found, PipelineError):
            raise found
    if known & set(unlisted):  # listed after all (the folders moved between the two requests)
        unlisted = [s for s in unlisted if s not in known]
    return {s: difflib.get_close_matches(s, sorted(known), n=MAX_SUGGESTIONS) for s in unlisted}


def unlisted_message(symbol: str, market: str, suggestions: Sequence[str]) -> str:
    """`XRPUSDT: not listed for spot; did you mean XRPUSDC?`"""
    if not suggestions:
        return f"{symbol}: not listed for {market}; no listed symbol looks like it"
    names = suggestions[0] if len(suggestions) == 1 else ", ".join(suggestions[:-1]) + " or " + suggestions[-1]
    return f"{symbol}: not listed for {market}; did you mean {names}?"


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end from synchronous code, in a thread of its own if this one has an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(coro))
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="preflight-listing")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


def check_symbols_listed(listing_url: str, market: str, symbols: Sequence[str], http: Any = None,
                         dataset_id: str = "trades") -> list[str]:
    """One message per requested symbol that the listing does not know (empty: all listed, or unknown)."""
    found = run_coroutine(find_unlisted(listing_url, market, list(symbols), probe_options(http), dataset_id))
    return [unlisted_message(s, market, found[s]) for s in symbols if s in found]


def refuse_unlisted(listing_url: str, market: str, symbols: Sequence[str], http: Any = None,
                    dataset_id: str = "trades") -> None:
    """SymbolNotListed naming every requested symbol the listing does not know (for the dataset), with suggestions."""
    problems = check_symbols_listed(listing_url, market, symbols, http, dataset_id)
    if problems and dataset_id != "trades":  # "not listed for spot klines-1m"
        problems = [p.replace(f"not listed for {market};", f"not listed for {market} {dataset_id};", 1)
                    for p in problems]
    if problems:
        first, _, reason = problems[0].partition(": ")
        raise SymbolNotListed(first, "; ".join([reason, *problems[1:]]))


# --- a whole run ----------------------------------------------------------------------------------------------------


def cap_settings(settings: Settings, today: date | None = None) -> tuple[Settings, str | None]:
    """`settings` with its end capped at yesterday (UTC), and the note saying so (see `cap_end_date`)."""
    end, note = cap_end_date(settings.start, settings.end, today)
    return (settings if note is None else settings.model_copy(update={"end": end})), note


def check_run(settings: Settings, create: bool = False, today: date | None = None,
              check_symbols: bool = True) -> tuple[Settings, Path, list[str]]:
    """Everything a run's command line can be refused for, cheapest first; then the data dir, opened.

    Returns the settings to run (the end capped at yesterday), the data dir (created and
    marked, proven writable) and the notes to print. Raises DataDirRefused, DateRangeRefused
    or SymbolNotListed (the symbols are asked of the listing only when the run downloads,
    and `check_symbols`). Nothing is created before every check passed.
    """
    check_data_dir_usable(settings.data_dir, create)
    settings, note = cap_settings(settings, today)
    if check_symbols and "download" in settings.steps:
        from tasks.source.http import HttpOptions

        # Asked of the first dataset's folders: every symbol has trades, but a run of klines only
        # needs its klines (and a mirror may hold nothing else).
        refuse_unlisted(settings.listing_url, settings.market, settings.symbols,
                        HttpOptions(connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout),
                        settings.dataset)
    return settings, open_usable_data_dir(settings.data_dir, create), [note] if note else []


# --- before Prefect is imported -------------------------------------------------------------------------------------


def early_exit(argv: Sequence[str], data_dir: Literal["write", "read"] = "write") -> None:
    """Answer `--version`, and refuse an unusable `--data-dir`, before the CLI's heavy imports (seconds).

    Called at the top of a CLI module run as `__main__`. It only reads: the CLI's own parser
    checks everything again (and `--help` is left to it). `data_dir`: "write" for the runs
    (`check_data_dir_usable`), "read" for `flows.status` (`check_status_data_dir`). Exits 0
    after printing the version, 2 after one `error: ...` line; returns otherwise.
    """
    import argparse

    if any(a in ("-h", "--help") for a in argv):
        return
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--version", action="store_true")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--create", action="store_true")
    try:
        args, _ = p.parse_known_args(argv)
    except SystemExit:  # e.g. `--data-dir` without a value: the CLI's parser says so properly
        return
    if args.version:
        _exit(0, version_line())
    if args.data_dir is not None:
        try:
            if data_dir == "read":
                check_status_data_dir(args.data_dir)
            else:
                check_data_dir_usable(args.data_dir, args.create)
        except DataDirRefused as exc:
            _exit(2, f"error: {exc}", sys.stderr)


def version_line() -> str:
    """`binance-lake 0.1.0` (the `--version` answer of every CLI)."""
    from tasks.version import __version__

    return f"binance-lake {__version__}"


def _exit(status: int, line: str, stream: Any = None) -> NoReturn:
    print(line, file=stream or sys.stdout)
    raise SystemExit(status)
