"""Load the compiled kernels before the first archive needs them.

A process's first call of a numba kernel loads it from the on-disk cache and first
initialises numba's typing context: 0.3-0.6 s measured, paid by the first conversion
(and again, less, by the merge's digest and the bars). The flow starts
`warm_up_in_background` when it begins, so this overlaps listing and downloads instead of
delaying the first archive. A conversion that starts before it is done waits on numba's
own lock; nothing is loaded twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

log = logging.getLogger(__name__)

_STARTED = threading.Event()


def warm_up(features: Sequence[str] = ()) -> None:
    """Run the converter's parser, the merge's digest and each feature's bar kernel once, on two trades."""
    from tasks.convert.csv_dialect import sniff_dialect
    from tasks.convert.csv_parse import parse_simple_piece, to_lake_table
    from tasks.features.bars import BarState, process_chunk
    from tasks.features.incremental import parse_feature
    from tasks.lake.compact import DayDigest

    lines = [b"1,42000.5,0.001,42.0005,1704067200000,True,True", b"2,42000.6,0.002,84.0012,1704067200001,False,True"]
    dialect = sniff_dialect(lines[0], lines[1], "spot", "warm-up", "warm-up.csv")
    table = parse_simple_piece(b"\n".join(lines) + b"\n", dialect)
    if table is None:
        return
    lake = to_lake_table(table, dialect)
    DayDigest().add(lake)
    for text in features:
        spec = parse_feature(text).spec
        process_chunk(spec, BarState.initial(spec), lake["time"].cast("int64").to_numpy(), lake["price"].to_numpy(),
                      lake["qty"].to_numpy(), lake["is_buyer_maker"].to_numpy(zero_copy_only=False),
                      lake["trade_id"].to_numpy())


def _run(features: Sequence[str]) -> None:
    try:
        warm_up(features)
    except Exception:  # an optimisation only: the real call reports any real problem
        log.debug("kernel warm-up failed", exc_info=True)


def warm_up_in_background(features: Sequence[str] = ()) -> None:
    """Start `warm_up` in a daemon thread, once per process."""
    if _STARTED.is_set():
        return
    _STARTED.set()
    threading.Thread(target=_run, args=(tuple(features),), name="kernel-warm-up", daemon=True).start()
