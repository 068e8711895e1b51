"""Stages 3 to 5, the lake: ingest, validation, compaction and merge, gaps, repair, cleanup.

It is also where users read from: `from tasks.lake import read_trades` (and the rest of the
read API of `tasks.read`, imported when first asked for, so that the stages' own imports of
`tasks.lake.<module>` do not load it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the read API lives in tasks.read (it imports tasks.lake.inventory); re-exported here
    from tasks.read import pandas_types as pandas_types
    from tasks.read import read_bars as read_bars
    from tasks.read import read_dataset as read_dataset
    from tasks.read import read_trades as read_trades
    from tasks.read import read_trades_pandas as read_trades_pandas
    from tasks.read import to_pandas as to_pandas
    from tasks.read import universe as universe
    from tasks.read_asof import as_of as as_of
    from tasks.read_asof import read_bars_annotated as read_bars_annotated

#: Names of `tasks.read` importable from here (`from tasks.lake import read_trades`).
_READ_API = frozenset({"read_trades", "read_bars", "read_trades_pandas", "to_pandas", "pandas_types", "universe",
                       "read_dataset"})
#: Names of `tasks.read_asof` importable from here.
_ASOF_API = frozenset({"as_of", "read_bars_annotated"})


def __getattr__(name: str) -> Any:
    """`tasks.lake.read_trades` and the rest of the read API, imported from `tasks.read` when first asked for."""
    if name in _READ_API:
        from tasks import read

        return getattr(read, name)
    if name in _ASOF_API:
        from tasks import read_asof

        return getattr(read_asof, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
