"""tasks.convert.batching: conversion batches and the sorting of published checksums, without Prefect."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from tasks.convert.batching import Batcher, sort_published
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.download import Published


def days(n: int, symbol: str = "BTCUSDT") -> list[ArchiveSpec]:
    return [ArchiveSpec("spot", symbol, "daily", date(2024, 1, 1) + timedelta(days=i)) for i in range(n)]


def test_a_batch_goes_out_when_it_is_full_by_bytes_or_by_count() -> None:
    specs = days(7)
    by_bytes = Batcher(max_bytes=100, max_archives=50, sizes={s: 40 for s in specs})
    out = [b for s in specs for b in by_bytes.add(s)]
    assert out == [specs[0:3], specs[3:6]]  # 120 >= 100 after three archives
    assert by_bytes.queued == [specs[6]]
    by_count = Batcher(max_bytes=10**9, max_archives=2, sizes={})  # unknown sizes count as 0 bytes
    assert [b for s in specs for b in by_count.add(s)] == [specs[0:2], specs[2:4], specs[4:6]]


def test_flush_deals_what_is_left_over_the_workers_and_leaves_nothing() -> None:
    specs = days(5)
    b = Batcher(max_bytes=10**9, max_archives=100, sizes={})
    for s in specs:
        assert b.add(s) == []
    assert b.flush(slots=2) == [[specs[0], specs[2], specs[4]], [specs[1], specs[3]]]
    assert not b and b.flush(slots=2) == []
    b.add(specs[0])
    assert b.flush(slots=8) == [[specs[0]]]  # never an empty batch, never more batches than archives


@pytest.mark.parametrize("limits", [(0, 5), (5, 0), (-1, -1)])
def test_batch_limits_below_one_are_refused(limits: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="batch limits must be >= 1"):
        Batcher(*limits, sizes={})


def test_published_checksums_sort_into_work_reports_and_missing_days() -> None:
    a, b, c, d = days(4)
    month = ArchiveSpec("spot", "BTCUSDT", "monthly", date(2024, 2, 1))
    done = sort_published([
        Published(a, "ab" * 32),
        Published(b, None, error="HTTP 503 after 4 attempts", transient=True),
        Published(c, None, error="not a checksum line"),
        Published(d, None, missing_reason="checksum answers 404"),
        Published(month, None),
    ], sizes={b: 1234})
    assert done.todo == [(a, "ab" * 32)]
    assert [(o.archive, o.status, o.bytes, o.detail) for o in done.outcomes] == [
        (b.key, "failed", 1234, "HTTP 503 after 4 attempts"),
        (c.key, "refused", None, "not a checksum line"),
    ]
    assert [(m.day, m.reason) for m in done.missing[:1]] == [(d.days()[0], "checksum answers 404")]
    assert len(done.missing) == 1 + 29 and done.missing[-1].reason == "no checksum"  # every day of February 2024
