"""Streaming merge of record-batch streams that are each sorted by trade id.

Lake files of one symbol are nearly always disjoint by id (one follows the other), so
the merge first sorts the streams by their id ranges and passes a stream that overlaps
no other straight through, holding one batch of one stream at a time. Only streams
whose id ranges interleave (a back-filled day inside a file's id gap) are merged k-way,
in vectorised rounds, holding one batch of each.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.schema import TRADES_SCHEMA


class DuplicateTradeIds(ValueError):
    """Two inputs hold the same trade id: merging them would break the lake's uniqueness."""


@dataclass
class SortedStream:
    """Batches in ascending trade-id order, with the smallest and largest id they may hold."""

    min_id: int
    max_id: int
    batches: Iterable[pa.RecordBatch]
    name: str = ""


class RunCursor:
    """The unconsumed part of the current batch of one stream sorted by trade id."""

    def __init__(self, batches: Iterable[pa.RecordBatch], name: str = "") -> None:
        self.name = name
        self._batches = iter(batches)
        self.batch: pa.RecordBatch | None = None
        self.ids: np.ndarray[Any, Any] = np.empty(0, dtype=np.int64)
        self._advance()

    def _advance(self) -> None:
        for batch in self._batches:
            if batch.num_rows:
                # Rebuilt on the lake schema so batches of every stream concatenate.
                self.batch = pa.RecordBatch.from_arrays(batch.columns, schema=TRADES_SCHEMA)
                self.ids = np.asarray(self.batch.column(0).to_numpy(), dtype=np.int64)
                return
        self.batch = None
        self.ids = np.empty(0, dtype=np.int64)

    def take_through(self, limit: int) -> pa.RecordBatch | None:
        """Remove and return the rows with id <= limit (they all sit in the current batch)."""
        assert self.batch is not None
        k = int(np.searchsorted(self.ids, limit, side="right"))
        if k == 0:
            return None
        head = self.batch.slice(0, k)
        if k == len(self.ids):
            self._advance()
        else:
            self.batch = self.batch.slice(k)
            self.ids = self.ids[k:]
        return head


def _clusters(streams: list[SortedStream]) -> Iterator[list[SortedStream]]:
    """Runs of streams whose [min_id, max_id] ranges overlap, in id order."""
    ordered = sorted(streams, key=lambda s: (s.min_id, s.max_id))
    cluster: list[SortedStream] = []
    reach = 0
    for s in ordered:
        if cluster and s.min_id > reach:
            yield cluster
            cluster = []
        reach = s.max_id if not cluster else max(reach, s.max_id)
        cluster.append(s)
    if cluster:
        yield cluster


def _kway(cluster: list[SortedStream]) -> Iterator[pa.Table]:
    cursors = [c for c in (RunCursor(s.batches, s.name) for s in cluster) if c.batch is not None]
    last: int | None = None
    while cursors:
        # No cursor can later yield an id below the smallest of the current batches' maxima.
        bound = min(int(c.ids[-1]) for c in cursors)
        parts = [p for c in cursors if (p := c.take_through(bound)) is not None]
        chunk = pa.Table.from_batches(parts, schema=parts[0].schema)
        if len(parts) > 1:
            chunk = chunk.take(pc.sort_indices(chunk, sort_keys=[("trade_id", "ascending")]))
        ids = np.asarray(chunk.column(0).to_numpy(), dtype=np.int64)
        dup = np.flatnonzero(np.diff(ids) == 0)
        if len(dup) or (last is not None and ids[0] <= last):
            at = int(ids[dup[0]]) if len(dup) else int(ids[0])
            names = ", ".join(c.name for c in cursors)
            raise DuplicateTradeIds(f"trade id {at} is in more than one of: {names}")
        last = int(ids[-1])
        yield chunk
        cursors = [c for c in cursors if c.batch is not None]


def merge_sorted_streams(streams: list[SortedStream]) -> Generator[pa.Table, None, None]:
    """Yield the union of `streams` as lake-schema tables in strictly ascending trade-id order.

    Raises DuplicateTradeIds when two streams share an id. Memory: one batch per stream
    of the cluster being merged (one batch in total for disjoint streams).
    """
    for cluster in _clusters(streams):
        if len(cluster) == 1:
            for batch in cluster[0].batches:
                if batch.num_rows:
                    yield pa.Table.from_batches([batch], schema=TRADES_SCHEMA)
        else:
            yield from _kway(cluster)
