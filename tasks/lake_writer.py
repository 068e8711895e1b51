"""How lake files are written: one Parquet writer configuration and one footer document.

Shared by the converter (one archive per file) and compaction (many archives per file),
so every lake file has the same encodings, row groups and source metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.convert import _lake_writer, _RowGroupWriter
from tasks.schema import SOURCE_METADATA_KEY
from tasks.settings import ConvertOptions

LakeWriter = _RowGroupWriter


def lake_writer(path: Path, options: ConvertOptions) -> LakeWriter:
    """A writer of lake-schema row groups to `path` with the lake's encodings (zstd, delta ids and times)."""
    return _lake_writer(path, options)


def source_metadata_doc(market: str, symbol: str, sources: Sequence[dict[str, Any]]) -> dict[bytes, bytes]:
    """The footer entry naming a file's market, symbol and source archives (in day order)."""
    doc = {"market": market, "symbol": symbol, "sources": list(sources)}
    return {SOURCE_METADATA_KEY: json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()}
