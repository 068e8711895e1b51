"""Sort one archive's rows by the dataset's key and drop exact duplicates, in bounded memory.

The normal case (keys never decrease) is written straight through. Monthly futures
files can hold two interleaved id streams (#240, #293, #339) and exact duplicate rows
(#203): on the first disorder `SortedOutput` falls back to an external merge sort, its
runs spilled beside the output under hidden names and merged with
`tasks.lake.sorted_merge.kway_merge`, the same k-way merge the lake's merge uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.atomic import temp_path_for
from tasks.datasets import TRADES, Dataset
from tasks.errors import InvalidData
from tasks.lake.sorted_merge import RunCursor, key_values, kway_merge
from tasks.lake.writer import RowGroupWriter, lake_writer
from tasks.settings import ConvertOptions

#: Row-group size of sort spill files, and the largest batch read from one during the merge.
_SPILL_ROW_GROUP_ROWS = 65_536
_MIN_MERGE_BATCH_ROWS = 1024
_RUN_READ_BUFFER_BYTES = 1 << 16
_MAX_MERGE_FAN_IN = 32


def _keys(table: pa.Table, data: Dataset) -> np.ndarray[Any, Any]:
    return key_values(table.column(data.key))


def drop_duplicate_rows(
    table: pa.Table, carry: pa.Table | None, source: str, data: Dataset = TRADES
) -> tuple[pa.Table, int]:
    """Drop rows repeating the previous row exactly, in a table sorted by the dataset's key.

    `carry` is the last row kept before `table` (or None), so duplicates across chunk
    boundaries are found too. Exact duplicates are a known archive defect (#203) and are
    dropped and counted; the same key with different values is InvalidData naming the key.
    """
    ids = _keys(table, data)
    if len(ids) == 0:
        return table, 0
    dup = np.empty(len(ids), dtype=bool)
    dup[1:] = ids[1:] == ids[:-1]
    dup[0] = carry is not None and int(_keys(carry, data)[0]) == int(ids[0])
    if not dup.any():
        return table, 0
    positions = np.flatnonzero(dup)
    full, offset = (pa.concat_tables([carry, table]), 1) if carry is not None else (table, 0)
    this = full.take(pa.array(positions + offset))
    prev = full.take(pa.array(positions + offset - 1))
    same = np.ones(len(positions), dtype=bool)
    for name in data.schema.names:
        a, b = this.column(name), prev.column(name)
        equal = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
        same &= np.asarray(equal.to_numpy())
    if not same.all():
        k = int(np.flatnonzero(~same)[0])
        first, second = prev.slice(k, 1).to_pylist()[0], this.slice(k, 1).to_pylist()[0]
        label = data.key.replace("_", " ")
        raise InvalidData(
            source, f"{label} {first[data.key]} appears twice with different values: {first} vs {second}"
        )
    return table.filter(pa.array(~dup)), len(positions)


def _spill_writer(path: Path, data: Dataset) -> RowGroupWriter:
    # Spills are read back once, soon: fast lz4 and no dictionaries beat a small file.
    return RowGroupWriter(
        path, _SPILL_ROW_GROUP_ROWS, data.schema, compression="lz4", use_dictionary=False,
        data_page_size=_RUN_READ_BUFFER_BYTES,
    )


def _write_run(path: Path, chunks: Iterable[pa.Table], data: Dataset = TRADES) -> None:
    """Write sorted chunks as one spill run."""
    writer = _spill_writer(path, data)
    try:
        for chunk in chunks:
            writer.write(chunk)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def merge_sorted_runs(paths: list[Path], batch_rows: int, data: Dataset = TRADES) -> Iterator[pa.Table]:
    """K-way merge of spill runs each sorted by `data.key` (`tasks.lake.sorted_merge.kway_merge`).

    Memory is about `len(paths) * batch_rows` rows. Rows with equal keys stay adjacent
    (across rounds too), for `drop_duplicate_rows`.
    """
    with ExitStack() as stack:
        cursors: list[RunCursor] = []
        for path in paths:
            # No pre-buffering: a run is read a page at a time, not a row group at a time,
            # which halved the merge's peak Arrow memory with 8 runs.
            pf = stack.enter_context(pq.ParquetFile(path, pre_buffer=False, buffer_size=_RUN_READ_BUFFER_BYTES))
            cursors.append(RunCursor(pf.iter_batches(batch_size=batch_rows, use_threads=False), path.name, data))
        yield from kway_merge(cursors, data)


class SortedOutput:
    """Turns lake-schema chunks, in file order, into one sorted, de-duplicated Parquet file.

    The normal case (ids never decrease) is written straight through. On the first
    disorder (#240, #293, #339: two interleaved id streams in monthly futures files)
    what was written so far becomes the first sorted run, further rows are sorted in
    chunks of `sort_chunk_rows` and spilled as runs beside the output (hidden names),
    and `finish` merges the runs into a fresh temporary file. A merge reads at most
    `_MAX_MERGE_FAN_IN` runs at once (each open run costs about 1 MB of reader buffers
    whatever its batch size); more runs are first merged in groups into longer runs.
    """

    def __init__(self, out_path: Path, options: ConvertOptions, source: str, data: Dataset = TRADES) -> None:
        self._out_path = out_path
        self._data = data
        self._options = options
        self._source = source
        self.tmp = temp_path_for(out_path)
        self._writer: RowGroupWriter | None = lake_writer(self.tmp, options, data)
        self._carry: pa.Table | None = None
        self._carry_id: int | None = None
        self.duplicates = 0
        self.rows = 0
        self.sorting = False
        self.runs: list[Path] = []  # the sorted runs, before any merging
        self._files: list[Path] = []  # every spill file ever created, for the clean-up
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    # -- straight-through path -------------------------------------------------------
    def _emit(self, table: pa.Table) -> None:
        assert self._writer is not None
        table, dropped = drop_duplicate_rows(table, self._carry, self._source, self._data)
        self.duplicates += dropped
        if table.num_rows:
            self._writer.write(table)
            self.rows += table.num_rows
            self._carry = table.slice(table.num_rows - 1, 1)
            self._carry_id = int(_keys(self._carry, self._data)[0])

    def push(self, table: pa.Table) -> None:
        """Take the next chunk of the CSV (already checked and in the lake schema)."""
        if not table.num_rows:
            return
        if not self.sorting:
            ids = _keys(table, self._data)
            in_order = (self._carry_id is None or ids[0] >= self._carry_id) and bool((ids[1:] >= ids[:-1]).all())
            if in_order:
                self._emit(table)
                return
            self._start_external_sort()
        self._collect(table)

    # -- external sort path ----------------------------------------------------------
    def _new_run_path(self) -> Path:
        path = temp_path_for(self._out_path.with_name(f"{self._out_path.name}.run{len(self._files)}"))
        self._files.append(path)  # registered first, so a failed write is still removed
        return path

    def _start_external_sort(self) -> None:
        assert self._writer is not None
        self.sorting = True
        self._writer.close()
        self._writer = None
        if self.rows:
            # The sorted prefix already written is the first run; the output restarts.
            run = self._new_run_path()
            self.tmp.replace(run)
            self.runs.append(run)
        else:
            self.tmp.unlink(missing_ok=True)
        self.tmp = temp_path_for(self._out_path)
        self.rows = 0
        self._carry, self._carry_id = None, None

    def _collect(self, table: pa.Table) -> None:
        limit = self._options.sort_chunk_rows
        while table.num_rows:
            room = limit - self._buffered
            self._buffer.append(table.slice(0, room))
            self._buffered += min(room, table.num_rows)
            table = table.slice(room)
            if self._buffered >= limit:
                self._spill()

    def _sorted_buffer(self) -> pa.Table:
        chunk = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        return chunk.take(pc.sort_indices(chunk, sort_keys=[(self._data.key, "ascending")]))

    def _spill(self) -> None:
        chunk = self._sorted_buffer()
        run = self._new_run_path()
        self.runs.append(run)
        _write_run(run, [chunk], self._data)

    def _merge_batch_rows(self, fan_in: int) -> int:
        # The merge holds one batch per run: keep their sum near the sort chunk budget.
        per_run = self._options.sort_chunk_rows // max(fan_in, 1)
        return max(_MIN_MERGE_BATCH_ROWS, min(_SPILL_ROW_GROUP_ROWS, per_run))

    def _reduce_runs(self) -> list[Path]:
        """Merge groups of runs into longer runs until at most `_MAX_MERGE_FAN_IN` remain."""
        runs = list(self.runs)
        while len(runs) > _MAX_MERGE_FAN_IN:
            longer: list[Path] = []
            for start in range(0, len(runs), _MAX_MERGE_FAN_IN):
                group = runs[start : start + _MAX_MERGE_FAN_IN]
                if len(group) == 1:
                    longer.extend(group)
                    continue
                # Duplicates are kept here: they stay adjacent and the last merge drops them.
                target = self._new_run_path()
                _write_run(target, merge_sorted_runs(group, self._merge_batch_rows(len(group)), self._data), self._data)
                for path in group:
                    path.unlink(missing_ok=True)
                longer.append(target)
            runs = longer
        return runs

    def finish(self) -> None:
        """Write out whatever is buffered; after this `rows` and `duplicates` are final."""
        if not self.sorting:
            return
        self._writer = lake_writer(self.tmp, self._options, self._data)
        if not self.runs:
            # Out of order but small enough to sort in memory: no run ever hit the disk.
            if self._buffered:
                self._emit(self._sorted_buffer())
            return
        if self._buffered:
            self._spill()
        runs = self._reduce_runs()
        for chunk in merge_sorted_runs(runs, self._merge_batch_rows(len(runs)), self._data):
            self._emit(chunk)
        self.remove_runs()

    def close(self, metadata: dict[bytes, bytes]) -> None:
        """Close the output file with its footer metadata."""
        assert self._writer is not None
        self._writer.close(metadata)
        self._writer = None

    def remove_runs(self) -> None:
        """Delete every spill file (the runs and any merged runs)."""
        for path in self._files:
            path.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove every file this output created (after an error)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self.tmp.unlink(missing_ok=True)
        self.remove_runs()
