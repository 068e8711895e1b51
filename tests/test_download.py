"""Listing, checksums and downloads against the fake archive, through real HTTP."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest

from tasks.errors import ChecksumMismatch, NotPublished, TransientNetworkError, UnexpectedResponse
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.download import (
    download_archive,
    fetch_checksums,
    local_archive_matches,
    parse_checksum,
    verified_download,
)
from tasks.source.http import HttpOptions
from tasks.source.listing import discover, list_symbols
from tests.fake_archive import FakeArchive, publish_day

FAST = HttpOptions(connect_timeout=2, read_timeout=1.0, retries=2, retry_base_delay=0.01)
DAY = date(2024, 1, 1)
SPEC = ArchiveSpec("spot", "BTCUSDT", "daily", DAY)


def test_parse_checksum_formats() -> None:
    sha = "a" * 64
    assert parse_checksum(f"{sha}  BTCUSDT-trades-2024-01-01.zip".encode(), "x") == sha
    assert parse_checksum(f"{sha.upper()}  f.zip\n".encode(), "x") == sha
    with pytest.raises(UnexpectedResponse, match="x"):
        parse_checksum(b"<html>oops</html>", "x")


def test_download_verifies_and_commits(fake_archive: FakeArchive, tmp_path: Path) -> None:
    pub = publish_day(fake_archive, "spot", "BTCUSDT", DAY, 500, 1, 1)
    res = asyncio.run(download_archive(SPEC, pub.sha256, fake_archive.base_url, tmp_path, FAST))
    assert res.path == SPEC.local_zip(tmp_path) and res.path.read_bytes() == fake_archive.get(SPEC.key)
    assert res.sha256 == pub.sha256 and not res.refetched
    assert local_archive_matches(SPEC, tmp_path, pub.sha256)
    assert not local_archive_matches(SPEC, tmp_path, "0" * 64)
    assert [p.name for p in res.path.parent.iterdir() if p.name.startswith(".")] == []


def test_a_download_counts_as_verified_only_with_its_zip_and_a_readable_checksum(
    fake_archive: FakeArchive, tmp_path: Path
) -> None:
    pub = publish_day(fake_archive, "spot", "BTCUSDT", DAY, 200, 1, 1)
    assert verified_download(SPEC, tmp_path) is None  # nothing downloaded
    res = asyncio.run(download_archive(SPEC, pub.sha256, fake_archive.base_url, tmp_path, FAST))
    assert verified_download(SPEC, tmp_path) == pub.sha256
    checksum = res.path.with_name(res.path.name + ".CHECKSUM")
    saved = checksum.read_bytes()
    checksum.write_bytes(b"<html>not a checksum</html>")  # a damaged record proves nothing
    assert verified_download(SPEC, tmp_path) is None and not local_archive_matches(SPEC, tmp_path, pub.sha256)
    checksum.write_bytes(saved)
    res.path.unlink()  # the record without its zip
    assert verified_download(SPEC, tmp_path) is None and not local_archive_matches(SPEC, tmp_path, pub.sha256)


def test_404_is_not_published_and_asked_once(fake_archive: FakeArchive, tmp_path: Path) -> None:
    with pytest.raises(NotPublished, match=r"BTCUSDT-trades-2024-01-01\.zip"):
        asyncio.run(download_archive(SPEC, "0" * 64, fake_archive.base_url, tmp_path, FAST))
    assert fake_archive.count(SPEC.key) == 1
    assert not SPEC.local_zip(tmp_path).exists()


@pytest.mark.parametrize("fault", ["503", "500", "cut", "access_denied"])
def test_transient_faults_are_retried_then_raise_transient(fault: str, fake_archive: FakeArchive,
                                                           tmp_path: Path) -> None:
    pub = publish_day(fake_archive, "spot", "BTCUSDT", DAY, 20_000, 1, 1)
    fake_archive.inject(SPEC.key, fault, times=FAST.retries + 1)  # every attempt fails
    with pytest.raises(TransientNetworkError, match=SPEC.file_name):
        asyncio.run(download_archive(SPEC, pub.sha256, fake_archive.base_url, tmp_path, FAST))
    assert fake_archive.count(SPEC.key) == FAST.retries + 1  # bounded: the retries, no more
    assert not SPEC.local_zip(tmp_path).exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no partial file left anywhere
    # A fault that clears before the retries run out costs nothing but the retry.
    fake_archive.clear_requests()
    fake_archive.inject(SPEC.key, fault, times=FAST.retries)
    res = asyncio.run(download_archive(SPEC, pub.sha256, fake_archive.base_url, tmp_path, FAST))
    assert res.sha256 == pub.sha256 and fake_archive.count(SPEC.key) == FAST.retries + 1


def test_slow_answer_times_out_as_transient(fake_archive: FakeArchive, tmp_path: Path) -> None:
    pub = publish_day(fake_archive, "spot", "BTCUSDT", DAY, 200, 1, 1)
    fake_archive.inject(SPEC.key, "slow", delay=3.0)
    with pytest.raises(TransientNetworkError, match="timed out"):
        asyncio.run(download_archive(SPEC, pub.sha256, fake_archive.base_url, tmp_path, replace(FAST, retries=0)))


def test_reset_is_transient(fake_archive: FakeArchive, tmp_path: Path) -> None:
    pub = publish_day(fake_archive, "spot", "BTCUSDT", DAY, 200, 1, 1)
    # aiohttp itself retries a reset once, and download_archive FAST.retries times.
    fake_archive.inject(SPEC.key, "reset", times=2 * (FAST.retries + 1))
    with pytest.raises(TransientNetworkError):
        asyncio.run(download_archive(SPEC, pub.sha256, fake_archive.base_url, tmp_path, FAST))


def test_checksum_mismatch_refetches_once_then_quarantines(fake_archive: FakeArchive, tmp_path: Path) -> None:
    pub = publish_day(fake_archive, "spot", "BTCUSDT", DAY, 300, 1, 1, bad_checksum=True)
    with pytest.raises(ChecksumMismatch, match=SPEC.file_name) as info:
        asyncio.run(download_archive(SPEC, pub.advertised_sha256, fake_archive.base_url, tmp_path, FAST))
    assert "after one re-fetch" in str(info.value)
    assert fake_archive.count(SPEC.key) == 2 and fake_archive.count(SPEC.key + ".CHECKSUM") == 1
    assert not SPEC.local_zip(tmp_path).exists()
    q = SPEC.quarantine_zip(tmp_path)
    assert q.read_bytes() == fake_archive.get(SPEC.key)
    note = json.loads(q.with_name(q.name + ".reason.json").read_text())
    assert note["sha256"] == pub.sha256 and note["published_sha256"] == pub.advertised_sha256


def test_checksum_fixed_upstream_is_accepted_on_refetch(fake_archive: FakeArchive, tmp_path: Path) -> None:
    pub = publish_day(fake_archive, "spot", "BTCUSDT", DAY, 300, 1, 1)
    # We were told an old checksum; the published one is right: the re-fetch picks it up.
    res = asyncio.run(download_archive(SPEC, "f" * 64, fake_archive.base_url, tmp_path, FAST))
    assert res.refetched and res.sha256 == pub.sha256


def test_checksums_and_listing_pagination(tmp_path: Path) -> None:
    with FakeArchive(page_size=2) as fa:
        days = [date(2024, 1, d) for d in range(1, 6)]
        pubs = [publish_day(fa, "spot", "BTCUSDT", d, 50, 1 + 50 * i, i) for i, d in enumerate(days)]
        publish_day(fa, "spot", "ETHUSDT", DAY, 50, 1, 9)
        fa.inject("listing", "ok")
        fa.inject("listing", "503")  # page 2 fails once: retried inside the listing
        found = asyncio.run(discover(fa.listing_url, "spot", ["BTCUSDT"], ["daily"], FAST))
        assert len(found) == 1 and found[0].periods() == set(days)
        assert fa.count("listing") >= 6  # 10 keys, 2 per page, plus the failed one
        specs = sorted(found[0].archives)
        published = asyncio.run(fetch_checksums([*specs, ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, 9))],
                                                fa.base_url, FAST, 4))
        assert [p.sha256 for p in published[:5]] == [p.sha256 for p in pubs]
        assert published[5].sha256 is None and "404" in (published[5].missing_reason or "")
        assert asyncio.run(list_symbols(fa.listing_url, "spot", "daily", FAST)) == ["BTCUSDT", "ETHUSDT"]


def test_full_listing_pages_arrive_whole(tmp_path: Path) -> None:
    """A page of 1,000 keys (~190 kB, as S3 answers) reaches the client in several pieces: all are read."""
    with FakeArchive(page_size=1000) as fa:
        for i in range(600):  # 1,200 keys: a full first page and a second one
            fa.publish(ArchiveSpec("spot", "BTCUSDT", "daily", date(2022, 1, 1) + timedelta(days=i)), b"")
        found = asyncio.run(discover(fa.listing_url, "spot", ["BTCUSDT"], ["daily"], FAST))
        assert len(found[0].archives) == 600
        assert fa.count("listing") == 2
