"""Issue 12, bad or surprising input to the CLIs: each case runs the CLI as a real subprocess.

- a well-formed symbol the listing does not know: exit 2 at once, with the closest listed names;
  a listing that cannot be reached is not "not listed" (the run reports it);
- a future end: capped at yesterday (UTC) with one line; a start after yesterday: exit 2;
- a data dir that is a file, read-only or under a mistyped parent: exit 2, one line, nothing
  created (`--create` makes the parents); `flows.status` never creates anything;
- `--help` explains every option of every CLI, `--version` answers on every CLI (without
  importing Prefect for `flows.full_pipeline`);
- `daily_update` back-fills a symbol that is new to the lake from its first published day.

The listing is the fake archive's (tests/fake_archive); runs that get past the checks use
the suite's Prefect API.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from tasks.datadir import is_lake
from tasks.errors import DataDirRefused, DateRangeRefused
from tasks.lake.inventory import coverage, lake_inventory
from tasks.preflight import cap_end_date, check_data_dir_usable, open_usable_data_dir, unlisted_message
from tests.conftest import REPO
from tests.fake_archive import FakeArchive, publish_day, publish_month
from tests.test_flow_e2e import run

FP, DU, ST, SERVE = "flows.full_pipeline", "flows.daily_update", "flows.status", "deployments.serve"
CLIS = (FP, DU, ST, SERVE)
YESTERDAY = datetime.now(UTC).date() - timedelta(days=1)
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def cli(module: str, args: Sequence[str], cwd: Path, api: str | None = None,
        **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m <module> <args>` with a clean BINANCE_LAKE_*/PREFECT_* environment (and `api` as the API)."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(("BINANCE_LAKE_", "PREFECT_"))}
    clean.update(PYTHONPATH=str(REPO), HOME=str(cwd), COLUMNS="200", **env)
    if api:
        clean["PREFECT_API_URL"] = api
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=clean, capture_output=True,
                          text=True, timeout=300)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single `error: ...` line of a refused command (exit 2, no traceback, nothing on stdout)."""
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert done.stdout == ""  # no run started, no summary
    return lines[0]


def run_args(data: Path, fa: FakeArchive | None, symbols: Sequence[str], start: str = "2024-01-01",
             end: str = "2024-01-02") -> list[str]:
    urls = ["--base-url", fa.base_url, "--listing-url", fa.listing_url] if fa else []
    return ["--data-dir", str(data), "--symbols", *symbols, "--start", start, "--end", end, *urls]


def in_parallel(*calls: tuple[str, list[str], Path]) -> list[subprocess.CompletedProcess[str]]:
    """Several CLIs at once (each is mostly Python's and Prefect's imports)."""
    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(lambda c: cli(*c), calls))


# --- symbols --------------------------------------------------------------------------------------------------------


def test_unlisted_symbol_exits_2_at_once_naming_the_closest_listed_ones(fake_archive: FakeArchive,
                                                                        tmp_path: Path) -> None:
    fa = fake_archive
    publish_day(fa, "spot", "XRPUSDC", date(2024, 1, 1), 100, 1, 1)
    publish_month(fa, "spot", "BTCUSDT", date(2023, 12, 1), 100, 1, 2)  # listed by its monthly folder only
    data = tmp_path / "data"
    daily_args = ["--data-dir", str(data), "--symbols", "XRPUSDT", "--base-url", fa.base_url,
                  "--listing-url", fa.listing_url]
    typo, nothing_alike, daily = in_parallel(
        (FP, run_args(data, fa, ["BTCUSDT", "XRPUSDT"]), tmp_path),
        (FP, run_args(data, fa, ["QQQQZZ"]), tmp_path),
        (DU, daily_args, tmp_path),
    )
    assert one_error_line(typo) == "error: XRPUSDT: not listed for spot; did you mean XRPUSDC?"
    assert one_error_line(nothing_alike) == "error: QQQQZZ: not listed for spot; no listed symbol looks like it"
    assert one_error_line(daily) == "error: XRPUSDT: not listed for spot; did you mean XRPUSDC?"
    assert not data.exists()  # refused before anything is created (no data dir, so no server template either)
    assert {r.path for r in fa.requests} == {"/listing"}  # the listing only: no archive, no checksum fetched


@pytest.mark.slow
def test_a_listing_that_cannot_be_reached_is_not_reported_as_not_listed(prefect_api: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens
    done = cli(FP, [*run_args(data, None, ["BTCUSDT"]), "--base-url", dead, "--listing-url", dead,
                    "--steps", "download"], tmp_path, prefect_api, BINANCE_LAKE_RETRIES="0")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "not listed" not in done.stdout + done.stderr
    assert "FAILED data/spot/daily/trades/BTCUSDT/" in done.stdout, done.stdout


@pytest.mark.slow
def test_a_run_from_the_ui_reports_an_unlisted_symbol_and_caps_a_future_end(
    prefect_api: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa = fake_archive
    publish_day(fa, "spot", "XRPUSDC", YESTERDAY, 100, 1, 1)
    # The flow itself, as a deployment runs it: no CLI checked anything before.
    state, report = run(fa, tmp_path / "data", None, market="spot", symbols=("XRPUSDC", "XRPUSDT"),
                        start=YESTERDAY, end=YESTERDAY + timedelta(days=400), granularity="daily",
                        steps=("download", "convert", "merge"))
    assert not state.is_completed()  # the unlisted symbol is a refusal: the run is marked Failed
    refused = [o for o in report.outcomes if o.status == "refused"]
    assert [(o.archive, o.detail) for o in refused] == [("XRPUSDT", "not listed for spot; did you mean XRPUSDC?")]
    assert "REFUSED XRPUSDT: not listed for spot; did you mean XRPUSDC?" in report.summary()
    assert report.missing == []  # neither the unlisted symbol's days nor the future ones are "not published"
    assert f"--end {YESTERDAY + timedelta(days=400)} is in the future: capped at yesterday, {YESTERDAY} (UTC)" \
        in report.notes
    assert sorted(coverage(lake_inventory(tmp_path / "data", "spot", "XRPUSDC"))) == [YESTERDAY]


def test_unlisted_message() -> None:
    assert unlisted_message("X", "um", ["A", "B", "C"]) == "X: not listed for um; did you mean A, B or C?"


# --- days -----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_future_end_is_capped_at_yesterday_with_one_line_and_create_makes_missing_parents(
    prefect_api: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa = fake_archive
    before = YESTERDAY - timedelta(days=1)
    for i, day in enumerate((before, YESTERDAY)):
        publish_day(fa, "spot", "BTCUSDT", day, 200, 1 + 200 * i, i)
    data = tmp_path / "new" / "parent" / "data"  # a missing parent, allowed by --create
    future = YESTERDAY + timedelta(days=700)
    done = cli(FP, [*run_args(data, fa, ["BTCUSDT"], str(before), str(future)), "--create", "--granularity", "daily",
                    "--steps", "download,convert,merge"], tmp_path, prefect_api)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = [ln for ln in done.stderr.splitlines() if "capped" in ln]
    assert said == [f"note: --end {future} is in the future: capped at yesterday, {YESTERDAY} (UTC)"]
    assert "not published" not in done.stdout
    assert sorted(coverage(lake_inventory(data, "spot", "BTCUSDT"))) == [before, YESTERDAY]


def test_a_start_after_yesterday_exits_2(tmp_path: Path) -> None:
    today = YESTERDAY + timedelta(days=1)
    line = one_error_line(cli(FP, run_args(tmp_path / "data", None, ["BTCUSDT"], str(today), str(today)), tmp_path))
    assert line == (f"error: --start {today}: is after yesterday ({YESTERDAY}, UTC): no archive of it can be "
                    "published yet")
    assert not (tmp_path / "data").exists()


def test_cap_end_date() -> None:
    today = date(2024, 3, 10)
    assert cap_end_date(date(2024, 3, 1), date(2024, 3, 9), today) == (date(2024, 3, 9), None)
    assert cap_end_date(date(2024, 3, 1), date(2024, 3, 10), today)[0] == date(2024, 3, 9)
    assert cap_end_date(date(2024, 3, 9), date(2099, 1, 1), today)[0] == date(2024, 3, 9)
    with pytest.raises(DateRangeRefused, match="after yesterday"):
        cap_end_date(date(2024, 3, 10), date(2024, 3, 10), today)


# --- the data dir ---------------------------------------------------------------------------------------------------


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` unwritable even by root: immutable (chattr +i) when root, mode 0555 otherwise."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("root, and no chattr +i here to make a folder read-only")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def test_data_dir_that_is_a_file_read_only_or_under_a_missing_parent_exits_2_naming_it(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    missing = tmp_path / "dtaa" / "lake"  # the parent is a typo of an existing folder
    (tmp_path / "data").mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    cases: list[tuple[str, list[str], Path]] = []
    for path in (a_file, missing, locked):
        cases += [
            (FP, run_args(path, None, ["BTCUSDT"]), tmp_path),
            (DU, ["--data-dir", str(path), "--symbols", "BTCUSDT"], tmp_path),
            (SERVE, ["--data-dir", str(path)], tmp_path),
        ]
    cases += [(ST, ["--data-dir", str(a_file)], tmp_path), (ST, ["--data-dir", str(missing)], tmp_path)]
    before = sorted(str(p) for p in tmp_path.rglob("*") if "home" not in p.parts)
    with read_only(locked):
        results = in_parallel(*cases)
    lines = [one_error_line(done) for done in results]
    for (module, args, _), line in zip(cases, lines, strict=True):
        path = args[args.index("--data-dir") + 1]
        assert line.startswith(f"error: {path}: "), (module, line)
        reason = line.removeprefix(f"error: {path}: ")
        if path == str(a_file):
            assert reason == "exists and is not a directory", (module, line)
        elif path == str(missing):
            expected = "no such data dir" if module == ST else (
                f"{tmp_path / 'dtaa'} does not exist (a typo? --create makes the missing folders)")
            assert reason == expected, (module, line)
        else:
            assert "cannot write in it" in reason or "not readable and writable" in reason, (module, line)
    assert not missing.parent.exists()
    assert sorted(os.listdir(locked)) == []  # not marked, no probe left behind
    assert sorted(str(p) for p in tmp_path.rglob("*") if "home" not in p.parts) == before


def test_data_dir_checks_in_process(tmp_path: Path) -> None:
    nested = tmp_path / "x" / "y" / "data"
    with pytest.raises(DataDirRefused, match=r"x does not exist"):
        check_data_dir_usable(nested)
    assert not (tmp_path / "x").exists()
    assert open_usable_data_dir(nested, create=True) == nested.resolve() and is_lake(nested)
    assert os.listdir(nested) == [".binance-lake"]  # the write probe removed itself
    assert open_usable_data_dir(tmp_path / "new") == (tmp_path / "new").resolve()  # its parent exists: created


# --- help and version -----------------------------------------------------------------------------------------------


def options_without_help(help_text: str) -> list[str]:
    """The options of an argparse `--help` whose entry has no explanation."""
    section = help_text.split("options:", 1)[1]
    entries: list[list[str]] = []
    for line in section.splitlines():
        if re.match(r"^  -", line):
            entries.append([line.strip()])
        elif line.strip() and entries:
            entries[-1].append(line.strip())
    bare = []
    for entry in entries:
        signature, _, rest = entry[0].partition("  ")
        if not (rest.strip() or entry[1:]):
            bare.append(signature)
    return bare


def test_every_option_of_every_cli_is_explained_and_every_cli_answers_version(tmp_path: Path) -> None:
    helps = in_parallel(*[(m, ["--help"], tmp_path) for m in CLIS])
    versions = in_parallel(*[(m, ["--version"], tmp_path) for m in CLIS])
    for module, done in zip(CLIS, helps, strict=True):
        assert done.returncode == 0, done.stderr
        assert "--data-dir" in done.stdout and "--version" in done.stdout
        assert options_without_help(done.stdout) == [], (module, done.stdout)
    for module, done in zip(CLIS, versions, strict=True):
        assert (done.returncode, done.stdout, done.stderr) == (0, f"binance-lake {VERSION}\n", ""), module
    # Before Prefect's import: `-X importtime` lists every module imported.
    timed = cli(FP, ["--version"], tmp_path, PYTHONPROFILEIMPORTTIME="1")
    assert timed.stdout == f"binance-lake {VERSION}\n"
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in timed.stderr.splitlines() if "|" in ln}
    assert "tasks.version" in imported and not {m for m in imported if m.split(".")[0] in ("prefect", "dask")}


def test_daily_update_options_reach_the_flow() -> None:
    # Every option of the CLI but --create, --quiet and --verbose (what the terminal shows) is a
    # parameter of the flow (main passes them on by name).
    from flows.daily_update import daily_update

    done = subprocess.run([sys.executable, "-m", DU, "--help"], cwd=REPO, env=dict(os.environ, COLUMNS="200"),
                          capture_output=True, text=True, timeout=120)
    cli_only = {"help", "version", "create", "quiet", "verbose", "keep-warm"}
    options = set(re.findall(r"--([a-z-]+)", done.stdout.split("options:", 1)[1])) - cli_only
    params = {p.replace("_", "-") for p in daily_update.parameters.properties}
    # --dataset and --interval combine into one parameter (klines-1m, ...), --no-backfill is its negation.
    assert options - {"no-backfill", "dataset", "interval"} <= params
    assert {"backfill-new-symbols", "datasets"} <= params and {"dataset", "interval"} <= options


# --- daily update: a new symbol --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_daily_update_back_fills_a_new_symbol_from_its_first_published_day(
    prefect_api: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa = fake_archive
    # NEWUSDT's history: two monthly archives (with the same days published daily too), then daily ones.
    publish_month(fa, "spot", "NEWUSDT", date(2023, 11, 1), 3000, 1, 1)
    publish_month(fa, "spot", "NEWUSDT", date(2023, 12, 1), 3100, 3001, 2)
    for d in range(1, 6):
        publish_day(fa, "spot", "NEWUSDT", date(2023, 12, d), 10, 100_000 + 10 * d, 10 + d)
        publish_day(fa, "spot", "NEWUSDT", date(2024, 1, d), 100, 6101 + 100 * (d - 1), 20 + d)
    data = tmp_path / "data"
    done = cli(DU, ["--data-dir", str(data), "--symbols", "NEWUSDT", "--today", "2024-01-06", "--base-url",
                    fa.base_url, "--listing-url", fa.listing_url], tmp_path, prefect_api)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "new symbol NEWUSDT: back-filled from 2023-11-01" in done.stdout
    days = sorted(coverage(lake_inventory(data, "spot", "NEWUSDT")))
    assert days[0] == date(2023, 11, 1) and days[-1] == date(2024, 1, 5) and len(days) == 30 + 31 + 5
    # Whole months from their monthly archives (not the daily ones of the same days), January daily.
    granularities = {s.granularity for e in lake_inventory(data, "spot", "NEWUSDT") for s in e.sources
                     if s.first_day.month == 12}
    assert granularities == {"monthly"}
    assert "not published" not in done.stdout and "missing" not in done.stdout  # none before the first day

    # The next day: history now, so only the new day (and the re-probe window) is fetched.
    publish_day(fa, "spot", "NEWUSDT", date(2024, 1, 6), 100, 6601, 30)
    again = cli(DU, ["--data-dir", str(data), "--symbols", "NEWUSDT", "--today", "2024-01-07", "--base-url",
                     fa.base_url, "--listing-url", fa.listing_url], tmp_path, prefect_api)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "new symbol" not in again.stdout
    assert max(coverage(lake_inventory(data, "spot", "NEWUSDT"))) == date(2024, 1, 6)


def test_status_into_a_pipe_closed_early_exits_quietly(tmp_path: Path) -> None:
    # `python -m flows.status ... | head`: the reader has gone before the status is written.
    from tasks.datadir import open_data_dir

    data = open_data_dir(tmp_path / "data")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "flows.status", "--data-dir", str(data), "--json"], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == "", done.stderr[-2000:]
