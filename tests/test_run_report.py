"""The run summary as the CLI prints it: problems first, days missing as ranges, printed once,
true about where the rows are; a refusal already known does not fail the run again (unless --strict).

The CLI runs as a subprocess (`python -m flows.full_pipeline`) against the fake archive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow.dataset as ds

from tasks.report import ArchiveOutcome, PipelineReport
from tasks.source.plan import MissingDay
from tests.conftest import REPO
from tests.fake_archive import FakeArchive, corrupt_zip, make_spec, publish_day, render_csv

SYMBOL = "BTCUSDT"


def cli(fa: FakeArchive, data: Path, prefect_api: str, home: Path, *extra: str,
        start: str = "2024-01-01", end: str = "2024-01-10") -> subprocess.CompletedProcess[str]:
    """One run of the ad hoc CLI; stdout and stderr together, as a terminal shows them."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(home)}
    args = [sys.executable, "-m", "flows.full_pipeline", "--market", "spot", "--symbols", SYMBOL,
            "--start", start, "--end", end, "--granularity", "daily", "--concurrency", "2", "--features",
            "dollar:threshold=1e5", "--data-dir", str(data), "--base-url", fa.base_url,
            "--listing-url", fa.listing_url, *extra]
    return subprocess.run(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)


def summary_of(out: str) -> list[str]:
    """The printed summary: from its first line (a problem or the headline) to the end."""
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines)
                 if line.startswith(("REFUSED ", "FAILED ", "refused again, ", "archives: ")))
    return lines[first:]


def test_summary_orders_problems_first_and_collapses_missing_days() -> None:
    report = PipelineReport()
    report.outcomes = [
        ArchiveOutcome("data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-12-28.zip", "ingested", rows=10,
                       where="merged"),
        ArchiveOutcome("data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-12-29.zip", "refused",
                       detail="checksum mismatch: x", kind="checksum mismatch"),
    ]
    report.missing = [MissingDay("spot", "BTCUSDT", date(2024, 12, d), "daily archive not published")
                      for d in range(1, 28)]
    report.missing.append(MissingDay("spot", "BTCUSDT", date(2024, 12, 30), "archive answers 404"))
    lines = report.summary().splitlines()
    assert lines[0] == "REFUSED data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-12-29.zip: checksum mismatch: x"
    assert lines[1] == "archives: 1 landed in the lake (10 rows), 1 refused"
    assert "  spot BTCUSDT 2024-12-01..2024-12-27: 27 days, daily archive not published" in lines
    assert "  spot BTCUSDT 2024-12-30: 1 day, archive answers 404" in lines
    assert not report.ok
    # The same refusal known from an earlier run: reported, not failing; --strict fails on it.
    report.outcomes[1].known_since = "2024-12-30T01:02:03+00:00"
    assert report.ok and report.summary().splitlines()[0] == (
        "refused again, known since 2024-12-30: data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-12-29.zip: "
        "checksum mismatch: x")
    report.strict = True
    assert not report.ok and report.summary().startswith("REFUSED ") and "known since 2024-12-30" in report.summary()


def test_a_known_refusal_does_not_fail_the_run_again_unless_strict(
    prefect_api: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa, data, home = fake_archive, tmp_path / "data", tmp_path / "home"
    good = publish_day(fa, "spot", SYMBOL, date(2024, 1, 1), 500, 1, 1)
    mismatch = publish_day(fa, "spot", SYMBOL, date(2024, 1, 2), 500, 501, 2, bad_checksum=True)
    broken = make_spec("spot", SYMBOL, "2024-01-03")  # its checksum is right: the ZIP itself is broken
    fa.publish_zip(broken, corrupt_zip(render_csv(good.trades, "spot", date(2024, 1, 1)), broken.csv_name,
                                       mode="bad_crc"))
    # 2024-01-04..2024-01-10: not published.

    first = cli(fa, data, prefect_api, home)
    assert first.returncode == 1, first.stdout[-3000:]
    summary = summary_of(first.stdout)
    # Problems first, each archive named; both new, so the run fails.
    assert summary[0].startswith(f"REFUSED {mismatch.key}: checksum mismatch"), summary
    assert summary[1].startswith(f"REFUSED {broken.key}: corrupt archive"), summary
    assert summary[2] == "archives: 1 landed in the lake (500 rows), 2 refused", summary
    assert "  spot BTCUSDT 2024-01-04..2024-01-10: 7 days, daily archive not published" in summary
    # Printed once: the log's last line is one line of counts, not the summary again.
    lines = first.stdout.splitlines()
    assert lines.count(summary[2]) == 1 and sum(line.startswith("stages (wall clock") for line in lines) == 1
    # Prefect's INFO lines (the flow's one-line log of counts among them) are not shown without --verbose.
    assert "run done, archives:" not in first.stdout
    note = json.loads(mismatch.spec.quarantine_note(data).read_text())
    assert note["kind"] == "checksum mismatch" and note["published_sha256"] == mismatch.advertised_sha256
    first_refused = note["refused_at"]

    # Binance never fixes them: the next run refuses them again, says they are known, and succeeds.
    second = cli(fa, data, prefect_api, home)
    assert second.returncode == 0, second.stdout[-3000:]
    summary = summary_of(second.stdout)
    today = datetime.now(UTC).date().isoformat()
    assert summary[0].startswith(f"refused again, known since {today}: {mismatch.key}: checksum mismatch"), summary
    assert summary[1].startswith(f"refused again, known since {today}: {broken.key}: corrupt archive"), summary
    assert summary[2] == "archives: 1 already in the lake (500 rows), 2 refused again (known)", summary
    # The date of the first refusal is kept when the same refusal is recorded again.
    assert json.loads(mismatch.spec.quarantine_note(data).read_text())["refused_at"] == first_refused
    # The features were up to date: said so, not "recomputed (no earlier result)" from the cache record.
    assert any(line.startswith("features dollar") and ": up to date, " in line for line in summary), summary
    assert "no earlier result" not in second.stdout

    strict = cli(fa, data, prefect_api, home, "--strict")
    assert strict.returncode == 1, strict.stdout[-3000:]
    summary = summary_of(strict.stdout)
    assert summary[0].startswith(f"REFUSED {mismatch.key}: checksum mismatch") and "known since" in summary[0]

    # Binance re-publishes the day (a new checksum): it is fetched and lands.
    fixed = publish_day(fa, "spot", SYMBOL, date(2024, 1, 2), 500, 501, 2)
    assert fixed.advertised_sha256 != mismatch.advertised_sha256
    third = cli(fa, data, prefect_api, home)
    assert third.returncode == 0, third.stdout[-3000:]
    summary = summary_of(third.stdout)
    assert summary[0].startswith(f"refused again, known since {today}: {broken.key}"), summary
    assert summary[1] == ("archives: 1 landed in the lake (500 rows), 1 already in the lake (500 rows), "
                          "1 refused again (known)"), summary
    rows = ds.dataset(data / "lake" / "trades", partitioning="hive").count_rows()
    assert rows == 1000


def test_the_headline_says_where_the_rows_are_after_each_step(
    prefect_api: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa, data, home = fake_archive, tmp_path / "data", tmp_path / "home"
    for d in (1, 2):
        publish_day(fa, "spot", SYMBOL, date(2024, 1, d), 300, 1 + 300 * (d - 1), d)
    span = {"start": "2024-01-01", "end": "2024-01-02"}

    run = cli(fa, data, prefect_api, home, "--steps", "download", **span)
    assert run.returncode == 0, run.stdout[-3000:]
    assert summary_of(run.stdout)[0] == "archives: 2 downloaded and verified"
    run = cli(fa, data, prefect_api, home, "--steps", "download", **span)
    assert run.returncode == 0, run.stdout[-3000:]
    assert summary_of(run.stdout)[0] == "archives: 2 already downloaded and verified"
    run = cli(fa, data, prefect_api, home, "--steps", "download,convert", **span)
    assert run.returncode == 0, run.stdout[-3000:]
    assert summary_of(run.stdout)[0] == "archives: 2 converted, waiting in staging (600 rows)"
    assert "in the lake" not in summary_of(run.stdout)[0]
    run = cli(fa, data, prefect_api, home, "--steps", "download,convert,merge", **span)
    assert run.returncode == 0, run.stdout[-3000:]
    assert summary_of(run.stdout)[0] == "archives: 2 landed in the lake (600 rows)"
    run = cli(fa, data, prefect_api, home, **span)
    assert run.returncode == 0, run.stdout[-3000:]
    summary = summary_of(run.stdout)
    assert summary[0] == "archives: 2 already in the lake (600 rows)"
    assert any(line.startswith("features dollar") and ": recomputed, 600 trades" in line for line in summary)


def test_archives_landed_counts_this_runs_verified_downloads_and_staged_archives_once(tmp_path: Path) -> None:
    from tasks.lake.landed import archives_landed

    data = tmp_path / "data"
    old, new = [make_spec("spot", SYMBOL, f"2024-01-0{d}") for d in (1, 2)]
    staged_only = make_spec("spot", SYMBOL, "2024-01-03")
    for spec in (old, new):
        spec.local_zip(data).parent.mkdir(parents=True, exist_ok=True)
        spec.local_zip(data).write_bytes(b"PK")
        spec.local_zip(data).with_name(spec.file_name + ".CHECKSUM").write_text("0" * 64)
    half = make_spec("spot", SYMBOL, "2024-01-04")  # a download without its stored checksum: not verified
    half.local_zip(data).write_bytes(b"PK")
    for spec in (new, staged_only):
        spec.staging_file(data).parent.mkdir(parents=True, exist_ok=True)
        spec.staging_file(data).write_bytes(b"PAR1")
    (new.staging_file(data).parent / ".tmp-x.parquet").write_bytes(b"")  # a temporary: not landed
    stamp = old.local_zip(data).with_name(old.file_name + ".CHECKSUM").stat().st_mtime
    os.utime(old.local_zip(data).with_name(old.file_name + ".CHECKSUM"), (stamp - 100, stamp - 100))
    since = stamp - 50
    # `new` downloaded and staged (once), `staged_only` staged; `old` landed before the run.
    assert archives_landed(data, "spot", [SYMBOL], since) == 2
    assert archives_landed(data, "spot", [SYMBOL], stamp - 200) == 3
    assert archives_landed(data, "spot", ["ETHUSDT"], since) == 0


def test_daily_update_cli_a_known_refusal_exits_0_and_strict_exits_1(
    prefect_api: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa, data = fake_archive, tmp_path / "data"
    publish_day(fa, "spot", SYMBOL, date(2024, 1, 1), 300, 1, 1)
    bad = publish_day(fa, "spot", SYMBOL, date(2024, 1, 2), 300, 301, 2, bad_checksum=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api,
           "PREFECT_HOME": str(tmp_path / "home"), "BINANCE_LAKE_FEATURES": "dollar:threshold=1e5"}
    args = [sys.executable, "-m", "flows.daily_update", "--data-dir", str(data), "--symbols", SYMBOL,
            "--today", "2024-01-03", "--reprobe-days", "2", "--base-url", fa.base_url,
            "--listing-url", fa.listing_url]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*args, *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=300)

    first = run()
    assert first.returncode == 1, first.stdout[-3000:]
    assert summary_of(first.stdout)[0].startswith(f"REFUSED {bad.key}: checksum mismatch")
    again = run()
    assert again.returncode == 0, again.stdout[-3000:]
    assert summary_of(again.stdout)[0].startswith("refused again, known since ")
    assert bad.key in summary_of(again.stdout)[0]
    strict = run("--strict")
    assert strict.returncode == 1, strict.stdout[-3000:]
    assert summary_of(strict.stdout)[0].startswith(f"REFUSED {bad.key}: checksum mismatch")
