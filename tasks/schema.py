"""The lake's schemas (declared per dataset in `tasks.datasets`) and its footer metadata key.

`TRADES_SCHEMA` is `tasks.datasets.TRADES.schema`, kept here under its old name for the
stages and readers that deal in trades only (bars, the read API).
"""

from __future__ import annotations

import pyarrow as pa

from tasks.datasets import TIME_TYPE as TIME_TYPE
from tasks.datasets import TRADES

TRADES_SCHEMA: pa.Schema = TRADES.schema

#: Key of the JSON document in each lake file's key-value metadata describing its sources.
SOURCE_METADATA_KEY = b"binance_lake.sources"


def same_columns(schema: pa.Schema) -> bool:
    """True when `schema` has exactly the trades lake's names, types and nullability (metadata aside)."""
    return TRADES.same_columns(schema)
