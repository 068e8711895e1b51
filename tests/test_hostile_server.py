"""A hostile archive server (issue 11, items 6-9): one bad answer must never block good data.

Every case runs against the real fake archive (aiohttp on 127.0.0.1, real sockets):
garbage `.CHECKSUM`, malformed listing pages, odd folder names, a trickling body, a body far
longer than listed, 429/503 with Retry-After, 403 AccessDenied, redirects to another host and a
gzip Content-Encoding. The last test runs the whole flow with several of them at once.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from tasks.errors import ChecksumMismatch, OversizedResponse, RedirectRefused, TransientNetworkError
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.download import download_archive, fetch_checksums
from tasks.source.http import HttpOptions, parse_retry_after
from tasks.source.listing import discover, list_symbols
from tests.fake_archive import FakeArchive, publish_day, sha256_hex

#: Short deadlines and retries: each hostile case costs about a second.
FAST = HttpOptions(connect_timeout=2, read_timeout=2, retries=1, retry_base_delay=0.01, deadline_floor=1.0,
                   min_rate=1e9)
DAY = date(2024, 1, 1)
SPEC = ArchiveSpec("spot", "BTCUSDT", "daily", DAY)


def spec(symbol: str, day: int) -> ArchiveSpec:
    return ArchiveSpec("spot", symbol, "daily", date(2024, 1, day))


def no_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def responses_done(fa: FakeArchive, key: str, n: int) -> list[tuple[float, int]]:
    """The server's record of `n` finished answers for `key`: it notices a hung-up client at its next write."""
    deadline = time.monotonic() + 10
    while len(done := fa.responses_done(key)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return done


# --- item 6: each symbol and each archive fails alone ----------------------------------------------------


def test_garbage_or_unreachable_checksum_fails_alone(fake_archive: FakeArchive) -> None:
    fa = fake_archive
    good = [publish_day(fa, "spot", "BTCUSDT", date(2024, 1, d), 50, 1 + 50 * d, d) for d in (1, 2)]
    fa.publish(spec("BTCUSDT", 3), b"")
    fa.put(spec("BTCUSDT", 3).key + ".CHECKSUM", b"<html><body>502 Bad Gateway</body></html>")
    fa.publish(spec("BTCUSDT", 4), b"")
    fa.inject(spec("BTCUSDT", 4).key + ".CHECKSUM", "trickle", delay=0.3, times=FAST.retries + 1)
    got = asyncio.run(fetch_checksums([spec("BTCUSDT", d) for d in (1, 2, 3, 4)], fa.base_url, FAST, 4))
    assert [p.sha256 for p in got[:2]] == [g.sha256 for g in good] and not any(p.error for p in got[:2])
    garbage, slow = got[2], got[3]
    assert garbage.sha256 is None and not garbage.transient
    assert garbage.error is not None and "not a sha256 checksum" in garbage.error
    assert spec("BTCUSDT", 3).checksum_url(fa.base_url) in garbage.error
    assert slow.sha256 is None and slow.transient and slow.error is not None and "deadline" in slow.error
    assert fa.count(spec("BTCUSDT", 4).key + ".CHECKSUM") == FAST.retries + 1


def test_malformed_listing_page_fails_its_folder_alone(fake_archive: FakeArchive) -> None:
    fa = fake_archive
    for sym in ("BTCUSDT", "ETHUSDT", "XRPUSDT"):
        publish_day(fa, "spot", sym, DAY, 50, 1, 1)
    fa.inject("listing:data/spot/daily/trades/ETHUSDT/", "garbage", body=b"<ListBucketResult><Contents><Key>")
    fa.inject("listing:data/spot/daily/trades/XRPUSDT/", "503", times=FAST.retries + 1)
    found = {d.symbol: d for d in asyncio.run(discover(fa.listing_url, "spot", ["BTCUSDT", "ETHUSDT", "XRPUSDT"],
                                                       ["daily"], FAST))}
    assert found["BTCUSDT"].error is None and found["BTCUSDT"].periods() == {DAY}
    eth, xrp = found["ETHUSDT"], found["XRPUSDT"]
    assert eth.archives == {} and not eth.transient
    assert eth.error is not None and "invalid listing" in eth.error and "ETHUSDT" in eth.error
    assert eth.prefix == "data/spot/daily/trades/ETHUSDT/"
    assert xrp.transient and xrp.error is not None and "HTTP 503 SlowDown" in xrp.error


def test_odd_names_in_a_listing_are_refused_not_fatal(fake_archive: FakeArchive) -> None:
    fa = fake_archive
    publish_day(fa, "spot", "BTCUSDT", DAY, 50, 1, 1)
    publish_day(fa, "spot", "ETHUSDT", DAY, 50, 1, 1)
    long_name = "A" * 41 + "-trades-2024-01-02.zip"  # the shape of an archive, a symbol too long to be one
    odd_folders = ["btcusdt", "BAD NAME", "A" * 41, "ÄÖÜ", "..", "BTC%2FUSDT"]
    fa.put(f"data/spot/daily/trades/BTCUSDT/{long_name}", b"PK")
    fa.put("data/spot/daily/trades/BTCUSDT/extra/BTCUSDT-trades-2024-01-03.zip", b"PK")
    for folder in odd_folders:
        fa.put(f"data/spot/daily/trades/{folder}/x.zip", b"PK")
    (btc,) = asyncio.run(discover(fa.listing_url, "spot", ["BTCUSDT"], ["daily"], FAST))
    assert btc.error is None and btc.periods() == {DAY}
    rejected = dict(btc.rejected)
    assert "unexpected archive name" in rejected[f"data/spot/daily/trades/BTCUSDT/{long_name}"]
    assert rejected["data/spot/daily/trades/BTCUSDT/extra/"] == "unexpected sub-folder"
    # The daily update takes its symbols from the folders: an odd one is skipped, never passed on.
    assert asyncio.run(list_symbols(fa.listing_url, "spot", "daily", FAST)) == ["BTCUSDT", "ETHUSDT"]


# --- item 7: a deadline from the listed size ---------------------------------------------------------------


def test_deadline_grows_with_the_listed_size() -> None:
    opts = HttpOptions(deadline_floor=2.0, min_rate=1000.0, size_margin=10)
    assert opts.deadline_for(5000) == 7.0 and opts.deadline_for(None) == 2.0
    assert opts.size_limit(100) == 110 and opts.size_limit(None) is None


def test_trickling_body_hits_its_deadline_with_bounded_retries(fake_archive: FakeArchive, tmp_path: Path) -> None:
    pub = publish_day(fake_archive, "spot", "BTCUSDT", DAY, 200, 1, 1)
    # One byte every 0.2 s is never silent for read_timeout (2 s), so only the deadline can end it.
    fake_archive.inject(SPEC.key, "trickle", delay=0.2, times=FAST.retries + 1)
    with pytest.raises(TransientNetworkError, match=r"deadline of 1\.0 s exceeded") as info:
        asyncio.run(download_archive(SPEC, pub.sha256, fake_archive.base_url, tmp_path, FAST, pub.zip_size))
    assert SPEC.file_name in str(info.value) and f"of {pub.zip_size} listed" in str(info.value)
    assert fake_archive.count(SPEC.key) == FAST.retries + 1
    done = responses_done(fake_archive, SPEC.key, FAST.retries + 1)
    assert len(done) == FAST.retries + 1 and all(n < pub.zip_size for _, n in done)  # cut off, not waited out
    assert no_files(tmp_path) == []


# --- item 8: a size bound ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["oversize", "oversize_chunked"])
def test_oversized_body_is_refused_at_its_bound_and_not_kept(
    kind: Any, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa = fake_archive
    pub = publish_day(fa, "spot", "BTCUSDT", DAY, 200, 1, 1)
    huge = 256 << 20
    fa.inject(SPEC.key, kind, size=huge, times=2)
    opts = HttpOptions(connect_timeout=2, read_timeout=5, retries=1, retry_base_delay=0.01, size_margin=64 << 10)
    with pytest.raises(OversizedResponse) as info:
        asyncio.run(download_archive(SPEC, pub.sha256, fa.base_url, tmp_path, opts, pub.zip_size))
    msg = str(info.value)
    assert SPEC.url(fa.base_url) in msg and f"{pub.zip_size} bytes" in msg
    assert ("Content-Length 268435456" in msg) if kind == "oversize" else ("stopped reading after" in msg)
    assert fa.count(SPEC.key) == 1  # refused at once: not retried, not fetched again
    ((_, sent),) = responses_done(fa, SPEC.key, 1)
    assert sent < 64 << 20  # the server could not push the body: the client stopped reading it
    # Nothing large is kept: the quarantine holds the reason, not the body; no temporary is left.
    q = SPEC.quarantine_zip(tmp_path)
    assert not q.exists() and not SPEC.local_zip(tmp_path).exists()
    note = json.loads(q.with_name(q.name + ".reason.json").read_text())
    assert note["listed_bytes"] == pub.zip_size and note["body_kept"] is False
    assert "larger than listed" in note["reason"]
    assert sum(p.stat().st_size for p in no_files(tmp_path)) < 4096


# --- item 9: Retry-After, 403, redirects, Content-Encoding -------------------------------------------------


def test_parse_retry_after() -> None:
    now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("-1") is None


@pytest.mark.parametrize("status", ["429", "503"])
def test_retry_after_is_honoured_and_capped(status: Any, fake_archive: FakeArchive, tmp_path: Path) -> None:
    fa = fake_archive
    pub = publish_day(fa, "spot", "BTCUSDT", DAY, 200, 1, 1)
    opts = HttpOptions(connect_timeout=2, read_timeout=2, retries=2, retry_base_delay=0.001, retry_after_cap=0.5)
    fa.inject(SPEC.key, status, retry_after="0.4")  # not delta-seconds: ignored, the backoff applies
    fa.inject(SPEC.key, status, retry_after="1")  # more than the cap: cut to 0.5 s
    res = asyncio.run(download_archive(SPEC, pub.sha256, fa.base_url, tmp_path, opts, pub.zip_size))
    assert res.sha256 == pub.sha256
    first, second, third = (r.at for r in fa.requests if r.path == "/" + SPEC.key)
    assert third - second >= 0.45  # waited for the server (the backoff alone is about 1 ms)
    # A Retry-After of an hour is cut to the cap: the download still ends within seconds.
    fa.clear_requests()
    SPEC.local_zip(tmp_path).unlink()
    fa.inject(SPEC.key, status, retry_after="3600")
    asyncio.run(download_archive(SPEC, pub.sha256, fa.base_url, tmp_path, opts, pub.zip_size))
    first, second = (r.at for r in fa.requests if r.path == "/" + SPEC.key)
    assert 0.45 <= second - first < 30


def test_access_denied_is_transient_with_bounded_retries(fake_archive: FakeArchive, tmp_path: Path) -> None:
    fa = fake_archive
    pub = publish_day(fa, "spot", "BTCUSDT", DAY, 200, 1, 1)
    # The bucket's S3 AccessDenied during outages (binance-public-data#10, #319, #444), on every kind of request.
    fa.inject("listing", "access_denied", times=FAST.retries)
    fa.inject(SPEC.key + ".CHECKSUM", "access_denied", times=FAST.retries)
    fa.inject(SPEC.key, "access_denied", times=FAST.retries)
    (found,) = asyncio.run(discover(fa.listing_url, "spot", ["BTCUSDT"], ["daily"], FAST))
    (published,) = asyncio.run(fetch_checksums([SPEC], fa.base_url, FAST, 1))
    assert found.periods() == {DAY} and published.sha256 == pub.sha256
    asyncio.run(download_archive(SPEC, pub.sha256, fa.base_url, tmp_path, FAST, pub.zip_size))
    assert SPEC.local_zip(tmp_path).read_bytes() == fa.get(SPEC.key)
    # An outage longer than the retries: transient (worth another run), never "not published".
    fa.clear_requests()
    fa.inject(SPEC.key + ".CHECKSUM", "access_denied", times=FAST.retries + 1)
    (published,) = asyncio.run(fetch_checksums([SPEC], fa.base_url, FAST, 1))
    assert published.transient and published.missing_reason is None
    assert published.error is not None and "HTTP 403 AccessDenied: Access Denied" in published.error
    assert fa.count(SPEC.key + ".CHECKSUM") == FAST.retries + 1


def test_redirects_stay_on_the_host_unless_allowed(fake_archive: FakeArchive, tmp_path: Path) -> None:
    fa = fake_archive
    pub = publish_day(fa, "spot", "BTCUSDT", DAY, 200, 1, 1)
    fa.put("mirror/" + SPEC.file_name, fa.get(SPEC.key) or b"")
    # Same host: followed.
    fa.inject(SPEC.key, "redirect", location="/mirror/" + SPEC.file_name)
    res = asyncio.run(download_archive(SPEC, pub.sha256, fa.base_url, tmp_path, FAST, pub.zip_size))
    assert res.sha256 == pub.sha256 and fa.count("mirror/" + SPEC.file_name) == 1
    SPEC.local_zip(tmp_path).unlink()
    with FakeArchive() as other:  # another origin (another port on loopback)
        other.put(SPEC.key, fa.get(SPEC.key) or b"")
        fa.inject(SPEC.key, "redirect", location=other.url(SPEC.key), times=2)
        with pytest.raises(RedirectRefused, match="another host") as info:
            asyncio.run(download_archive(SPEC, pub.sha256, fa.base_url, tmp_path, FAST, pub.zip_size))
        assert other.url(SPEC.key) in str(info.value) and SPEC.url(fa.base_url) in str(info.value)
        assert other.count(SPEC.key) == 0 and not SPEC.local_zip(tmp_path).exists()
        allowed = HttpOptions(**{**FAST.__dict__, "cross_host_redirects": True})
        res = asyncio.run(download_archive(SPEC, pub.sha256, fa.base_url, tmp_path, allowed, pub.zip_size))
        assert res.sha256 == pub.sha256 and other.count(SPEC.key) == 1


def test_bytes_hashed_and_sized_are_the_bytes_as_served(fake_archive: FakeArchive, tmp_path: Path) -> None:
    fa = fake_archive
    publish_day(fa, "spot", "BTCUSDT", DAY, 2000, 1, 1)
    zip_bytes = fa.get(SPEC.key) or b""
    # An object stored encoded (S3 `Content-Encoding` metadata): the listing sizes and the checksum
    # describes the stored bytes. Decoding them (aiohttp's default) would hash something else.
    stored = gzip.compress(zip_bytes)
    fa.put(SPEC.key, stored, content_encoding="gzip")
    fa.put(SPEC.key + ".CHECKSUM", f"{sha256_hex(stored)}  {SPEC.file_name}".encode())
    (found,) = asyncio.run(discover(fa.listing_url, "spot", ["BTCUSDT"], ["daily"], FAST))
    assert found.archives[SPEC] == len(stored)
    res = asyncio.run(download_archive(SPEC, sha256_hex(stored), fa.base_url, tmp_path, FAST, len(stored)))
    assert res.bytes == len(stored) and SPEC.local_zip(tmp_path).read_bytes() == stored
    assert {r.accept_encoding for r in fa.requests if r.path == "/" + SPEC.key} == {"identity"}
    # A server that gzips the archive on the fly despite `identity`: the bytes sent are not the
    # published archive; refused, and the reason says why.
    SPEC.local_zip(tmp_path).unlink()
    fa.publish_zip(SPEC, zip_bytes)
    fa.inject(SPEC.key, "gzip", times=2)
    with pytest.raises(ChecksumMismatch, match="Content-Encoding: gzip"):
        asyncio.run(download_archive(SPEC, sha256_hex(zip_bytes), fa.base_url, tmp_path, FAST, len(zip_bytes)))


# --- the whole flow ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_flow_names_each_hostile_answer_and_lands_the_good_archives(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.full_pipeline import full_pipeline
    from flows.runtime import dask_runner
    from tasks.lake.inventory import lake_source
    from tasks.report import PipelineReport
    from tasks.settings import Settings

    fa = fake_archive
    good = [publish_day(fa, "spot", "BTCUSDT", date(2024, 1, d), 300, 1 + 300 * d, d) for d in (1, 2)]
    good.append(publish_day(fa, "spot", "ETHUSDT", date(2024, 1, 1), 300, 1, 11))
    good.append(publish_day(fa, "spot", "BNBUSDT", date(2024, 1, 1), 300, 1, 21))
    garbage = publish_day(fa, "spot", "ETHUSDT", date(2024, 1, 2), 300, 301, 12)
    fa.put(garbage.checksum_key, b"<html>Service Unavailable</html>")
    oversized = publish_day(fa, "spot", "ETHUSDT", date(2024, 1, 3), 300, 601, 13)
    fa.inject(oversized.key, "oversize_chunked", size=64 << 20, times=5)
    trickling = publish_day(fa, "spot", "BNBUSDT", date(2024, 1, 2), 300, 301, 22)
    fa.inject(trickling.key, "trickle", delay=0.5, times=5)
    publish_day(fa, "spot", "XRPUSDT", date(2024, 1, 1), 300, 1, 31)
    fa.inject("listing:data/spot/daily/trades/XRPUSDT/", "garbage", body=b"<html>not a listing</html>", times=5)

    settings = Settings(
        data_dir=tmp_path / "data", base_url=fa.base_url, listing_url=fa.listing_url, dask_address=dask_address,
        market="spot", symbols=("BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT"), start=date(2024, 1, 1),
        end=date(2024, 1, 3), granularity="daily", steps=("download", "convert", "merge", "validate", "gaps"),
        retries=1, retry_base_delay=0.01, read_timeout=8, download_deadline_floor_s=6.0, min_download_rate=1e9,
        download_size_margin_bytes=64 << 10, ingest_batch_wait_s=0.2,
    )
    state = full_pipeline.with_options(task_runner=dask_runner(settings))(settings=settings, return_state=True)
    result = state.result(raise_on_failure=False)
    assert state.is_failed() and isinstance(result, PipelineReport) and not result.ok  # a Failed state, no raise
    report: PipelineReport = result
    st = {o.archive: o.status for o in report.outcomes}
    detail = {o.archive: o.detail for o in report.outcomes}
    xrp = "data/spot/daily/trades/XRPUSDT/"
    assert st == {**{g.key: "ingested" for g in good}, garbage.key: "refused", oversized.key: "refused",
                  trickling.key: "failed", xrp: "refused"}
    assert "not a sha256 checksum" in detail[garbage.key] and garbage.checksum_key in detail[garbage.key]
    assert "body larger than listed" in detail[oversized.key]
    assert "deadline of 6.0 s exceeded" in detail[trickling.key]
    assert "invalid listing" in detail[xrp]
    for key in (garbage.key, oversized.key, trickling.key, xrp):
        assert key in state.message and f"{st[key].upper()} {key}: " in report.summary()
    # Every good archive is in the lake; the bad ones are not, and nothing large was kept.
    data = settings.data_dir
    for g in good:
        held = lake_source(g.spec, g.sha256, data)
        assert held is not None and held[1]["rows"] == g.rows
    assert fa.count(trickling.key) == 2 and fa.count(oversized.key) == 1 and fa.count(garbage.key) == 0
    assert not oversized.spec.quarantine_zip(data).exists()
    assert sum(p.stat().st_size for p in (data / "quarantine").rglob("*") if p.is_file()) < 4096
    eth_gaps = next(g for g in report.gap_reports if g.symbol == "ETHUSDT")
    assert {r["archive"] for r in eth_gaps.refused} == {garbage.key, oversized.key}
    # Conversions started as archives verified, not after the slowest download: they were sent
    # to Dask while the trickling archive's first attempt was still on, and ran before its last ended
    # (two attempts of 6 s: a window wide enough for a busy 2-core machine, where 3 s was not).
    cuts = sorted(t for t, _ in responses_done(fa, trickling.key, 2))
    assert report.stages["convert"][0] < cuts[0] < cuts[-1]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    ingests = [r for r in runs if r.name.startswith("convert ")]
    assert ingests and all(r.start_time is not None and r.start_time.timestamp() < cuts[-1] for r in ingests), \
        ([(r.name, r.start_time.timestamp() - cuts[-1] if r.start_time else None) for r in ingests], report.stages)
