from datetime import date

import pytest

from tasks.errors import InvalidListing
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.listing import ListedObject, classify_keys, listing_page_url, parse_listing_page

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def page(contents: list[str], prefixes: list[str] = (), truncated: bool = False, next_marker: str | None = None,
         echo: str = "data/spot/daily/trades/BTCUSDT/") -> bytes:
    items = "".join(
        f"<Contents><Key>{k}</Key><LastModified>2024-01-02T08:00:00.000Z</LastModified>"
        f"<ETag>&quot;abc&quot;</ETag><Size>123</Size><StorageClass>STANDARD</StorageClass></Contents>"
        for k in contents
    )
    common = "".join(f"<CommonPrefixes><Prefix>{p}</Prefix></CommonPrefixes>" for p in prefixes)
    nm = f"<NextMarker>{next_marker}</NextMarker>" if next_marker else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}"><Name>data.binance.vision</Name>'
        f"<Prefix>{echo}</Prefix><Marker></Marker><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter>"
        f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{nm}{items}{common}</ListBucketResult>"
    ).encode()


def test_listing_url_encodes_prefix_and_marker() -> None:
    url = listing_page_url("https://s3-ap-northeast-1.amazonaws.com/data.binance.vision", "data/spot/daily/trades/",
                           "data/spot/daily/trades/BTC USDT/")
    assert url == (
        "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision?delimiter=/"
        "&prefix=data%2Fspot%2Fdaily%2Ftrades%2F&marker=data%2Fspot%2Fdaily%2Ftrades%2FBTC%20USDT%2F"
    )


def test_root_prefix_echo_is_not_a_folder() -> None:
    parsed = parse_listing_page(page([], prefixes=["data/spot/daily/trades/BTCUSDT/"], echo="data/spot/daily/trades/"),
                                "u")
    assert parsed.prefixes == ("data/spot/daily/trades/BTCUSDT/",)
    assert parsed.objects == () and not parsed.is_truncated


def test_truncated_page_gives_next_marker() -> None:
    parsed = parse_listing_page(page(["a"], truncated=True, next_marker="a"), "u")
    assert parsed.is_truncated and parsed.next_marker == "a"
    assert parsed.objects[0] == ListedObject("a", 123, "abc", "2024-01-02T08:00:00.000Z")


@pytest.mark.parametrize("body", [b"not xml", b"<Error><Code>AccessDenied</Code></Error>"])
def test_bad_listing_names_its_url(body: bytes) -> None:
    with pytest.raises(InvalidListing, match="http://x/listing"):
        parse_listing_page(body, "http://x/listing")


def test_classify_keys_refuses_escaping_and_foreign_keys() -> None:
    pre = "data/spot/daily/trades/BTCUSDT/"
    objs = [ListedObject(k, 10, "", "") for k in [
        pre + "BTCUSDT-trades-2024-01-01.zip",
        pre + "BTCUSDT-trades-2024-01-01.zip.CHECKSUM",
        pre + "../../../../etc/passwd.zip",
        pre + "sub/BTCUSDT-trades-2024-01-02.zip",
        "data/spot/daily/trades/ETHUSDT/ETHUSDT-trades-2024-01-01.zip",
        pre + "ETHUSDT-trades-2024-01-03.zip",
    ]]
    d = classify_keys("spot", "daily", "BTCUSDT", objs)
    assert d.archives == {ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, 1)): 10}
    rejected = dict(d.rejected)
    assert set(rejected) == {o.key for o in objs[2:]}
    assert "escape" in rejected[pre + "../../../../etc/passwd.zip"]


def test_escaping_sub_folder_from_a_delimited_listing_is_refused() -> None:
    pre = "data/spot/daily/trades/BTCUSDT/"
    d = classify_keys("spot", "daily", "BTCUSDT", [], [pre + "../", pre + "extra/"])
    assert dict(d.rejected) == {pre + "../": "unsafe key: it would escape the symbol's folder",
                                pre + "extra/": "unexpected sub-folder"}
