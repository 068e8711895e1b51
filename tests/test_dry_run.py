"""`--dry-run`: the plan, printed without writing anything (the data dir is not even created) and
without a Prefect server; a real run prints the same plan first.

The CLI runs for real against the fake archive, with a fresh HOME and TMPDIR.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from tasks.labels import day_runs
from tasks.settings import Settings
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.listing import Discovery
from tasks.source.run_plan import plan_run
from tasks.units import format_bytes
from tests.conftest import REPO
from tests.fake_archive import FakeArchive, PublishedArchive, publish_day
from tests.test_process_safety import fresh_env, leftovers

ROWS = 20_000


def spec(day: str) -> ArchiveSpec:
    return ArchiveSpec("spot", "BTCUSDT", "daily", date.fromisoformat(day))


def test_a_failed_listing_of_the_audit_only_granularity_costs_the_audit_not_the_days(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", market="spot", symbols=("BTCUSDT",), start="2024-01-01",
                        end="2024-01-02", granularity="daily", audit_sources=True)
    daily = Discovery("spot", "BTCUSDT", "daily", {spec("2024-01-01"): 1_000, spec("2024-01-02"): 1_000})
    broken = "https://fake/?prefix=data/spot/monthly/trades/BTCUSDT/: HTTP 503 after 3 tries"
    monthly = Discovery("spot", "BTCUSDT", "monthly", error=broken, transient=True)
    plan = plan_run(settings, [daily, monthly], tmp_path / "data")
    [p] = plan.symbols
    assert p.archives == [spec("2024-01-01"), spec("2024-01-02")] and p.counterparts == []
    text = plan.render()
    assert ("BTCUSDT monthly: LISTING FAILED, its days are planned, the audit of monthly against daily is "
            f"not done: {broken}") in text, text
    # The listing the plan reads failed: nothing of the symbol is planned, as before.
    plan = plan_run(settings, [Discovery("spot", "BTCUSDT", "daily", error=broken), monthly], tmp_path / "data")
    assert plan.symbols[0].archives == []
    assert "BTCUSDT daily: LISTING FAILED, nothing of it is planned" in plan.render()


def test_the_plan_names_archives_bytes_and_the_days_not_published_as_ranges(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", market="spot", symbols=("BTCUSDT",), start="2024-01-01",
                        end="2024-01-07", granularity="daily")
    listed = {spec("2024-01-01"): 1_000, spec("2024-01-02"): 2_000, spec("2024-01-05"): 500_000}
    plan = plan_run(settings, [Discovery("spot", "BTCUSDT", "daily", listed)], tmp_path / "data")
    text = plan.render()
    assert "BTCUSDT daily: 3 archives (2024-01-01..2024-01-05), 503 kB" in text, text
    assert "to download: 3 archives, 503 kB (503,000 bytes)" in text, text
    assert "not published: 4 days, 2024-01-03..2024-01-04 (2 days), 2024-01-06..2024-01-07 (2 days)" in text, text
    assert "BTCUSDT: in the lake: nothing yet" in text
    assert not (tmp_path / "data").exists()
    d = date(2024, 1, 1)
    assert day_runs([d, d + timedelta(2), d + timedelta(1), d + timedelta(5)]) == [
        (d, d + timedelta(2)), (d + timedelta(5), d + timedelta(5))]


def publish(fa: FakeArchive, days: range) -> list[PublishedArchive]:
    return [publish_day(fa, "spot", "BTCUSDT", date(2024, 1, 1) + timedelta(days=i), ROWS, 1 + i * ROWS, i)
            for i in days]


def cli(fa: FakeArchive, data: Path, env: dict[str, str], end: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.full_pipeline", "--symbols", "BTCUSDT", "--start", "2024-01-01", "--end", end,
         "--granularity", "daily", "--data-dir", str(data), "--base-url", fa.base_url, "--listing-url",
         fa.listing_url, *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder`: (size, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.slow
def test_dry_run_writes_nothing_and_a_real_run_prints_the_same_plan_first(
    fake_archive: FakeArchive, tmp_path: Path
) -> None:
    home, tmp, data = tmp_path / "home", tmp_path / "tmp", tmp_path / "data"
    home.mkdir()
    tmp.mkdir()
    env = fresh_env(home, tmp)
    first = publish(fake_archive, range(3))
    fake_archive.clear_requests()

    dry = cli(fake_archive, data, env, "2024-01-05", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not data.exists()  # not created
    assert leftovers(tmp) == []  # no server, no run folder
    assert all(r.path.endswith("/listing") for r in fake_archive.requests)  # the listing only: no archive fetched
    size = sum(a.zip_size for a in first)
    assert f"to download: 3 archives, {format_bytes(size)} ({size:,} bytes)" in dry.stdout, dry.stdout
    assert "not published: 2 days, 2024-01-04..2024-01-05 (2 days)" in dry.stdout, dry.stdout
    assert "BTCUSDT: in the lake: nothing yet" in dry.stdout

    real = cli(fake_archive, data, env, "2024-01-05")
    assert real.returncode == 0, real.stderr[-3000:]
    assert dry.stdout.strip() in real.stderr  # the same plan, at the top of the real run

    added = publish(fake_archive, range(3, 4))
    before = snapshot(data)
    again = cli(fake_archive, data, env, "2024-01-05", "--dry-run")
    assert again.returncode == 0, again.stderr
    assert snapshot(data) == before  # nothing written, not even the lock or the server's template
    assert "BTCUSDT daily: 4 archives (2024-01-01..2024-01-04)" in again.stdout, again.stdout
    assert "3 in the lake already" in again.stdout
    assert f"to download: 1 archive, {format_bytes(added[0].zip_size)} ({added[0].zip_size:,} bytes)" in again.stdout
    assert f"in the lake: 3 of the 5 days, {3 * ROWS:,} rows (it holds 2024-01-01..2024-01-03)" in again.stdout
    assert "not published: 1 day, 2024-01-05" in again.stdout


def test_dry_run_refuses_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a lake")
    done = subprocess.run(
        [sys.executable, "-m", "flows.full_pipeline", "--symbols", "BTCUSDT", "--start", "2024-01-01", "--end",
         "2024-01-02", "--data-dir", str(target), "--listing-url", "http://127.0.0.1:9/listing", "--dry-run"],
        cwd=REPO, env=fresh_env(tmp_path, tmp_path), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "not a directory" in done.stderr
    assert target.read_text() == "not a lake"
