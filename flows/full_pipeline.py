"""The full pipeline: discover, download, convert and validate Binance trade archives.

Run ad hoc:  python -m flows.full_pipeline --market spot --symbols BTCUSDT --start 2024-01-01 \
                 --end 2024-01-31 --data-dir ./data
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # The command line checks its arguments and launches the API server before this module's
    # imports (seconds of Prefect, pyarrow, Dask, Numba), which it then imports by name.
    from flows.cli import finish, main

    finish(main())

import hashlib
import logging
import queue
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any, cast

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.filesystems import LocalFileSystem
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.api_server import TemporaryApiServer
from flows.artifacts import publish_artifacts

# The command line lives in flows.cli (it imports no Prefect); its names stay importable here.
from flows.cli import INTERRUPTED as INTERRUPTED
from flows.cli import Verbosity
from flows.cli import build_parser as build_parser
from flows.cli import main as main
from flows.cli import print_validation_error as print_validation_error
from flows.cli import settings_from_args as settings_from_args
from flows.progress import Progress, cli_progress, current
from flows.runtime import (
    check_workers_share,
    dask_runner,
    default_dask_runner,
    flush_worker_logs,
    server_template,
    shared_api_server,
)
from tasks.atomic import remove_stale_temporaries
from tasks.audit.between_datasets import AUDITED_DATASETS, lake_datasets
from tasks.convert.batching import Batcher, sort_published
from tasks.datadir import open_data_dir
from tasks.datasets import dataset
from tasks.errors import (
    DamagedLakeFile,
    NotPublished,
    PipelineError,
    SymbolNotListed,
    TradeIdCollision,
    TransientNetworkError,
    describe,
)
from tasks.features.incremental import FeatureResult, from_cache, parse_feature
from tasks.labels import batch_label
from tasks.lake.compact import CompactionResult, recover_lake
from tasks.lake.gaps import reported as gaps_reported
from tasks.lake.ingest import IngestResult, SymbolValidation
from tasks.lake.inventory import lake_sources
from tasks.lake.repair import damage_on_record, intact_sources
from tasks.lock import data_dir_lock
from tasks.prefect_cache import LakeCacheStorage
from tasks.prefect_tasks import (
    audit_task,
    checksums_task,
    cleanup_task,
    compact_task,
    discover_task,
    download_task,
    features_task,
    gaps_task,
    ingest_batch_task,
    repair_symbol_task,
    validate_symbol_task,
)
from tasks.preflight import cap_settings, find_unlisted, probe_options, run_coroutine, unlisted_message
from tasks.report import ArchiveOutcome, GapNote, PipelineReport, RunFailed
from tasks.settings import Settings
from tasks.source.archive_spec import ArchiveSpec, Granularity, parse_archive_name
from tasks.source.download import Published, local_archive_matches, stored_checksum
from tasks.source.http import HttpOptions
from tasks.source.listing import Discovery
from tasks.source.plan import MissingDay
from tasks.source.refusals import mark_known, prior_refusals
from tasks.source.run_plan import ended_text, granularities, http_options, local_discoveries, plan_run
from tasks.warmup import warm_up_in_background

#: Prefect's cache records for this lake, inside the data dir.
CACHE_DIR = ".prefect-cache"


@flow(name="full-pipeline", task_runner=default_dask_runner())
def full_pipeline(settings: Settings) -> PipelineReport | State[PipelineReport]:
    """Bring the lake up to date for the requested market, symbols and days.

    Steps, in order (each selectable): download, convert (into staging), merge (staged
    archives into the lake's files), optimize (re-pack files left under target), validate,
    gaps (the gap report), cleanup (delete verified downloads). Every good archive lands
    even when others are refused; the run then ends Failed, naming each refused archive.
    One run at a time per data dir (a lock); a run killed mid-swap is rolled forward here.
    """
    settings, capped = cap_settings(settings)  # a run from the UI: the CLI capped it already
    report = run_pipeline(settings, [capped] if capped else [])
    return final_state(report)


def final_state(report: PipelineReport) -> PipelineReport | State[PipelineReport]:
    """What a flow returns: its report, or a Failed state holding it when anything was refused or failed.

    A returned Failed state ends the run Failed (red in the UI) with the reasons as its message,
    without the traceback Prefect logs for a raised exception (twice, in the terminal). Its
    result is still the report: `state.result(raise_on_failure=False)`.
    """
    if report.ok:
        return report
    return Failed(message=str(RunFailed(report)), data=report)


def run_pipeline(settings: Settings, notes: Sequence[str] = ()) -> PipelineReport:
    """The pipeline's steps, inside the calling flow (its task runner runs the tasks).

    Shared by `full_pipeline` and `flows.daily_update`; `notes` are added to the report.
    """
    logger = get_run_logger()
    data_dir = open_data_dir(settings.data_dir)  # refuses a folder that is neither new, empty nor a lake
    in_process = not (settings.dask_address or settings.dask_processes)
    if in_process and {"convert", "merge", "optimize"} & set(settings.steps):
        # The in-process cluster's threads will call the kernels.
        warm_up_in_background(settings.features if "features" in settings.steps else ())
    if settings.dask_address:
        workers = check_workers_share(data_dir, settings.dask_address)
        logger.info("all %d Dask workers at %s see %s", workers, settings.dask_address, data_dir)
    with data_dir_lock(data_dir, settings.lock_wait_s, run=str(flow_run.name or "")):
        recovered, leftovers = recover_lake(data_dir)
        stale = remove_stale_temporaries(data_dir, check_owner=False)  # the lock: no other run is writing
        report = PipelineReport(notes=list(notes), strict=settings.strict)
        startup = [f"warning: {line}" for line in leftovers]
        if recovered:
            startup.insert(0, f"repaired: {recovered} lake or feature swaps left by a killed run were finished or "
                           "undone (readers saw the old or the new files throughout)")
        if stale:
            startup.append(f"removed {stale} temporary files left by an interrupted run")
        for line in startup:
            logger.warning("%s", line)
        report.notes.extend(startup)
        # Saved before any task runs: a block write while tasks write their states can meet
        # SQLite's SQLITE_BUSY_SNAPSHOT on the temporary API server, answered 503, and the
        # Prefect client retries after 2 s (measured: 1 run in 2 of the e2e benchmark).
        cache = cache_storage(data_dir)
        # One pass per dataset, in the order asked: each is its own lake (`tasks.datasets`).
        for ds in settings.datasets:
            _run_dataset(settings.model_copy(update={"datasets": (ds,)}), data_dir, report, cache)
        # The audit is for symbols with two datasets or more in the lake (file names only: cheap),
        # and for every symbol when the run fetched the other source of its days (`audit_sources`).
        audited = [s for s in settings.symbols if settings.audit_sources
                   or len(lake_datasets(data_dir, settings.market, s, AUDITED_DATASETS)) > 1]
        if "audit" in settings.steps and audited:
            report.stage_started("audit")
            _audit(settings.model_copy(update={"symbols": tuple(audited)}), data_dir, report)
            report.stage_ended("audit")
        if "cleanup" in settings.steps:  # after the audit, which may compare the downloaded archives
            report.stage_started("cleanup")
            for ds in settings.datasets:
                _cleanup(settings.model_copy(update={"datasets": (ds,)}), data_dir, report)
            report.stage_ended("cleanup")
        publish_artifacts(report)  # flows/artifacts.py: run-summary, lake-gaps and the tables
    if settings.dask_address or settings.dask_processes:
        flush_worker_logs()  # other processes' logs; an in-process cluster's are this process's own
    # One line: the CLI prints the whole summary, and a UI run has it as the run-summary artifact.
    logger.info("%s", report.log_line())
    return report


def _run_dataset(settings: Settings, data_dir: Path, report: PipelineReport, cache: LocalFileSystem) -> None:
    """The steps of one dataset's pass (`settings.dataset`). Features and repairs are of trades."""
    steps = settings.steps
    if "download" in steps or "convert" in steps:
        _ingest(settings, data_dir, report, cache)
    if "merge" in steps or "optimize" in steps:
        report.stage_started("merge")
        _compact(settings, data_dir, report)
        report.stage_ended("merge")
    # Validation, the gap report and the features only read the merged lake: they run together.
    readers = []
    trades_only = {"features"} if gaps_reported(settings.dataset) else {"gaps", "features"}
    for name, step in (("validate", _validate), ("gaps", _gaps), ("features", partial(_features, cache=cache))):
        if name in steps and (settings.trades or name not in trades_only):
            report.stage_started(name)
            readers.append((name, step(settings, data_dir, report)))
    for name, collect in readers:
        collect()
        report.stage_ended(name)
    if settings.trades:
        _reread_repaired(settings, data_dir, report, cache)


def cache_storage(data_dir: Path) -> LocalFileSystem:
    """The storage block holding this lake's cache records, saved server-side (one per data dir).

    The records live with the lake they describe: delete the data dir and its cache goes
    too, and Dask workers sharing the data dir share the cache.

    Prefect requires a saved block for results written by Dask workers. An existing block
    with the same base path is reused as it is: runs then only read it. It is a
    `LakeCacheStorage`: a record is decoded only if it is the lake's own JSON (anyone who
    can write the data dir could otherwise run code through a pickled record).
    """
    basepath = str(data_dir / CACHE_DIR)
    name = "binance-lake-cache-" + hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    try:
        saved = LakeCacheStorage.load(name)
    except ValueError:  # no such block yet
        saved = None
    if isinstance(saved, LakeCacheStorage) and saved.basepath == basepath:
        return saved
    storage = LakeCacheStorage(basepath=basepath)
    storage.save(name, overwrite=True)
    return storage


def _http(settings: Settings) -> HttpOptions:
    return http_options(settings)


def _unlisted(settings: Settings, discoveries: list[Discovery], http: HttpOptions) -> dict[str, str]:
    """Symbols whose listed folders hold nothing and that the listing does not know: symbol -> what to say."""
    empty = [s for s in settings.symbols
             if all(not d.error and not d.archives and not d.rejected for d in discoveries if d.symbol == s)]
    if not empty:
        return {}
    found = run_coroutine(find_unlisted(settings.listing_url, settings.market, empty, probe_options(http),
                                        settings.dataset))
    where = settings.market if settings.trades else f"{settings.market} {settings.dataset}"
    return {s: unlisted_message(s, where, found[s]).split(": ", 1)[1] for s in found}


def _ingest(settings: Settings, data_dir: Path, report: PipelineReport, cache: LocalFileSystem) -> None:
    logger = get_run_logger()
    http = _http(settings)
    downloading = "download" in settings.steps
    converting = "convert" in settings.steps
    progress = current()
    if downloading:
        report.stage_started("download")  # discovery, checksums and the downloads themselves
        progress.begin("list", len(settings.symbols) * len(granularities(settings)), "folders")
        discoveries = discover_task(
            settings.listing_url, settings.market, list(settings.symbols), granularities(settings), http,
            settings.concurrency, settings.dataset,
        )
        progress.advance("list", len(discoveries))
        progress.end("list")
    else:
        discoveries = local_discoveries(settings, data_dir)

    # A symbol whose folders of this dataset hold nothing: is it listed at all (a typo)?
    unlisted = _unlisted(settings, discoveries, http) if downloading else {}
    plan = plan_run(settings, discoveries, data_dir, unlisted)
    specs: list[ArchiveSpec] = plan.archives
    sizes: dict[ArchiveSpec, int] = {}
    # Downloaded, not converted: archives of damaged lake files (the repair converts them) and the
    # other source of the same days (the audit compares them); the reason is the outcome's detail.
    not_converted: dict[ArchiveSpec, str] = {}
    for sp in plan.symbols:
        if sp.not_listed is not None:  # a typo (a run from the UI): one line, not every day "not published"
            report.outcomes.append(ArchiveOutcome(sp.symbol, "refused", detail=sp.not_listed,
                                                  kind=SymbolNotListed.kind))
            continue
        # A listing that could not be read: nothing of this symbol is planned (its days are not
        # "not published"), or, when it was listed for the audit only, its audit of monthly against
        # daily; the other symbols go on, and the run ends Failed naming the folder.
        report.outcomes.extend(ArchiveOutcome(d.prefix, "failed" if d.transient else "refused",
                                              detail=d.error or "") for d in sp.unlisted)
        report.outcomes.extend(ArchiveOutcome(key, "refused", detail=reason) for key, reason in sp.rejected)
        sizes.update(sp.sizes)
        not_converted.update(dict.fromkeys(sp.counterparts, "kept for the audit of monthly against daily, not landed"))
        not_converted.update(dict.fromkeys(sp.restoring, "kept for the repair of a damaged lake file"))
        report.missing.extend(sp.missing)
    ends = [sp.ended for sp in plan.symbols if sp.ended is not None]
    if ends:  # a known end, once for the run: not missing days
        last, days_after = ends[0]
        report.notes.append(ended_text(settings.dataset, settings.market, last, days_after)
                            + (f" (for each of {len(ends)} symbols)" if len(ends) > 1 else ""))
    rendered = plan.render()  # what `--dry-run` prints
    logger.info("%s", rendered)
    progress.note(rendered)

    if downloading:
        progress.begin("checksums", len(specs))
        published = checksums_task(specs, settings.base_url, http, settings.concurrency) if specs else []
        progress.advance("checksums", len(published))
        progress.end("checksums")
    else:
        published = [Published(s, stored_checksum(s, data_dir), "no verified local archive") for s in specs]
    checked = sort_published(published, sizes)
    report.outcomes.extend(checked.outcomes)
    report.missing.extend(checked.missing)
    todo = checked.todo
    # Read before anything is fetched: a refusal recorded under the same published checksum is known.
    prior = prior_refusals(data_dir, todo)

    ingests: dict[PrefectFuture[Any], list[ArchiveSpec]] = {}
    downloads: dict[PrefectFuture[Any], ArchiveSpec] = {}
    download_results: dict[ArchiveSpec, Any] = {}
    shas = dict(todo)
    batch = Batcher(settings.ingest_batch_bytes, settings.ingest_batch_archives, sizes)

    def submit(batches: list[list[ArchiveSpec]]) -> None:
        for specs in batches:
            submit_batch(specs)

    def submit_batch(specs: list[ArchiveSpec]) -> None:
        report.stage_started("convert")
        label = batch_label(specs)  # the task run's name: `convert BTCUSDT 2024-01-01..2024-01-07 (7 archives)`
        fut = ingest_batch_task.submit(
            items=[(s, shas[s]) for s in specs], data_dir=data_dir, options=settings.convert_options, label=label
        )
        ingests[fut] = list(specs)
        # Counted as the batch ends (in Dask's thread), not when the loop below gets to it.
        fut.add_done_callback(partial(_count_done, progress, "convert", len(specs)))

    slots = settings.dask_workers * settings.dask_threads_per_worker

    # Transient faults are retried inside the task (`http.retries`, honouring Retry-After), each
    # attempt within a deadline from the listed size: not by Prefect too, which would square them.
    download = download_task.with_options(result_storage=cache, retries=0)
    io_runner: ThreadPoolTaskRunner[Any]
    # A damaged lake file (on record from an earlier validation) does not count as holding its archives.
    held_by = intact_sources if settings.trades else partial(lake_sources, dataset=settings.dataset)
    in_lake = {s: held_by(data_dir, settings.market, s) for s in settings.symbols} if converting else {}
    fetching: set[ArchiveSpec] = set()  # downloads whose bytes come over the network (no verified local copy)
    if converting:
        progress.begin("convert", 0)  # before the first batch can end; grown as archives are queued
    with ThreadPoolTaskRunner(max_workers=settings.concurrency) as io_runner:
        for spec, sha in todo:
            held = in_lake.get(spec.symbol, {}).get((spec.key, sha))
            if held is not None:
                # Already in the lake from this very archive: nothing to fetch or convert.
                report.outcomes.append(ArchiveOutcome(spec.key, "cached", rows=held.rows, bytes=sizes.get(spec),
                                                      where="lake"))
            elif downloading:
                fresh = not local_archive_matches(spec, data_dir, sha)
                if fresh:
                    fetching.add(spec)
                # Bytes as they arrive, for the CLI's bar: only this process's threads run downloads.
                on_bytes = partial(progress.in_flight, "download", spec.key) if progress.enabled else None
                dl_future: PrefectFuture[Any] = io_runner.submit(
                    cast(Any, download.with_options(refresh_cache=fresh)),  # Prefect's overloads expect a coroutine
                    parameters={"spec": spec, "sha256": sha, "data_dir": data_dir, "base_url": settings.base_url,
                                "http": http, "listed_size": sizes.get(spec), "on_bytes": on_bytes},
                )
                downloads[dl_future] = spec
                if converting and spec not in not_converted:
                    progress.grow("convert", 1)
            elif local_archive_matches(spec, data_dir, sha):
                progress.grow("convert", 1)
                submit(batch.add(spec))
        if downloads:
            progress.begin("download", len(downloads), total_bytes=sum(sizes.get(s, 0) for s in fetching))
        # Conversion starts as soon as a batch of verified archives is ready, or once no download
        # has finished for `ingest_batch_wait_s`: a slow download never holds back the others' conversion.
        finished: queue.Queue[PrefectFuture[Any]] = queue.Queue()
        for dl_future in downloads:
            dl_future.add_done_callback(finished.put)
        for _ in range(len(downloads)):
            while True:
                try:
                    done = finished.get(timeout=settings.ingest_batch_wait_s)
                    break
                except queue.Empty:
                    if batch:
                        submit(batch.flush(slots))
            spec = downloads[done]
            result = done.result(raise_on_failure=False)
            failed = isinstance(result, BaseException)
            got = sizes.get(spec, 0) if spec in fetching else 0
            progress.advance("download", done_bytes=0 if failed else got, key=spec.key)
            if failed:  # its bytes will not come, nor its conversion
                progress.grow("download", total_bytes=-got)
                if converting and spec not in not_converted:
                    progress.grow("convert", -1)
            if isinstance(result, NotPublished):
                # Listed, but the archive answers 404: not published (yet); never retried, not a failure.
                report.outcomes.append(ArchiveOutcome(spec.key, "missing", detail=describe(result)))
                report.missing.extend(
                    MissingDay(spec.market, spec.symbol, d, "archive answers 404", spec.dataset) for d in spec.days()
                )
                continue
            if isinstance(result, BaseException):
                report.outcomes.append(_failed_outcome(spec, result, sizes.get(spec)))
                continue
            download_results[spec] = result
            if converting and spec not in not_converted:
                submit(batch.add(spec))
            else:  # a repair's archive is converted by the repair itself (validate step)
                cached = done.state.name == "Cached"
                report.outcomes.append(
                    ArchiveOutcome(spec.key, "cached" if cached else "downloaded", bytes=result.bytes,
                                   seconds=0.0 if cached else result.seconds,
                                   detail=not_converted.get(spec, ""),
                                   where="downloads")
                )
        if downloading:
            report.stage_ended("download")
            progress.end("download")
        submit(batch.flush(slots))

    for fut in as_completed(list(ingests)):
        report.stage_ended("convert")
        specs = ingests[fut]
        results = fut.result(raise_on_failure=False)
        if isinstance(results, BaseException):  # the batch itself failed (a worker died): each archive failed
            report.outcomes.extend(_failed_outcome(s, results, sizes.get(s)) for s in specs)
            continue
        for spec, result in zip(specs, results, strict=True):
            if isinstance(result, BaseException):
                report.outcomes.append(_failed_outcome(spec, result, sizes.get(spec)))
                continue
            assert isinstance(result, IngestResult)
            dl = download_results.get(spec)
            seconds = 0.0 if result.reused else result.seconds + (dl.seconds if dl is not None else 0.0)
            staged = result.lake_path.is_relative_to(data_dir / "staging")  # else the lake held it already
            report.outcomes.append(
                ArchiveOutcome(spec.key, "cached" if result.reused else "ingested", rows=result.rows,
                               bytes=sizes.get(spec), seconds=seconds, detail=_ingest_detail(result),
                               where="staging" if staged else "lake")
            )
    progress.end("convert")
    report.outcomes.sort(key=lambda o: o.archive)
    mark_known(report.outcomes, prior)


def _count_done(progress: Progress, stage: str, n: int, _: object) -> None:
    progress.advance(stage, n)


def _ingest_detail(result: IngestResult) -> str:
    parts = []
    if result.duplicates_dropped:
        parts.append(f"{result.duplicates_dropped} duplicate rows dropped")
    if result.id_gaps:
        missing = "intervals" if dataset(result.spec.dataset).continuity == "interval" else "ids"
        parts.append(f"{result.id_gaps} {'gaps' if missing == 'intervals' else 'id gaps'} "
                     f"({result.missing_ids} {missing} missing)")
    return "; ".join(parts)


def _failed_outcome(spec: ArchiveSpec, exc: BaseException, size: int | None) -> ArchiveOutcome:
    if isinstance(exc, PipelineError) and not isinstance(exc, TransientNetworkError):
        return ArchiveOutcome(spec.key, "refused", bytes=size, detail=describe(exc), kind=exc.kind)
    return ArchiveOutcome(spec.key, "failed", bytes=size, detail=describe(exc),
                          kind=exc.kind if isinstance(exc, PipelineError) else type(exc).__name__)


def _validate(settings: Settings, data_dir: Path, report: PipelineReport) -> Callable[[], None]:
    """Submit the validation of every symbol; returns what collects the results into `report`.

    A symbol with a lake file that failed (or one damaged on record) is then repaired from the
    kept archives (`tasks.lake.repair`), and its validation is the one after the repair.
    """
    ds = settings.dataset
    verified = {symbol: tuple(v for c in report.compactions if c.symbol == symbol and c.dataset == ds
                              for v in c.verified)
                for symbol in settings.symbols}
    futures = [
        validate_symbol_task.submit(data_dir, settings.market, symbol, settings.start, settings.end, verified[symbol],
                                    ds)
        for symbol in settings.symbols
    ]

    def collect() -> None:
        repairs = []
        for fut in futures:
            result = fut.result(raise_on_failure=False)
            if isinstance(result, BaseException):
                report.validation_errors.append(describe(result))
                continue
            assert isinstance(result, SymbolValidation)
            # Repairs rebuild trades files (tasks.lake.repair); another dataset's damage stays reported.
            if settings.trades and (result.failed_files or damage_on_record(data_dir, settings.market, result.symbol)):
                repairs.append((result, repair_symbol_task.submit(
                    data_dir, settings.market, result.symbol, result, settings.target_file_bytes,
                    settings.convert_options, settings.start, settings.end, verified[result.symbol])))
                continue
            add(result)
        for before, repair in repairs:
            repaired = repair.result(raise_on_failure=False)
            if isinstance(repaired, BaseException):  # the repair itself failed: the damage stays reported
                report.upkeep_errors.append(f"repair {settings.market}/{before.symbol}: {describe(repaired)}")
                add(before)
                continue
            report.repairs.append(repaired[0])
            if repaired[0].compaction is not None:  # the repair merged what waited in staging
                report.landed(repaired[0].compaction.staged_merged, "merged")
            add(repaired[1])
            if not repaired[0].unrepaired and before.symbol in report.deferred_merges:
                merge_error = report.deferred_merges.pop(before.symbol)
                report.notes.append(f"{merge_error.split(':', 1)[0]}: waited for the repair of a damaged file, "
                                    "then merged with it")
        for symbol in [s for s in settings.symbols if s in report.deferred_merges]:
            report.upkeep_errors.append(report.deferred_merges.pop(symbol))

    def add(result: SymbolValidation) -> None:
        report.validated_files += result.files
        report.validated_at_write += result.verified_at_write
        report.validation_errors.extend(result.errors)
        report.gaps.extend(
            GapNote(settings.market, result.symbol, g.where if settings.trades else f"{ds} {g.where}", g.after_id,
                    g.before_id, g.missing_ids, ds)
            for g in result.gaps
        )

    return collect


def _reread_repaired(settings: Settings, data_dir: Path, report: PipelineReport, cache: LocalFileSystem) -> None:
    """Gap reports and features again for the symbols whose lake files the validate step rebuilt.

    They ran beside the repair, on the damaged files: their results for those symbols (or their
    failures) are replaced by a run on the rebuilt lake, where the features recompute.
    """
    again = {r.symbol for r in report.repairs if r.repaired}
    steps = [(n, s) for n, s in (("gaps", _gaps), ("features", partial(_features, cache=cache))) if n in settings.steps]
    if not again or not steps:
        return
    where = {f"{settings.market}/{s}" for s in again}

    def first_pass(error: str) -> bool:  # labels of `_gaps` and `_features`: "<step> ... <market>/<symbol>: ..."
        head = error.split(": ", 1)[0]
        return head.startswith(("gap report ", "features ")) and head.rsplit(" ", 1)[-1] in where

    report.upkeep_errors = [e for e in report.upkeep_errors if not first_pass(e)]
    report.gap_reports = [g for g in report.gap_reports if g.symbol not in again or g.dataset != settings.dataset]
    first = [f for f in report.features if f.symbol in again]
    report.features = [f for f in report.features if f.symbol not in again]
    redo = settings.model_copy(update={"symbols": tuple(sorted(again))})
    for name, step in steps:
        report.stage_started(name)
        step(redo, data_dir, report)()
        report.stage_ended(name)
    report.features = kept_recomputes(first, report.features)


def kept_recomputes(first: Sequence[FeatureResult], second: Sequence[FeatureResult]) -> list[FeatureResult]:
    """The second pass's feature results, but a first pass's recompute where the second found nothing to do.

    A first pass that ran once the file was rebuilt recomputed from it already (the repair
    count had moved), and the second pass then finds the bars up to date: what the run did is
    the first pass's recompute, so that is what the report says.
    """
    done = {(f.feature, f.market, f.symbol): f for f in first if f.mode == "recomputed"}
    return [done.get((f.feature, f.market, f.symbol), f) if f.mode == "up to date" else f for f in second]


def _results(futures: list[tuple[str, PrefectFuture[Any]]], errors: list[str]) -> Iterator[Any]:
    """Each future's result in order; a failed one adds `<label>: <reason>` to `errors` instead.

    One symbol's failure never blocks the others (its lake files are left as they were).
    """
    for label, fut in futures:
        result = fut.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            errors.append(f"{label}: {describe(result)}")
        else:
            yield result


def _compact(settings: Settings, data_dir: Path, report: PipelineReport) -> None:
    mode = "optimize" if "optimize" in settings.steps else "merge"
    what = "" if settings.trades else f" {settings.dataset}"
    futures = [
        (symbol, f"{mode}{what} {settings.market}/{symbol}",
         compact_task.submit(data_dir, settings.market, symbol, settings.target_file_bytes, settings.convert_options,
                             mode, settings.dataset))
        for symbol in settings.symbols
    ]
    done: list[CompactionResult] = []
    progress = current()
    progress.begin("merge", len(futures), "symbols")
    for symbol, label, fut in futures:
        result = fut.result(raise_on_failure=False)
        progress.advance("merge")
        if isinstance(result, DamagedLakeFile) and "validate" in settings.steps:
            # The validate step rebuilds the damaged file from the kept archives and merges what is
            # staged with it: the run fails on this only if that repair does not happen.
            report.deferred_merges[symbol] = f"{label}: {describe(result)}"
        elif isinstance(result, BaseException):
            report.upkeep_errors.append(f"{label}: {describe(result)}")
        else:
            report.compactions.append(result)
            done.append(result)
    progress.end("merge")
    for c in done:  # this pass's: an earlier dataset's were counted by its own pass
        report.landed(c.staged_merged, "merged")
        report.landed(c.staged_dropped, "lake")
        for archive, reason in c.quarantined:
            report.refuse(archive, f"trade ids collide: {reason}", kind=TradeIdCollision.kind)


def _refused_days(settings: Settings, report: PipelineReport) -> dict[str, dict[date, dict[str, str]]]:
    """Days of the archives this run refused, per symbol, for the gap report."""
    out: dict[str, dict[date, dict[str, str]]] = {}
    for o in report.not_ingested:  # known refusals too: their days are not in the lake either
        parts = o.archive.split("/")
        if len(parts) < 5 or parts[-4] not in ("daily", "monthly"):
            continue  # a refused listing key, not an archive
        spec = parse_archive_name(settings.market, cast(Granularity, parts[-4]), parts[-1], settings.dataset)
        if spec is not None and spec.key == o.archive:
            for d in spec.days():
                out.setdefault(spec.symbol, {})[d] = {"day": str(d), "archive": o.archive, "reason": o.detail}
    return out


def _gaps(settings: Settings, data_dir: Path, report: PipelineReport) -> Callable[[], None]:
    refused = _refused_days(settings, report)
    what = "" if settings.trades else f" {settings.dataset}"
    futures = [
        (f"gap report {settings.market}/{symbol}{what}",
         gaps_task.submit(data_dir, settings.market, symbol, settings.start, settings.end,
                          {m.day for m in report.missing if m.symbol == symbol and m.dataset == settings.dataset},
                          settings.truncation_tolerance_s, refused.get(symbol, {}), settings.dataset))
        for symbol in settings.symbols
    ]
    return lambda: report.gap_reports.extend(_results(futures, report.upkeep_errors))


def _features(settings: Settings, data_dir: Path, report: PipelineReport,
              cache: LocalFileSystem) -> Callable[[], None]:
    futures = []
    for feature in (parse_feature(text) for text in settings.features):
        for symbol in settings.symbols:
            # A cache hit must not outlive its output: refresh when the feature's files are gone.
            has_output = any(feature.folder(data_dir, settings.market, symbol).glob("*.parquet"))
            task = features_task.with_options(refresh_cache=not has_output, result_storage=cache)
            futures.append((f"features {feature.name} {settings.market}/{symbol}",
                            task.submit(data_dir, settings.market, symbol, feature)))

    def collect() -> None:
        for label, fut in futures:
            result = fut.result(raise_on_failure=False)
            if isinstance(result, BaseException):
                report.upkeep_errors.append(f"{label}: {describe(result)}")
            else:  # a cache hit returns the result of the run that computed the bars: say what this run did
                report.features.append(from_cache(result) if fut.state.name == "Cached" else result)

    return collect


def _audit(settings: Settings, data_dir: Path, report: PipelineReport) -> None:
    """Check each symbol's datasets in the lake against each other (symbols holding two or more).

    With `audit_sources`, each dataset's monthly archives against its daily ones of the same days too.
    """
    sources = settings.datasets if settings.audit_sources else ()
    futures = [
        (f"audit {settings.market}/{symbol}",
         audit_task.submit(data_dir, settings.market, symbol, settings.start, settings.end, sources,
                           settings.convert_options))
        for symbol in settings.symbols
    ]
    report.audits.extend(a for a in _results(futures, report.upkeep_errors) if a is not None)


def _cleanup(settings: Settings, data_dir: Path, report: PipelineReport) -> None:
    what = "" if settings.trades else f" {settings.dataset}"
    futures = [
        (f"cleanup{what} {settings.market}/{symbol}",
         cleanup_task.submit(data_dir, settings.market, symbol, settings.start, settings.end, settings.dataset))
        for symbol in settings.symbols
    ]
    report.cleanups.extend(_results(futures, report.upkeep_errors))


def run_from_cli(settings: Settings, data_dir: Path, early: TemporaryApiServer | None = None,
                 verbosity: Verbosity = "normal") -> int:
    """The run of `python -m flows.full_pipeline` once its arguments are checked (`flows.cli.main`).

    Prints the summary; returns the exit status: 0 all good, 1 an archive refused or failed.
    `early`: the temporary API server `flows.cli` launched before the imports. `verbosity`:
    progress and Prefect's console lines (`flows.progress.cli_progress`).
    """
    # Dask's INFO chatter (workers starting and stopping) would bury the run's own report.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with cli_progress(verbosity), shared_api_server(server_template(data_dir), early=early):
        state = full_pipeline.with_options(task_runner=dask_runner(settings))(settings=settings, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunFailed):
        result = result.report
    if isinstance(result, PipelineReport):
        print(result.summary())
        return 0 if state.is_completed() else 1
    print(f"run ended {state.name}: {result}", file=sys.stderr)
    return 1
