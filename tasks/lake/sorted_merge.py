"""Streaming merge of record-batch streams that are each sorted by their dataset's key.

The key is the dataset's (`tasks.datasets`): trade id, aggTrade id or kline open time;
a timestamp key is compared as its µs integer. Two users: the merge of lake files
(`merge_sorted_streams`, which refuses a key held twice) and the converter's external
sort (`kway_merge` of its spilled runs, which keeps duplicates adjacent for de-duplication).

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

from tasks.datasets import TRADES, Dataset


class DuplicateTradeIds(ValueError):
    """Two inputs hold the same key (trade id, aggTrade id, open time): merging them would break uniqueness."""


def key_values(column: pa.Array | pa.ChunkedArray) -> np.ndarray[Any, Any]:
    """A key column as int64 numpy, zero-copy where it can be (a timestamp as its µs integers)."""
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    return np.asarray(column.to_numpy(), dtype=np.int64)


@dataclass
class SortedStream:
    """Batches in ascending key order, with the smallest and largest key they may hold."""

    min_id: int
    max_id: int
    batches: Iterable[pa.RecordBatch]
    name: str = ""


class RunCursor:
    """The unconsumed part of the current batch of one stream sorted by the dataset's key."""

    def __init__(self, batches: Iterable[pa.RecordBatch], name: str = "", data: Dataset = TRADES) -> None:
        self.name = name
        self._schema = data.schema
        self._key = data.schema.get_field_index(data.key)
        self._batches = iter(batches)
        self.batch: pa.RecordBatch | None = None
        self.ids: np.ndarray[Any, Any] = np.empty(0, dtype=np.int64)
        self._advance()

    def _advance(self) -> None:
        for batch in self._batches:
            if batch.num_rows:
                # Rebuilt on the lake schema so batches of every stream concatenate.
                self.batch = pa.RecordBatch.from_arrays(batch.columns, schema=self._schema)
                self.ids = key_values(self.batch.column(self._key))
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


def kway_merge(cursors: list[RunCursor], data: Dataset = TRADES) -> Iterator[pa.Table]:
    """K-way merge of cursors each sorted by `data.key`, in vectorised rounds; equal keys stay adjacent.

    Each round takes, from every cursor's current batch, the rows with key <= the smallest
    of the current batches' maxima: no cursor can later yield a key below that bound, so
    the union of the taken rows, sorted, extends the output in order. At least one batch
    is consumed per round; memory is one batch per cursor.
    """
    active = [c for c in cursors if c.batch is not None]
    while active:
        bound = min(int(c.ids[-1]) for c in active)
        parts = [p for c in active if (p := c.take_through(bound)) is not None]
        chunk = pa.Table.from_batches(parts, schema=data.schema)
        if len(parts) > 1:
            # Stable: rows of one key keep their stream order, for the de-duplication after.
            chunk = chunk.take(pc.sort_indices(chunk, sort_keys=[(data.key, "ascending")]))
        yield chunk
        active = [c for c in active if c.batch is not None]


def _kway(cluster: list[SortedStream], data: Dataset) -> Iterator[pa.Table]:
    cursors = [RunCursor(s.batches, s.name, data) for s in cluster]
    names = ", ".join(c.name for c in cursors)
    key = data.schema.get_field_index(data.key)
    last: int | None = None
    for chunk in kway_merge(cursors, data):
        ids = key_values(chunk.column(key))
        dup = np.flatnonzero(np.diff(ids) == 0)
        if len(dup) or (last is not None and ids[0] <= last):
            at = int(ids[dup[0]]) if len(dup) else int(ids[0])
            raise DuplicateTradeIds(f"{data.key.replace('_', ' ')} {at} is in more than one of: {names}")
        last = int(ids[-1])
        yield chunk


def merge_sorted_streams(streams: list[SortedStream], data: Dataset = TRADES) -> Generator[pa.Table, None, None]:
    """Yield the union of `streams` as lake-schema tables in strictly ascending key order.

    Raises DuplicateTradeIds when two streams share a key. Memory: one batch per stream
    of the cluster being merged (one batch in total for disjoint streams).
    """
    for cluster in _clusters(streams):
        if len(cluster) == 1:
            for batch in cluster[0].batches:
                if batch.num_rows:
                    yield pa.Table.from_batches([batch], schema=data.schema)
        else:
            yield from _kway(cluster, data)
