"""Tests of the fake archive fixture itself: dialects, ZIPs, the S3-like server and its faults."""

from __future__ import annotations

import asyncio
import csv
import gc
import hashlib
import http.client
import io
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime
from urllib.parse import quote
from xml.etree import ElementTree as ET

import aiohttp
import numpy as np
import pytest

from tasks.source.archive_spec import ArchiveSpec, Market
from tests.fake_archive import (
    CHECKSUM_MISMATCH,
    FakeArchive,
    absolute_zip,
    build_standard_archive,
    checksum_text,
    corrupt_zip,
    empty_zip,
    generate_trades,
    make_zip,
    publish_day,
    publish_month,
    render_csv,
    sha256_hex,
    traversal_zip,
    two_member_zip,
)

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
KEY = "data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-01.zip"


def get(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a request; HTTP errors are answers too."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def listing(fa: FakeArchive, prefix: str, marker: str | None = None, delimiter: str | None = "/") -> ET.Element:
    """One listing page, built the way the project's client builds it."""
    url = f"{fa.listing_url}?prefix={quote(prefix, safe='')}"
    if delimiter:
        url += f"&delimiter={quote(delimiter, safe='')}"
    if marker:
        url += f"&marker={quote(marker, safe='')}"
    status, headers, body = get(url)
    assert status == 200 and headers["Content-Type"] == "application/xml"
    return ET.fromstring(body)


def text(root: ET.Element, tag: str) -> str | None:
    node = root.find(NS + tag)
    return None if node is None else (node.text or "")


def walk(fa: FakeArchive, prefix: str, delimiter: str | None = "/") -> tuple[list[str], list[str], int]:
    """All keys and common prefixes under `prefix`, following markers; also the page count."""
    keys: list[str] = []
    prefixes: list[str] = []
    marker = None
    for pages in range(1, 100):
        root = listing(fa, prefix, marker, delimiter)
        assert text(root, "Prefix") == prefix  # the echo, not a folder
        page_keys = [c.findtext(NS + "Key") or "" for c in root.iter(NS + "Contents")]
        page_prefixes = [p.findtext(NS + "Prefix") or "" for p in root.iter(NS + "CommonPrefixes")]
        keys += page_keys
        prefixes += page_prefixes
        if text(root, "IsTruncated") != "true":
            assert text(root, "NextMarker") is None
            return keys, prefixes, pages
        if delimiter:
            marker = text(root, "NextMarker")
            assert marker
        else:
            assert text(root, "NextMarker") is None  # S3 only sends it with a delimiter
            marker = page_keys[-1]
    raise AssertionError("listing never ended")


@pytest.fixture
def fa() -> Iterator[FakeArchive]:
    with FakeArchive(slow_delay=0.3) as server:
        yield server


@pytest.fixture
def spot_day_csv() -> bytes:
    trades = generate_trades(50, date(2024, 1, 1), date(2024, 1, 2), 1, 0)
    return render_csv(trades, "spot", date(2024, 1, 1))


# --- listing -----------------------------------------------------------------------------------


def test_listing_pagination_walks_all_keys_via_next_marker() -> None:
    with FakeArchive(page_size=2) as fa:
        for day in range(1, 4):
            fa.publish(ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, day)), b"1,2\n")
        fa.publish(ArchiveSpec("spot", "ETHUSDT", "daily", date(2024, 1, 1)), b"1,2\n")
        prefix = "data/spot/daily/trades/BTCUSDT/"
        keys, prefixes, pages = walk(fa, prefix)
        assert keys == fa.keys(prefix) and len(keys) == 6  # zips and their .CHECKSUM
        assert prefixes == [] and pages == 3
        assert all(k.startswith(prefix) for k in keys)
        # Without a delimiter there is no NextMarker: the client continues from the last key.
        keys, _, pages = walk(fa, "data/spot/", delimiter=None)
        assert keys == fa.keys("data/spot/") and len(keys) == 8 and pages == 4


def test_listing_common_prefixes_and_prefix_echo() -> None:
    with FakeArchive(page_size=2) as fa:
        symbols = ["ADAUSDT", "BTCUSDT", "ETHUSDT", "XRPUSDT", "ZECUSDT"]
        for sym in symbols:
            fa.publish(ArchiveSpec("spot", sym, "daily", date(2024, 1, 1)), b"1\n")
            fa.publish(ArchiveSpec("spot", sym, "daily", date(2024, 1, 2)), b"1\n")
        fa.put("data/spot/daily/trades/README.txt", b"hello")
        root = listing(fa, "data/spot/daily/trades/")
        assert root.tag == NS + "ListBucketResult"
        assert [text(root, t) for t in ("Name", "Prefix", "Marker", "MaxKeys", "Delimiter", "IsTruncated")] == [
            "data.binance.vision",
            "data/spot/daily/trades/",
            "",
            "2",
            "/",
            "true",
        ]
        assert text(root, "NextMarker") == "data/spot/daily/trades/BTCUSDT/"
        keys, prefixes, pages = walk(fa, "data/spot/daily/trades/")
        assert prefixes == [f"data/spot/daily/trades/{s}/" for s in symbols]
        assert keys == ["data/spot/daily/trades/README.txt"] and pages == 3


def test_listing_contents_fields_and_max_keys(fa: FakeArchive) -> None:
    stamp = datetime(2024, 1, 2, 7, 44, 41, tzinfo=UTC)
    body = b"x" * 123
    fa.put("data/a/b.zip", body, last_modified=stamp)
    fa.put("data/a/c.zip", b"y")
    root = listing(fa, "data/a/")
    first = next(root.iter(NS + "Contents"))
    assert first.findtext(NS + "Key") == "data/a/b.zip"
    assert first.findtext(NS + "LastModified") == "2024-01-02T07:44:41.000Z"
    assert first.findtext(NS + "Size") == "123"
    assert first.findtext(NS + "ETag") == '"' + hashlib.md5(body).hexdigest() + '"'
    assert first.findtext(NS + "StorageClass") == "STANDARD"
    _, _, raw = get(f"{fa.listing_url}?delimiter=/&prefix=data/a/&max-keys=1")
    page = ET.fromstring(raw)
    assert text(page, "MaxKeys") == "1" and text(page, "IsTruncated") == "true"
    assert text(page, "NextMarker") == "data/a/b.zip"
    assert b"&quot;" in raw  # ETag quotes escaped, as S3 does
    _, _, raw = get(f"{fa.listing_url}?delimiter=/&prefix=data/a/&marker=data/a/b.zip")
    assert [c.findtext(NS + "Key") for c in ET.fromstring(raw).iter(NS + "Contents")] == ["data/a/c.zip"]


# --- objects -----------------------------------------------------------------------------------


def test_404_is_s3_no_such_key(fa: FakeArchive) -> None:
    status, headers, body = get(fa.url(KEY))
    assert status == 404 and headers["Content-Type"] == "application/xml"
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>')
    assert b"<Message>The specified key does not exist.</Message>" in body
    assert f"<Key>{KEY}</Key>".encode() in body
    assert fa.count(KEY) == 1 and fa.requests[-1].status == 404


def test_get_head_range_and_publish(fa: FakeArchive, spot_day_csv: bytes) -> None:
    stored = fa.publish(KEY, spot_day_csv)
    status, headers, body = get(fa.url(KEY))
    assert status == 200 and headers["Content-Type"] == "application/zip"
    assert int(headers["Content-Length"]) == len(body) == stored.size
    assert sha256_hex(body) == stored.sha256 and stored.checksum_matches
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.namelist() == ["BTCUSDT-trades-2024-01-01.csv"]
        assert zf.infolist()[0].compress_type == zipfile.ZIP_DEFLATED
        assert zf.read("BTCUSDT-trades-2024-01-01.csv") == spot_day_csv
    status, headers, checksum = get(fa.url(KEY + ".CHECKSUM"))
    assert checksum.decode() == f"{stored.sha256}  BTCUSDT-trades-2024-01-01.zip"
    status, headers, empty = get(fa.url(KEY), method="HEAD")
    assert status == 200 and empty == b"" and int(headers["Content-Length"]) == stored.size
    status, headers, part = get(fa.url(KEY), headers={"Range": "bytes=10-19"})
    assert status == 206 and part == body[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(body)}"
    assert fa.remove(KEY) and get(fa.url(KEY))[0] == 404
    assert fa.count(KEY, method="HEAD") == 1 and fa.count(KEY) == 4


def test_bad_checksum_publish(fa: FakeArchive, spot_day_csv: bytes) -> None:
    stored = fa.publish(KEY, spot_day_csv, checksum_override="ab" * 32)
    assert not stored.checksum_matches
    assert get(fa.url(KEY + ".CHECKSUM"))[2] == b"ab" * 32 + b"  BTCUSDT-trades-2024-01-01.zip"


def test_large_body_streams(fa: FakeArchive) -> None:
    body = bytes(range(256)) * (100 << 12)  # 100 MiB
    fa.put("data/big.zip", body)

    async def fetch() -> tuple[int, int]:
        async with aiohttp.ClientSession() as session, session.get(fa.url("data/big.zip")) as resp:
            size = 0
            async for chunk in resp.content.iter_chunked(1 << 20):
                size += len(chunk)
            return resp.content_length or -1, size

    assert asyncio.run(fetch()) == (len(body), len(body))


def test_usable_from_another_process(fa: FakeArchive) -> None:
    fa.put("data/hello.txt", b"hello")
    code = f"import urllib.request; print(urllib.request.urlopen({fa.url('data/hello.txt')!r}).read().decode())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "hello"


# --- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("500", 500, b"InternalError"), ("503", 503, b"SlowDown"), ("access_denied", 403, b"AccessDenied"),
     ("404", 404, b"NoSuchKey")],
)  # fmt: skip
def test_status_faults_once_then_success(fa: FakeArchive, kind: str, status: int, code: bytes) -> None:
    fa.put(KEY, b"zipbytes")
    fa.inject(KEY, kind)  # type: ignore[arg-type]
    got, headers, body = get(fa.url(KEY))
    assert got == status and f"<Code>{code.decode()}</Code>".encode() in body
    assert headers["Content-Type"] == "application/xml"
    assert get(fa.url(KEY))[0] == 200
    assert [r.status for r in fa.requests] == [status, 200]


def test_cut_sends_full_length_then_closes(fa: FakeArchive) -> None:
    fa.put(KEY, b"0123456789" * 100)
    fa.inject(KEY, "cut")
    with pytest.raises(http.client.IncompleteRead) as info:
        urllib.request.urlopen(fa.url(KEY), timeout=10).read()
    assert len(info.value.partial) == 500 and info.value.expected == 500

    async def aio() -> None:
        fa.inject(KEY, "cut")
        async with aiohttp.ClientSession() as session, session.get(fa.url(KEY)) as resp:
            assert resp.status == 200 and resp.content_length == 1000
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()

    asyncio.run(aio())
    assert get(fa.url(KEY))[2] == b"0123456789" * 100


def test_reset_answers_nothing(fa: FakeArchive) -> None:
    fa.put(KEY, b"data")
    fa.inject(KEY, "reset")
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected, urllib.error.URLError)):
        urllib.request.urlopen(fa.url(KEY), timeout=10).read()
    assert fa.requests[-1].status == 0

    async def aio() -> None:
        # aiohttp's client silently retries an idempotent request once after a dropped
        # connection, so it takes two resets in a row to reach the caller.
        fa.inject(KEY, "reset", times=2)
        async with aiohttp.ClientSession() as session:
            with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
                await session.get(fa.url(KEY))

    asyncio.run(aio())
    assert fa.pending_faults() == 0
    assert get(fa.url(KEY))[2] == b"data"


def test_bytes_per_second_paces_each_response() -> None:
    body = bytes(range(256)) * (3 * 4096)  # 3 MiB
    with FakeArchive(bytes_per_second=6 * 2**20) as paced:
        paced.put(KEY, body)
        paced.put("tiny", b"x")
        t0 = time.perf_counter()
        assert get(paced.url(KEY))[2] == body
        assert time.perf_counter() - t0 >= 0.45  # 3 MiB at 6 MiB/s: 0.5 s
        t0 = time.perf_counter()
        assert get(paced.url("tiny"))[2] == b"x"
        assert time.perf_counter() - t0 < 0.4  # paced by its size, not by the chunk


def test_slow_and_stall_delay_the_answer(fa: FakeArchive) -> None:
    fa.put(KEY, b"data" * 10)
    fa.inject(KEY, "slow", delay=0.3)
    fa.inject(KEY, "stall")  # the server default: 0.3 s here
    for _ in range(2):
        t0 = time.perf_counter()
        assert get(fa.url(KEY))[2] == b"data" * 10
        assert time.perf_counter() - t0 >= 0.28
    t0 = time.perf_counter()
    get(fa.url(KEY))
    assert time.perf_counter() - t0 < 0.25

    async def aio() -> None:
        fa.inject(KEY, "slow", delay=2.0)
        timeout = aiohttp.ClientTimeout(sock_read=0.1)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(asyncio.TimeoutError):
                await session.get(fa.url(KEY))

    asyncio.run(aio())


def test_fault_queue_prefix_times_and_listing(fa: FakeArchive) -> None:
    fa.publish(KEY, b"1\n")
    fa.inject("data/spot/", "503", prefix=True, times=2)
    fa.inject(KEY, "500")  # an exact target wins over a prefix
    assert [get(fa.url(KEY + s))[0] for s in ("", ".CHECKSUM", "", "", ".CHECKSUM")] == [500, 503, 503, 200, 200]
    # Listing faults, with an "ok" first so that only the second page request fails.
    fa.inject("listing", "ok")
    fa.inject("listing", "access_denied")
    url = f"{fa.listing_url}?delimiter=/&prefix=data/"
    assert [get(url)[0] for _ in range(3)] == [200, 403, 200]
    assert fa.count("listing") == 3 and fa.count("/listing?delimiter=/&prefix=data/") == 3
    assert fa.pending_faults() == 0
    with pytest.raises(ValueError):
        fa.inject(KEY, "teapot")  # type: ignore[arg-type]


def test_stop_is_clean() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fa = FakeArchive(slow_delay=5.0).start()
        fa.put(KEY, b"x")
        fa.inject(KEY, "slow")

        async def abandon() -> None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
                with pytest.raises(asyncio.TimeoutError):
                    await session.get(fa.url(KEY))

        asyncio.run(abandon())  # leaves a handler sleeping in the server
        thread = fa._thread
        t0 = time.perf_counter()
        fa.stop()
        assert time.perf_counter() - t0 < 0.5  # the sleeping handler is woken, not waited for
        assert thread is not None and not thread.is_alive() and not fa.running
        fa.stop()  # idempotent
        gc.collect()
    assert [str(w.message) for w in caught] == []
    with pytest.raises(RuntimeError):
        _ = fa.base_url


# --- CSV dialects, checksum, ZIPs ----------------------------------------------------------------


def first_line(market: Market, day: date, **kwargs: object) -> str:
    trades = generate_trades(20, day, date.fromordinal(day.toordinal() + 1), 3_000_000_000, 1, market=market)
    return render_csv(trades, market, day, **kwargs).split(b"\n", 1)[0].decode()  # type: ignore[arg-type]


def test_spot_dialects() -> None:
    line = first_line("spot", date(2024, 12, 31))
    assert re.fullmatch(r"3000000000,\d+\.\d{8},\d+\.\d{8},\d+\.\d{8},\d{13},(True|False),True", line), line
    line = first_line("spot", date(2025, 1, 1))
    assert re.fullmatch(r"3000000000,\d+\.\d{8},\d+\.\d{8},\d+\.\d{8},\d{16},(True|False),True", line), line


def test_futures_dialects() -> None:
    assert re.fullmatch(
        r"3000000000,\d+\.\d{2},\d+\.\d{3},\d+\.\d+,\d{13},(true|false)", first_line("um", date(2022, 8, 10))
    )
    assert first_line("um", date(2022, 8, 11)) == "id,price,qty,quote_qty,time,is_buyer_maker"
    assert first_line("cm", date(2024, 1, 1)) == "id,price,qty,base_qty,time,is_buyer_maker"
    line = first_line("cm", date(2024, 1, 1), header=False)
    assert re.fullmatch(r"3000000000,\d+\.\d{2},\d+,\d+\.\d{8},\d{13},(true|false)", line), line


@pytest.mark.parametrize("market", ["spot", "um", "cm"])
def test_rendered_values_match_trades(market: str) -> None:
    day = date(2025, 1, 1)
    trades = generate_trades(500, day, date(2025, 1, 2), 10, 3, market=market, gaps=[(100, 104)])  # type: ignore[arg-type]
    body = render_csv(trades, market, day, header=False)  # type: ignore[arg-type]
    assert body.endswith(b"\n") and not body.endswith(b"\n\n")
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert len(rows) == len(trades) == 500
    ids = np.array([int(r[0]) for r in rows])
    assert (ids == trades.id).all() and trades.id_gaps() == [(100, 104)] and ids[-1] == 514
    assert np.array_equal([float(r[1]) for r in rows], trades.price)
    assert np.array_equal([float(r[2]) for r in rows], trades.qty)
    third = trades.base_qty if market == "cm" else trades.quote_qty
    assert np.array_equal([float(r[3]) for r in rows], third)
    times = np.array([int(r[4]) for r in rows])
    assert (np.diff(times) >= 0).all() and times.min() >= 1735689600000 * (1000 if market == "spot" else 1)
    assert np.array_equal([r[5] in ("True", "true") for r in rows], trades.is_buyer_maker)
    assert trades.qty.min() > 0 and (np.abs(trades.quote_qty - trades.price * trades.qty) < 1e-6).all()


def test_generate_rejects_bad_gaps() -> None:
    with pytest.raises(ValueError):
        generate_trades(10, 0, 1000, 1, 0, gaps=[(1, 3)])  # before the first row
    with pytest.raises(ValueError):
        generate_trades(10, 0, 1000, 1, 0, gaps=[(50, 60)])  # after the last row


def test_checksum_text_format() -> None:
    zipped = make_zip(b"1,2\n", "X-trades-2024-01-01.csv")
    text_ = checksum_text(zipped, "X-trades-2024-01-01.zip")
    assert re.fullmatch(r"[0-9a-f]{64}  X-trades-2024-01-01\.zip", text_)
    assert not text_.endswith("\n") and text_.split()[0] == sha256_hex(zipped)


def test_bad_zips(spot_day_csv: bytes) -> None:
    name = "BTCUSDT-trades-2024-01-01.csv"
    for mode in ("truncated", "garbage"):
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(io.BytesIO(corrupt_zip(spot_day_csv, name, mode)))  # type: ignore[arg-type]
    with zipfile.ZipFile(io.BytesIO(corrupt_zip(spot_day_csv, name, "bad_crc"))) as zf:
        assert zf.namelist() == [name]
        with pytest.raises((zipfile.BadZipFile, zlib.error)):
            zf.read(name)
    assert zipfile.ZipFile(io.BytesIO(empty_zip())).namelist() == []
    assert len(zipfile.ZipFile(io.BytesIO(two_member_zip(spot_day_csv))).namelist()) == 2
    assert zipfile.ZipFile(io.BytesIO(traversal_zip(spot_day_csv))).namelist() == ["../evil.csv"]
    assert zipfile.ZipFile(io.BytesIO(absolute_zip(spot_day_csv))).namelist() == ["/etc/evil.csv"]


# --- scenarios ---------------------------------------------------------------------------------


def test_standard_archive(fa: FakeArchive) -> None:
    world = build_standard_archive(fa, rows_per_day=1100, rows_per_month=600)
    assert len(world.archives) == 14 and len(world.bad) == 1
    assert world.bad[0].spec == ArchiveSpec("spot", "ETHUSDT", "daily", date(2024, 1, 3))
    assert world.bad[0].bad == CHECKSUM_MISMATCH and world.bad[0].advertised_sha256 != world.bad[0].sha256
    (missing,) = world.missing.values()
    assert get(fa.url(missing.spec.key))[0] == 404
    d1, d3 = world.get("spot", "BTCUSDT", "2024-01-01"), world.get("spot", "BTCUSDT", "2024-01-03")
    assert missing.first_id == d1.last_id + 1 and d3.first_id == missing.last_id + 1
    assert d3.id_gaps == ((d3.first_id + 1000, d3.first_id + 1009),) == tuple(d3.trades.id_gaps())
    assert world.get("spot", "BTCUSDT", "2025-01-01").time_unit == "us"
    assert [world.get("um", "BTCUSDT", d).header for d in ("2022-08-10", "2022-08-11")] == [False, True]
    assert [world.get("cm", "BTCUSD_PERP", d).header for d in ("2024-01-01", "2024-01-02")] == [True, False]
    month = world.get("um", "BTCUSDT", "2024-02")
    assert month.interleaved and month.duplicates == 1 and month.rows == 601 and month.expected_rows == 600
    assert (np.diff(month.trades.id) < 0).any()
    assert np.array_equal(month.expected().id, month.first_id + np.arange(600))
    assert world.get("um", "BTCUSDT", "2024-03-01").first_id == month.last_id + 1
    assert month.first_time_us >= 1706745600000000 and month.last_time_us < 1709251200000000
    for archive in world.archives.values():
        zipped = fa.get(archive.key)
        assert zipped is not None and sha256_hex(zipped) == archive.sha256
        body = zipfile.ZipFile(io.BytesIO(zipped)).read(archive.spec.csv_name)
        assert body.count(b"\n") == archive.rows + archive.header
        assert archive.spec.start.timestamp() * 1e6 <= archive.first_time_us
        assert archive.last_time_us < archive.spec.end.timestamp() * 1e6
    symbols = walk(fa, "data/spot/daily/trades/")[1]
    assert symbols == ["data/spot/daily/trades/BTCUSDT/", "data/spot/daily/trades/ETHUSDT/"]


def test_publish_helpers(fa: FakeArchive) -> None:
    day = publish_day(fa, "um", "ETHUSDT", date(2021, 5, 1), 100, 7, 1, end=datetime(2021, 5, 1, 12, tzinfo=UTC))
    assert not day.header and day.last_time_us < datetime(2021, 5, 1, 12, tzinfo=UTC).timestamp() * 1e6
    month = publish_month(fa, "spot", "BTCUSDT", "2025-03", 300, 1, 2, interleave_block=10, duplicates=3)
    assert month.time_unit == "us" and month.expected_rows == 300 and len(month.expected()) == 300
    assert fa.get(month.checksum_key) is not None


# --- speed -------------------------------------------------------------------------------------


def test_generate_render_zip_speed(capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    trades = generate_trades(1_100_000, date(2024, 1, 1), date(2024, 1, 2), 3_300_000_000, 1)
    t1 = time.perf_counter()
    body = render_csv(trades, "spot", date(2024, 1, 1))
    t2 = time.perf_counter()
    zipped = make_zip(body, "BTCUSDT-trades-2024-01-01.csv")
    t3 = time.perf_counter()
    with capsys.disabled():
        print(
            f"\n1.1 M spot rows: generate {t1 - t0:.2f} s, render {t2 - t1:.2f} s ({len(body) / 1e6:.0f} MB), "
            f"zip {t3 - t2:.2f} s ({len(zipped) / 1e6:.0f} MB), total {t3 - t0:.2f} s"
        )
    assert body.count(b"\n") == 1_100_000
