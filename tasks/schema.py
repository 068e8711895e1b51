"""The lake's trades schema, declared once for every market and period.

Columns follow the Binance CSV (see docs in the README). COIN-M archives carry
`base_qty` (size in the base asset; `qty` counts contracts) where spot and USD-M carry
`quote_qty`: both columns exist in the one schema and the one a market lacks is null,
so a dataset spanning markets never mislabels COIN-M sizes as quote notional.
"""

from __future__ import annotations

import pyarrow as pa

TIME_TYPE = pa.timestamp("us", tz="UTC")

TRADES_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("trade_id", pa.int64(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("qty", pa.float64(), nullable=False),
        pa.field("quote_qty", pa.float64(), metadata={"doc": "price*qty; null on COIN-M"}),
        pa.field("base_qty", pa.float64(), metadata={"doc": "COIN-M only: size in base asset"}),
        pa.field("time", TIME_TYPE, nullable=False),
        pa.field("is_buyer_maker", pa.bool_(), nullable=False),
        pa.field("is_best_match", pa.bool_(), metadata={"doc": "spot only; reserved by Binance"}),
    ]
)

#: Key of the JSON document in each lake file's key-value metadata describing its sources.
SOURCE_METADATA_KEY = b"binance_lake.sources"


def same_columns(schema: pa.Schema) -> bool:
    """True when `schema` has exactly the lake's names, types and nullability (metadata aside)."""
    return schema.remove_metadata().equals(TRADES_SCHEMA.remove_metadata(), check_metadata=False) and all(
        schema.field(i).nullable == TRADES_SCHEMA.field(i).nullable for i in range(len(TRADES_SCHEMA))
    )
