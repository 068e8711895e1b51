"""The catalog: which dataset folders the listing has per market and granularity, against what is declared."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import date

from tasks.source.archive_spec import ArchiveSpec
from tasks.source.catalog import read_catalog
from tasks.source.http import HttpOptions
from tests.conftest import REPO
from tests.fake_archive import FakeArchive

HTTP = HttpOptions(retries=1, retry_base_delay=0.01)
DAY = date(2024, 1, 1)


def test_declared_listed_and_unknown_folders_are_told_apart(fake_archive: FakeArchive) -> None:
    fa = fake_archive
    for spec in (ArchiveSpec("um", "BTCUSDT", "daily", DAY, "trades"), ArchiveSpec("um", "BTCUSDT", "daily", DAY,
                                                                                   "bookDepth"),
                 ArchiveSpec("um", "BTCUSDT", "monthly", DAY, "fundingRate"),
                 ArchiveSpec("um", "BTCUSDT", "daily", DAY, "bookTicker")):
        fa.publish(spec, b"x\n")
    fa.publish("data/futures/um/daily/liquidationSnapshot/BTCUSDT/BTCUSDT-liquidationSnapshot-2024-01-01.zip",
               b"x\n")
    catalog = asyncio.run(read_catalog(fa.listing_url, HTTP, ("um",)))
    assert catalog.errors == {}
    verdict = {(r.granularity, r.folder): (r.verdict, r.note) for r in catalog.rows}
    assert verdict[("daily", "trades")] == ("supported", "")
    assert verdict[("daily", "bookDepth")] == ("supported", "")
    assert verdict[("monthly", "fundingRate")] == ("supported", "")
    assert verdict[("daily", "bookTicker")] == ("supported", "publication ended 2024-03-31")
    assert verdict[("daily", "liquidationSnapshot")] == ("not supported", "")
    assert verdict[("daily", "metrics")] == ("not listed", "")  # declared, but this archive has none
    assert ("daily", "fundingRate") not in verdict and ("monthly", "bookDepth") not in verdict  # not published so


def test_the_cli_prints_the_table_and_names_a_listing_that_failed(fake_archive: FakeArchive) -> None:
    fa = fake_archive
    fa.publish(ArchiveSpec("cm", "BTCUSD_PERP", "daily", DAY, "metrics"), b"x\n")
    fa.inject("listing:data/futures/cm/monthly/", "503", times=10)
    done = subprocess.run([sys.executable, "-m", "flows.catalog", "--market", "cm", "--listing-url", fa.listing_url,
                           "--retries", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "cm\tdaily\tmetrics\tsupported\t" in done.stdout.splitlines()
    assert "error: cm monthly: the listing could not be read" in done.stderr and "503" in done.stderr
    bad = subprocess.run([sys.executable, "-m", "flows.catalog", "--market", "eu"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--market" in bad.stderr
