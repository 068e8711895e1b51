"""SIGKILL the real CLI (and its Dask workers) mid-run, run again: the lake equals a clean run's.

For trades, and for aggTrades with 1m klines in one run (both derived from the same
generated trades: a kill may land in either dataset's pass).

Also proves the ad hoc path: the clean run has no PREFECT_API_URL, so the CLI starts and
shares its own API server with the Dask workers (the ephemeral-mode trap).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tasks.datasets import dataset
from tasks.source.archive_spec import ArchiveSpec
from tests.conftest import REPO, seed_data_dir
from tests.fake_archive import FakeArchive, publish_day
from tests.fake_archive.book_ticker import day_of_book_ticker, render_book_ticker_csv
from tests.fake_archive.derived import aggregate, klines_of, render_agg_csv, render_klines_csv, with_orders
from tests.fake_archive.generate import generate_trades
from tests.fake_archive.price_klines import day_of_price_klines, render_price_klines_csv

pytestmark = pytest.mark.slow

DAYS = 6
ROWS = 250_000


def publish(fa: FakeArchive, dataset_id: str, market: str = "spot") -> int:
    """Publish DAYS daily archives of the dataset; return the rows the lake must hold."""
    rows = 0
    first_update = 4_000_000_000_000
    for i in range(DAYS):
        day = date(2024, 1, 1) + timedelta(days=i)
        if dataset_id == "bookTicker":
            b = day_of_book_ticker(day, ROWS, i, first_update)
            first_update = int(b.update_id[-1])
            fa.publish(ArchiveSpec(market, "BTCUSDT", "daily", day, dataset_id), render_book_ticker_csv(b))
            rows += len(b)
            continue
        if dataset_id == "markPriceKlines-1m":
            k = day_of_price_klines(day, seed=i)
            fa.publish(ArchiveSpec(market, "BTCUSDT", "daily", day, dataset_id), render_price_klines_csv(k))
            rows += len(k)
            continue
        if dataset_id == "trades":
            publish_day(fa, "spot", "BTCUSDT", day, ROWS, 1 + i * ROWS, i)
            rows += ROWS
            continue
        spec = ArchiveSpec("spot", "BTCUSDT", "daily", day, dataset_id)
        trades = with_orders(generate_trades(ROWS, spec.start, spec.end, 1 + i * ROWS, i, market="spot"), seed=i)
        if dataset_id == "aggTrades":
            agg = aggregate(trades, 1 + rows)
            body, n = render_agg_csv(agg, "spot", day), len(agg)
        else:
            start = int(spec.start.timestamp()) * 1_000_000
            k = klines_of(trades, start, start + 86_400_000_000)
            body, n = render_klines_csv(k, "spot", day), len(k)
        fa.publish(spec, body)
        rows += n
    return rows


def cli(fa: FakeArchive, data_dir: Path, log: Path, env_extra: dict[str, str | None],
        dataset_ids: tuple[str, ...] = ("trades",), market: str = "spot") -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    for k, v in env_extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    args = [sys.executable, "-m", "flows.full_pipeline", "--market", market, "--symbols", "BTCUSDT",
            "--start", "2024-01-01", "--end", f"2024-01-{DAYS:02d}", "--granularity", "daily", "--concurrency", "2",
            "--data-dir", str(data_dir), "--base-url", fa.base_url, "--listing-url", fa.listing_url]
    if dataset_ids != ("trades",):
        names = [d.split("-", 1)[0] for d in dataset_ids]
        intervals = sorted({d.split("-", 1)[1] for d in dataset_ids if "-" in d})
        args += ["--dataset", *names, *(["--interval", *intervals] if intervals else [])]
    with open(log, "ab") as out:
        # Own process group, so SIGKILL takes the Dask workers and any server down too, like a crash.
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill_when(proc: subprocess.Popen[bytes], condition: Callable[[], bool], timeout: float = 120) -> bool:
    """SIGKILL the run's process group once `condition` holds; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("kill condition never met")


def lake_digest(data_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(data_dir / "lake")): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((data_dir / "lake").rglob("*")) if p.is_file()}


def hidden(data_dir: Path, sub: str) -> list[Path]:
    root = data_dir / sub
    return [p for p in root.rglob(".*")] if root.exists() else []


@pytest.mark.parametrize(("market", "dataset_ids"), [("spot", ("trades",)), ("spot", ("aggTrades", "klines-1m")),
                                                     ("um", ("bookTicker", "markPriceKlines-1m"))],
                         ids=["trades", "agg+klines", "bookTicker+markPrice"])
def test_kill_at_several_points_then_resume_equals_clean_run(
    prefect_api: str, fake_archive: FakeArchive, tmp_path: Path, dataset_ids: tuple[str, ...], market: str,
    server_template_db: Path,
) -> None:
    fa = fake_archive
    expected_rows = {d: publish(fa, d, market) for d in dataset_ids}
    folders = {d: dataset(d).lake_folder for d in dataset_ids}
    log = tmp_path / "runs.log"

    # Clean reference run, ad hoc: no API configured, a fresh Prefect home (a used data dir: no migration).
    ref = seed_data_dir(tmp_path / "ref", server_template_db)
    proc = cli(fa, ref, log, {"PREFECT_API_URL": None, "PREFECT_HOME": str(tmp_path / "home-ref")}, dataset_ids,
               market)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    expected = lake_digest(ref)
    # Merged into one target-size file per dataset; the run's gap report sits outside the lake.
    assert sorted(expected) == sorted(f"{f}/market={market}/symbol=BTCUSDT/2024-01-01_2024-01-{DAYS:02d}.parquet"
                                      for f in folders.values())

    data = tmp_path / "data"
    env = {"PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "home")}
    lakes = {d: data / "lake" / f / f"market={market}" / "symbol=BTCUSDT" for d, f in folders.items()}
    staging = {d: data / "staging" / f / f"market={market}" / "symbol=BTCUSDT" for d, f in folders.items()}
    first = staging[dataset_ids[0]]
    slow = ArchiveSpec(market, "BTCUSDT", "daily", date(2024, 1, 2), dataset_ids[0]).key
    kill_points = [
        # mid-download: a half-written archive is on disk (the server stalls the body)
        ("download", lambda: bool(hidden(data, "archive"))),
        # mid-conversion: a temporary Parquet file exists in staging
        ("convert", lambda: bool(hidden(data, "staging"))),
        # after some archives were converted, others not
        ("commit", lambda: first.exists() and len(list(first.glob("*.parquet"))) >= 3),
        # mid-merge: the merged file is being written (or its swap journalled) in the lake folder
        ("merge", lambda: bool(hidden(data, "lake"))),
    ]
    killed = []
    for name, condition in kill_points:
        if name == "download":
            fa.inject(slow, "stall", delay=30)
        proc = cli(fa, data, log, env, dataset_ids, market)
        if kill_when(proc, condition):
            killed.append(name)
            # Whatever the kill left, readers never see a partial file: only committed names.
            assert all(not p.name.startswith(".") for lake in lakes.values() for p in lake.glob("*.parquet"))
    fa.clear_faults()
    print("kill points hit:", killed)
    assert "download" in killed, killed  # at least the deterministic kill point was hit

    proc = cli(fa, data, log, env, dataset_ids, market)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert lake_digest(data) == expected
    assert hidden(data, "lake") == [] and hidden(data, "archive") == [] and hidden(data, "staging") == []
    for d in dataset_ids:
        assert not list(staging[d].glob("*.parquet"))  # every staged archive was merged
        key = dataset(d).key
        keys = ds.dataset(lakes[d], format="parquet").to_table(columns=[key])[key].cast("int64").to_numpy()
        assert len(keys) == expected_rows[d] and len(set(keys.tolist())) == len(keys), d
