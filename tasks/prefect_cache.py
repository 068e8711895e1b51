"""The lake's Prefect cache records: JSON that executes nothing when it is read.

Prefect stores a cache record as a JSON document that names its own serializer, and reads
it back with *that* serializer (Prefect 3.9, `ResultRecord.deserialize`): a record in the
data dir rewritten to name `pickle` runs arbitrary code (cloudpickle) on the next run, even
when the task was configured with `result_serializer="json"`. Prefect's `json` serializer
is not inert either: its `jsonlib` and `object_decoder` are fields of the record (qualified
names that Prefect imports and calls), and its default decoder imports and instantiates
whatever class a `__class__` key names.

So the lake's records are written by `LakeJSONSerializer`, which knows a fixed, small set of
our own types by tag and imports nothing, and are read through `LakeCacheStorage`, which
hands Prefect a record only if it names exactly that serializer, has a record's shape and
decodes; it passes on its own re-encoding of what it checked. Anything else is refused
(`UnsafeCacheRecord`, logged as a warning): Prefect then treats the record as absent, the
task runs again and writes a fresh record over it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import LocalFileSystem
from prefect.serializers import Serializer
from pydantic import Field

from tasks.errors import UnsafeCacheRecord
from tasks.features.incremental import FeatureResult
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.download import DownloadResult

log = logging.getLogger(__name__)

#: The serializer's name in a record's metadata: the only one `LakeCacheStorage` lets through.
SERIALIZER_TYPE = "binance-lake-json"
#: The dataclasses a cache record may hold (results of the cached tasks, and what they contain),
#: by tag. Decoding looks a tag up here and nowhere else: nothing is imported by name.
CACHED_TYPES: dict[str, type[Any]] = {cls.__name__: cls for cls in (DownloadResult, FeatureResult, ArchiveSpec)}
#: A record is a few hundred bytes; anything much larger is not one of ours.
MAX_RECORD_BYTES = 1 << 20
_METADATA_KEYS = {"storage_key", "expiration", "serializer", "prefect_version", "storage_block_id"}
_TAG, _VALUE = "$", "v"


def encode(obj: Any) -> Any:
    """`obj` as plain JSON values; every JSON object in the result is a {"$": tag, "v": ...} pair.

    Raises TypeError for a type outside `CACHED_TYPES` and the plain values (None, bool, int,
    float, str, list, tuple, dict, Path, date, datetime).
    """
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, list):
        return [encode(x) for x in obj]
    if isinstance(obj, tuple):
        return {_TAG: "tuple", _VALUE: [encode(x) for x in obj]}
    if isinstance(obj, dict):
        return {_TAG: "dict", _VALUE: [[encode(k), encode(v)] for k, v in obj.items()]}
    if isinstance(obj, Path):
        return {_TAG: "path", _VALUE: str(obj)}
    if isinstance(obj, datetime):  # before date: a datetime is a date
        return {_TAG: "datetime", _VALUE: obj.isoformat()}
    if isinstance(obj, date):
        return {_TAG: "date", _VALUE: obj.isoformat()}
    tag = type(obj).__name__
    if CACHED_TYPES.get(tag) is type(obj):
        return {_TAG: tag, _VALUE: {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}}
    raise TypeError(f"a cache record cannot hold a {type(obj).__qualname__} (tasks/prefect_cache.py CACHED_TYPES)")


def decode(value: Any) -> Any:
    """The inverse of `encode`. Raises ValueError for anything `encode` does not produce."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [decode(x) for x in value]
    if not isinstance(value, dict) or set(value) != {_TAG, _VALUE}:
        raise ValueError(f"not an encoded value: {_preview(value)}")
    tag, inner = value[_TAG], value[_VALUE]
    if tag == "tuple" and isinstance(inner, list):
        return tuple(decode(x) for x in inner)
    if tag == "dict" and isinstance(inner, list) and all(isinstance(kv, list) and len(kv) == 2 for kv in inner):
        return {decode(k): decode(v) for k, v in inner}
    if tag == "path" and isinstance(inner, str):
        return Path(inner)
    if tag == "datetime" and isinstance(inner, str):
        return datetime.fromisoformat(inner)
    if tag == "date" and isinstance(inner, str):
        return date.fromisoformat(inner)
    cls = CACHED_TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None or not isinstance(inner, dict):
        raise ValueError(f"unknown tag {_preview(tag)}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    if not set(inner) <= fields:
        raise ValueError(f"{tag} has no field(s) {sorted(set(inner) - fields)}")
    kwargs = {name: decode(v) for name, v in inner.items()}
    hints = typing.get_type_hints(cls)
    for name, v in kwargs.items():
        if not _conforms(v, hints.get(name, Any)):
            raise ValueError(f"{tag}.{name}: {_preview(v)} is not a {hints.get(name)}")
    try:
        return cls(**kwargs)
    except Exception as exc:  # a field missing, or the type's own check (ArchiveSpec's: UnsafePath)
        raise ValueError(f"{tag}: {exc}") from exc


def _conforms(value: Any, hint: Any) -> bool:
    """A shallow type check of a decoded field against its annotation (classes, unions, Literal)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return isinstance(value, origin) if isinstance(origin, type) else True


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class LakeJSONSerializer(Serializer):  # type: ignore[type-arg]  # Serializer[Any] fails at runtime
    """Prefect serializer of the lake's cache records: `encode`/`decode` as JSON; no options."""

    type: str = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        """JSON bytes of `encode(obj)`."""
        return json.dumps(encode(obj), separators=(",", ":")).encode()

    def loads(self, blob: bytes) -> Any:
        """`decode` of the JSON in `blob`."""
        return decode(json.loads(blob))


def vet_record(source: str, content: bytes) -> bytes:
    """The record in `content` re-encoded, if it is one of ours; else raise UnsafeCacheRecord.

    Ours: a JSON object with exactly `metadata` and `result`, the metadata naming exactly
    {"type": "binance-lake-json"} as its serializer and holding only Prefect's metadata
    fields, the result a string that `LakeJSONSerializer` decodes.
    """
    if len(content) > MAX_RECORD_BYTES:
        raise UnsafeCacheRecord(source, f"{len(content)} bytes, more than any cache record of this lake")
    try:
        record = json.loads(content)
    except (ValueError, RecursionError) as exc:
        raise UnsafeCacheRecord(source, f"not JSON ({exc})") from None
    if not isinstance(record, dict) or set(record) != {"metadata", "result"}:
        raise UnsafeCacheRecord(source, "not a cache record (expected exactly 'metadata' and 'result')")
    metadata, result = record["metadata"], record["result"]
    if not isinstance(metadata, dict) or not set(metadata) <= _METADATA_KEYS:
        raise UnsafeCacheRecord(source, "unexpected record metadata")
    if metadata.get("serializer") != {"type": SERIALIZER_TYPE}:
        raise UnsafeCacheRecord(source, f"serializer {_preview(metadata.get('serializer'))} is not "
                                f"{{'type': {SERIALIZER_TYPE!r}}} (written by an older version, or by someone else)")
    if not isinstance(result, str):
        raise UnsafeCacheRecord(source, "the result is not a JSON string")
    try:
        LakeJSONSerializer().loads(result.encode())
    except (ValueError, RecursionError) as exc:
        raise UnsafeCacheRecord(source, f"the result does not decode: {exc}") from None
    return json.dumps(record).encode()


class LakeCacheStorage(LocalFileSystem):
    """The data dir's cache records (a local folder): every read goes through `vet_record`."""

    _block_type_name = "Binance Lake Cache Storage"

    def _read_vetted(self, path: str) -> bytes:
        resolved = self._resolve_path(path)
        if not resolved.is_file():
            raise ValueError(f"Path {resolved} does not exist or is not a file.")  # as LocalFileSystem says it
        with open(resolved, "rb") as fh:
            content = fh.read(MAX_RECORD_BYTES + 1)
        try:
            return vet_record(str(resolved), content)
        except UnsafeCacheRecord as exc:
            _warn(exc)
            raise

    async def aread_path(self, path: str) -> bytes:
        """Read and vet a record (Prefect's async path)."""
        return self._read_vetted(path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:  # type: ignore[override]  # as LocalFileSystem's
        """Read and vet a record."""
        return self._read_vetted(path)


def _warn(exc: UnsafeCacheRecord) -> None:
    """Say so where the operator looks: the task run's log if there is one, else the module's."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        logger: Any = get_run_logger()
    except MissingContextError:
        logger = log
    logger.warning("cache record refused, the task runs again: %s", exc)
