"""One exception type per failure kind.

Every error names the file (or URL, or listing key) it is about and the reason, so a
report line is enough to act on. Only `TransientNetworkError` is retried.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: `source` is the file, URL or key concerned; `reason` says why."""

    kind = "error"

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        # Keep (source, reason) across pickling: Dask and Prefect results pickle errors.
        return (type(self), (self.source, self.reason))


class NotPublished(PipelineError):
    """The archive answered 404 (S3 `NoSuchKey`): not published yet, or never. Not retried."""

    kind = "not published"


class TransientNetworkError(PipelineError):
    """5xx, 429, 403 AccessDenied, timeout, reset or a body cut short: worth retrying with backoff.

    `retry_after`: seconds the server asked us to wait (its `Retry-After` header), if any.
    """

    kind = "transient network error"

    def __init__(self, source: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(source, reason)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.source, self.reason, self.retry_after))


class OversizedResponse(PipelineError):
    """A body longer than the listing says (plus a margin): reading stopped, the archive refused, nothing kept."""

    kind = "body larger than listed"


class RedirectRefused(PipelineError):
    """A redirect to another host (or scheme) while the settings allow only same-host redirects."""

    kind = "redirect refused"


class ChecksumMismatch(PipelineError):
    """The archive's sha256 differs from its published `.CHECKSUM`, twice in a row."""

    kind = "checksum mismatch"


class CorruptArchive(PipelineError):
    """Not a readable ZIP, no CSV member or several, or a member name that is unsafe."""

    kind = "corrupt archive"


class InvalidData(PipelineError):
    """The CSV inside the archive breaks the dialect or the value rules."""

    kind = "invalid data"


class UnsafePath(PipelineError):
    """A symbol, listing key or member name that would escape the data directory."""

    kind = "unsafe path"


class InvalidListing(PipelineError):
    """The bucket listing could not be parsed (not the expected S3 XML)."""

    kind = "invalid listing"


class LakeValidationError(PipelineError):
    """A Parquet file in (or about to enter) the lake breaks the lake contract."""

    kind = "lake validation failed"


class DamagedLakeFile(LakeValidationError):
    """A lake or staged file that cannot be read (unreadable footer, a page failing its checksum)."""

    kind = "damaged lake file"


class LakeConflict(PipelineError):
    """Merging would give a day two sources or a trade id twice: refused, the lake unchanged."""

    kind = "lake conflict"


class TradeIdCollision(LakeConflict):
    """A staged archive holds trade ids that another day of the lake (or another staged archive) holds."""

    kind = "trade ids collide"


class LakeLocked(PipelineError):
    """Another run holds the data directory's lock."""

    kind = "data directory locked"


class DataDirRefused(PipelineError):
    """The data dir is not one this tool may use (a file, unwritable, or a folder that is not a lake)."""

    kind = "data directory refused"


class DataDirNotShared(PipelineError):
    """A Dask worker does not see the run's data dir (it must be the same path everywhere)."""

    kind = "data dir not shared with the Dask workers"


class TemporaryServerFailed(PipelineError):
    """The run's temporary Prefect API server did not start (it exited, or did not answer in time)."""

    kind = "temporary Prefect API server failed"


class UnsafeCacheRecord(PipelineError):
    """A Prefect cache record in the data dir is not in the lake's JSON format: never decoded, the task re-runs."""

    kind = "cache record refused"


def describe(exc: BaseException) -> str:
    """Return a one-line, human-readable account of an exception for reports."""
    if isinstance(exc, PipelineError):
        return f"{exc.kind}: {exc}"
    return f"{type(exc).__name__}: {exc}"


class UnexpectedResponse(PipelineError):
    """An HTTP status that is neither success, 404, nor a known transient fault. Not retried."""

    kind = "unexpected HTTP response"


class NotDownloaded(PipelineError):
    """Conversion was asked for an archive that is not (or no longer) on disk."""

    kind = "archive not downloaded"


class LakeReadError(PipelineError):
    """Reading the lake (`tasks.read`) failed: an unknown market, symbol, feature, day or column, or a damaged file."""

    kind = "cannot read the lake"


class DateRangeRefused(PipelineError):
    """The requested days cannot be published yet (a start after yesterday, UTC)."""

    kind = "date range refused"


class SymbolNotListed(PipelineError):
    """A well-formed symbol that the market's listing does not know (a typo, or another market's)."""

    kind = "symbol not listed"
