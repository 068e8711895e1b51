"""Thin Prefect wrappers: retries, caching and logging around the plain functions.

Caching: a per-archive task's key is (stage, archive key, published sha256, data dir,
output options), so a re-run skips verified archives and a re-published checksum
fetches again. A cache hit must not outlive its output: the flow passes
`refresh_cache=True` when the output on disk is missing or holds another checksum.

Only the cached tasks persist their results, as JSON that executes nothing when read
(tasks/prefect_cache.py); every other task has `persist_result=False`, whatever Prefect's
defaults say, so no result is ever pickled to disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.utilities.hashing import hash_objects

from tasks.audit.between_datasets import AUDITED_DATASETS, AuditReport, audit_symbol, lake_datasets, write_audit_report
from tasks.audit.between_sources import audit_sources
from tasks.errors import PipelineError, TransientNetworkError, describe
from tasks.features.incremental import Feature, FeatureResult, compute_feature, lake_fingerprint
from tasks.lake.cleanup import CleanupResult, cleanup_symbol
from tasks.lake.compact import CompactionResult, compact_symbol
from tasks.lake.gaps import GapReport, gap_report, write_gap_report
from tasks.lake.ingest import IngestResult, SymbolValidation, ingest_archive, validate_symbol
from tasks.lake.inventory import lake_inventory
from tasks.lake.repair import RepairResult, repair_count, repair_symbol
from tasks.lake.validate import VerifiedFile
from tasks.prefect_cache import LakeJSONSerializer
from tasks.settings import ConvertOptions
from tasks.source.archive_spec import ArchiveSpec, Granularity, Market
from tasks.source.download import DownloadResult, Published, download_archive, fetch_checksums
from tasks.source.http import HttpOptions
from tasks.source.listing import Discovery, discover

#: Bump when the lake file format changes, so old cache records stop matching.
CACHE_VERSION = "trades-v1"


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry transient network faults only (never 404 or bad data)."""
    return isinstance(state.result(raise_on_failure=False), TransientNetworkError)


def archive_cache_key(stage: str) -> Any:
    """A cache-key function for a per-archive stage: stage + archive + published sha256 + lake."""

    def key(context: TaskRunContext, inputs: dict[str, Any]) -> str | None:
        spec: ArchiveSpec = inputs["spec"]
        return hash_objects(
            "binance-lake",
            stage,
            CACHE_VERSION,
            spec.key,
            inputs["sha256"],
            str(Path(inputs["data_dir"]).resolve()),
            repr(inputs.get("options")),
        )

    return key


@task(name="discover", task_run_name="discover {market} {dataset}", persist_result=False, retries=2,
      retry_delay_seconds=5, retry_condition_fn=retry_if_transient)
def discover_task(
    listing_url: str, market: Market, symbols: list[str], granularities: list[Granularity], http: HttpOptions,
    concurrency: int, dataset: str = "trades",
) -> list[Discovery]:
    """List what the bucket publishes for each symbol and granularity (of one dataset)."""
    found = asyncio.run(discover(listing_url, market, symbols, granularities, http, concurrency, dataset))
    logger = get_run_logger()
    for d in found:
        if d.error:
            logger.error("%s %s %s: listing failed, nothing of it is fetched: %s", d.market, d.symbol,
                         d.granularity, d.error)
            continue
        logger.info("%s %s %s: %d archives published", d.market, d.symbol, d.granularity, len(d.archives))
        for key, reason in d.rejected:
            logger.error("refused listing key %s: %s", key, reason)
    return found


@task(name="fetch-checksums", task_run_name="fetch checksums", persist_result=False, retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_if_transient)
def checksums_task(specs: list[ArchiveSpec], base_url: str, http: HttpOptions, concurrency: int) -> list[Published]:
    """Fetch the published sha256 of every planned archive (tiny files, fetched concurrently, each failing alone)."""
    published = asyncio.run(fetch_checksums(specs, base_url, http, concurrency))
    logger = get_run_logger()
    for p in published:
        if p.error:
            logger.error("%s: no usable checksum, not fetched: %s", p.spec.key, p.error)
    return published


@task(
    name="download-archive",
    # Symbol and day first: the log panel cuts names (`download data/spot/daily.` said nothing).
    task_run_name="download {spec.symbol} {spec.label}",
    cache_key_fn=archive_cache_key("download"),
    persist_result=True,
    result_serializer=LakeJSONSerializer(),
    retry_condition_fn=retry_if_transient,
)
def download_task(
    spec: ArchiveSpec, sha256: str, data_dir: Path, base_url: str, http: HttpOptions, listed_size: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Download and verify one archive, bounded by its listed size (transient faults retried inside: `http.retries`).

    `on_bytes`: the bytes received so far, for a progress bar in the flow's process (not in the cache key).
    """
    result = asyncio.run(download_archive(spec, sha256, base_url, data_dir, http, listed_size, on_bytes))
    get_run_logger().info("%s: %d bytes verified in %.2fs", spec.key, result.bytes, result.seconds)
    return result


@task(name="ingest-archives", task_run_name="convert {label}", persist_result=False)
def ingest_batch_task(
    items: list[tuple[ArchiveSpec, str]], data_dir: Path, options: ConvertOptions, label: str = ""
) -> list[IngestResult | PipelineError]:
    """Convert a batch of verified archives into staging, each validated before it lands.

    Small archives go in batches because submitting a task to Dask costs about 0.1 s, more
    than converting a small day. Each archive succeeds or fails alone: a refused one is
    returned as its error, the others still land. Re-runs skip an archive whose rows are
    already in the lake or in staging from the same sha256 (the content is the cache).
    """
    logger = get_run_logger()
    out: list[IngestResult | PipelineError] = []
    for spec, sha256 in items:
        try:
            result = ingest_archive(spec, sha256, data_dir, options)
        except PipelineError as exc:
            logger.error("%s: %s", spec.key, describe(exc))
            out.append(exc)
            continue
        logger.info(
            "%s: %d rows (%d duplicates dropped, %d id gaps) -> %s in %.2fs%s",
            spec.key, result.rows, result.duplicates_dropped, result.id_gaps, result.lake_path.name,
            result.seconds, " (already converted)" if result.reused else "",
        )
        out.append(result)
    return out


@task(name="validate-symbol", task_run_name="validate {dataset} {market}/{symbol}", persist_result=False)
def validate_symbol_task(
    data_dir: Path, market: Market, symbol: str, start: Any, end: Any, verified: tuple[VerifiedFile, ...] = (),
    dataset: str = "trades",
) -> SymbolValidation:
    """Validate every lake file of a symbol overlapping [start, end] and the key continuity between them.

    `verified`: files this run's merge wrote and validated in full; unchanged, they are not read again.
    """
    return validate_symbol(data_dir, market, symbol, start, end, verified, dataset)


@task(name="repair-symbol", task_run_name="repair {market}/{symbol}", persist_result=False)
def repair_symbol_task(
    data_dir: Path, market: Market, symbol: str, validation: SymbolValidation, target_bytes: int,
    options: ConvertOptions, start: date, end: date, verified: tuple[VerifiedFile, ...] = (),
) -> tuple[RepairResult, SymbolValidation]:
    """Rebuild the symbol's damaged lake files from the kept archives; (what was done, validation after it)."""
    result, after = repair_symbol(data_dir, market, symbol, validation, target_bytes, options, start, end, verified)
    logger = get_run_logger()
    for line in result.lines():
        (logger.warning if line.startswith("NOT REPAIRED") else logger.info)("%s", line)
    return result, after


@task(name="merge-symbol", task_run_name="{mode} {dataset} {market}/{symbol}", persist_result=False)
def compact_task(
    data_dir: Path, market: Market, symbol: str, target_bytes: int, options: ConvertOptions, mode: str,
    dataset: str = "trades",
) -> CompactionResult:
    """Merge the symbol's staged archives into the lake (mode "merge") or re-pack it too ("optimize")."""
    result = compact_symbol(data_dir, market, symbol, target_bytes, options, consolidate=mode == "optimize",
                            dataset_id=dataset)
    if result.files_written or result.files_removed:
        get_run_logger().info(
            "%s/%s: wrote %s (%d rows, %d bytes), removed %d files, merged %d staged archives in %.2fs",
            market, symbol, ", ".join(result.files_written) or "nothing", result.rows_written,
            result.bytes_written, len(result.files_removed), len(result.staged_merged), result.seconds,
        )
    return result


@task(name="gap-report", task_run_name="gaps {dataset} {market}/{symbol}", persist_result=False)
def gaps_task(
    data_dir: Path, market: Market, symbol: str, start: date, end: date, not_published: set[date],
    tolerance_s: float, refused_now: dict[date, dict[str, str]], dataset: str = "trades",
) -> GapReport:
    """Build and write the gap report of the symbol's dataset."""
    report = gap_report(data_dir, market, symbol, start, end, not_published, tolerance_s, refused_now, dataset)
    write_gap_report(data_dir, report)
    return report


@task(name="audit", task_run_name="audit {market}/{symbol}", persist_result=False)
def audit_task(
    data_dir: Path, market: Market, symbol: str, start: date, end: date, datasets: tuple[str, ...] = (),
    options: ConvertOptions | None = None,
) -> AuditReport | None:
    """Check the symbol's datasets in the lake against each other, and each of `datasets` monthly against daily.

    Datasets are compared when the lake holds two or more; monthly against daily where both
    sources of the same days are downloaded (`audit_sources`). None when nothing could be compared.
    Mismatches are reported (and written beside the gap report), never raised: they are facts about the archive.
    """
    held = lake_datasets(data_dir, market, symbol, AUDITED_DATASETS)
    report = (audit_symbol(data_dir, market, symbol, start, end, held) if len(held) >= 2
              else AuditReport(market, symbol, start.isoformat(), end.isoformat()))
    for dataset_id in datasets:
        audit_sources(data_dir, market, symbol, dataset_id, start, end, options or ConvertOptions(), report)
    if not report.checked and not report.mismatches:
        return None
    path = write_audit_report(data_dir, report)
    logger = get_run_logger()
    for line in report.summary_lines():
        (logger.warning if line.startswith("  ") else logger.info)("%s", line)
    logger.info("audit report: %s", path)
    return report


@task(name="cleanup-archives", task_run_name="cleanup {dataset} {market}/{symbol}", persist_result=False)
def cleanup_task(
    data_dir: Path, market: Market, symbol: str, start: date, end: date, dataset: str = "trades"
) -> CleanupResult:
    """Delete the symbol's downloaded archives whose rows are verified in the lake."""
    result = cleanup_symbol(data_dir, market, symbol, start, end, dataset)
    get_run_logger().info("%s/%s: removed %d archives, %d bytes freed; kept %d",
                          market, symbol, len(result.removed), result.bytes_freed, len(result.kept))
    return result


def _feature_cache_key(context: TaskRunContext, inputs: dict[str, Any]) -> str | None:
    feature: Feature = inputs["feature"]
    data_dir = Path(inputs["data_dir"]).resolve()
    entries = lake_inventory(data_dir, inputs["market"], inputs["symbol"])
    # Parameters and the lake's exact sources: a new day, a re-published archive or another
    # parameter all miss the cache; the flow refreshes it when the output is gone.
    return hash_objects("binance-lake", "features", CACHE_VERSION, feature.name, feature.spec.to_json(),
                        inputs["market"], inputs["symbol"], str(data_dir), lake_fingerprint(entries, None),
                        repair_count(data_dir, inputs["market"], inputs["symbol"]))  # a repair recomputes


@task(name="features", task_run_name="features {market}/{symbol} {feature.name}", cache_key_fn=_feature_cache_key,
      persist_result=True, result_serializer=LakeJSONSerializer())
def features_task(data_dir: Path, market: Market, symbol: str, feature: Feature) -> FeatureResult:
    """Bring one feature of one symbol up to the lake's last trade (incremental, see tasks.features.incremental)."""
    result = compute_feature(data_dir, market, symbol, feature)
    get_run_logger().info("%s %s/%s: %s, %d trades -> %d bars in %.2fs%s", feature.name, market, symbol,
                          result.mode, result.trades, result.bars, result.seconds,
                          f" ({result.reason})" if result.reason else "")
    return result
