"""Download: fetch published checksums, stream archives to disk while hashing, verify, commit.

A verified archive is renamed into `<data_dir>/archive/<key>` beside a copy of its
`.CHECKSUM`; a download that still disagrees with its published checksum after one
fresh fetch of both (binance-public-data#40, #241, #405) goes to
`<data_dir>/quarantine/<key>` with a `.reason.json`, and is never ingested. A body longer
than its listed size (plus a margin) is refused at once: only its `.reason.json` is kept.

Each archive and each `.CHECKSUM` succeeds or fails alone: a garbage checksum or a
failed download names its URL and never stops the others.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp

from tasks.atomic import atomic_path, commit, temp_path_for, write_bytes_atomic
from tasks.errors import (
    ChecksumMismatch,
    NotPublished,
    OversizedResponse,
    PipelineError,
    TransientNetworkError,
    UnexpectedResponse,
    describe,
)
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.http import HttpOptions, fetch_bytes, make_session, stream_to_file, with_retries
from tasks.source.refusals import write_note

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def parse_checksum(text: bytes, source: str) -> str:
    """The sha256 of a `.CHECKSUM` file: `<64 hex>  <file name>`, usually without a newline."""
    tokens = text.decode("ascii", "replace").split()
    if not tokens or not _SHA256.match(tokens[0].lower()):
        raise UnexpectedResponse(source, f"not a sha256 checksum file: {text[:80]!r}")
    return tokens[0].lower()


@dataclass(frozen=True)
class Published:
    """An archive's published checksum, or why there is none.

    `missing_reason`: not published (its `.CHECKSUM` answers 404). `error`: the checksum
    could not be had (garbage, an unexpected answer, or transient faults past every retry),
    `transient` telling which; such an archive is reported, not fetched.
    """

    spec: ArchiveSpec
    sha256: str | None
    missing_reason: str | None = None
    error: str | None = None
    transient: bool = False


async def fetch_checksum(
    session: aiohttp.ClientSession, spec: ArchiveSpec, base_url: str, options: HttpOptions
) -> Published:
    """Fetch one `.CHECKSUM`; a 404 means the archive cannot be verified, so it counts as not published."""
    url = spec.checksum_url(base_url)
    try:
        body = await with_retries(lambda: fetch_bytes(session, url, max_bytes=4096, options=options), options)
    except NotPublished:
        return Published(spec, None, "listed but its .CHECKSUM is not published (404)")
    return Published(spec, parse_checksum(body, url))


async def fetch_checksums(
    specs: list[ArchiveSpec], base_url: str, options: HttpOptions, concurrency: int
) -> list[Published]:
    """Fetch the published checksum of each archive, `concurrency` at a time; each fails alone."""
    sem = asyncio.Semaphore(concurrency)
    async with make_session(options, limit=concurrency) as session:

        async def one(spec: ArchiveSpec) -> Published:
            async with sem:
                try:
                    return await fetch_checksum(session, spec, base_url, options)
                except PipelineError as exc:  # one bad .CHECKSUM must not cost the others theirs
                    return Published(spec, None, error=describe(exc),
                                     transient=isinstance(exc, TransientNetworkError))

        return list(await asyncio.gather(*(one(s) for s in specs)))


@dataclass(frozen=True)
class DownloadResult:
    """A verified archive on disk."""

    spec: ArchiveSpec
    path: Path
    sha256: str
    bytes: int
    seconds: float
    refetched: bool = False


def local_archive_matches(spec: ArchiveSpec, data_dir: Path, sha256: str) -> bool:
    """True when the archive is on disk with a stored checksum equal to `sha256`.

    The stored `.CHECKSUM` is written only after the archive's hash was verified, so
    this is a cheap proof (no re-hash) that the local copy is the published one.
    """
    return verified_download(spec, data_dir) == sha256


async def download_archive(
    spec: ArchiveSpec, sha256: str, base_url: str, data_dir: Path, options: HttpOptions,
    listed_size: int | None = None, on_bytes: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Download `spec`, verify it against `sha256`, and commit it to `<data_dir>/archive/`.

    `listed_size` (the listing's `Size`) bounds the transfer: at most that many bytes plus
    `options.size_margin` are read, within `options.deadline_for(listed_size)` seconds.
    Transient faults (a trickling body past its deadline included) are retried here,
    `options.retries` times with backoff or the server's `Retry-After`, then raise
    TransientNetworkError. A body longer than listed raises OversizedResponse at once and
    leaves only a `.reason.json` in quarantine. On a mismatch the checksum and the archive are
    fetched once more; if they still disagree the archive is quarantined and ChecksumMismatch is raised.
    `on_bytes`: called with the bytes of the current attempt received so far (each attempt starts at 0).
    """
    started = time.perf_counter()
    final = spec.local_zip(data_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    url = spec.url(base_url)
    async with make_session(options, limit=1) as session:
        expected = sha256
        refetched = False
        for attempt in (1, 2):
            tmp = temp_path_for(final)
            try:
                try:
                    stream = partial(stream_to_file, session, url, tmp, options, listed_size, on_bytes)
                    got = await with_retries(stream, options)
                except OversizedResponse as exc:
                    await asyncio.to_thread(_note_oversized, spec, data_dir, url, exc.reason, listed_size)
                    raise
                if got.sha256 == expected:
                    await asyncio.to_thread(_commit_archive, tmp, final, expected)  # fsyncs: off the loop
                    return DownloadResult(spec, final, got.sha256, got.size, time.perf_counter() - started, refetched)
                if attempt == 1:
                    # Binance sometimes fixes the archive or its checksum: fetch both afresh once.
                    refetched = True
                    tmp.unlink(missing_ok=True)
                    fresh = await fetch_checksum(session, spec, base_url, options)
                    if fresh.sha256 is None:
                        raise NotPublished(spec.checksum_url(base_url), fresh.missing_reason or "checksum gone")
                    expected = fresh.sha256
                    continue
                reason = f"sha256 {got.sha256} but the published checksum is {expected} (after one re-fetch)"
                if got.content_encoding:
                    # We asked for identity and hash what was sent: an encoded body is not the archive.
                    reason += f"; the server sent it with Content-Encoding: {got.content_encoding}"
                await asyncio.to_thread(_quarantine, tmp, spec, data_dir, reason, got.sha256, expected)
                raise ChecksumMismatch(url, reason)
            finally:
                tmp.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def _commit_archive(tmp: Path, final: Path, sha256: str) -> None:
    """Rename the verified archive into place, then record its checksum beside it.

    The `.CHECKSUM` goes last: its presence is what marks the archive as verified.
    """
    stored = final.with_name(final.name + ".CHECKSUM")
    stored.unlink(missing_ok=True)
    commit(tmp, final)  # tmp is already a temporary beside `final`: fsync, rename, fsync the folder
    write_bytes_atomic(stored, f"{sha256}  {final.name}".encode())


def _quarantine(tmp: Path, spec: ArchiveSpec, data_dir: Path, reason: str, got: str, expected: str) -> None:
    """Keep the refused bytes for inspection, with the reason, outside the archive folder."""
    dest = spec.quarantine_zip(data_dir)
    with atomic_path(dest) as q:  # another folder: moved in under a temporary name, then committed
        tmp.replace(q)
    # The published checksum makes the refusal known to later runs (tasks.source.refusals) until Binance changes it.
    write_note(spec, data_dir, {"kind": ChecksumMismatch.kind, "reason": reason, "sha256": got,
                                "published_sha256": expected})


def _note_oversized(spec: ArchiveSpec, data_dir: Path, url: str, reason: str, listed: int | None) -> None:
    """Record why an oversized body was refused; the body itself is not kept (it could be any size)."""
    note = {"archive": spec.key, "url": url, "reason": f"{OversizedResponse.kind}: {reason}",
            "listed_bytes": listed, "body_kept": False}
    write_bytes_atomic(spec.quarantine_note(data_dir), json.dumps(note, indent=2).encode())


def local_archives(data_dir: Path, spec_folder_key: str) -> list[Path]:
    """Verified archives already downloaded into a folder (those with a stored `.CHECKSUM`)."""
    folder = data_dir / "archive" / spec_folder_key
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.zip") if p.with_name(p.name + ".CHECKSUM").is_file())


def verified_download(spec: ArchiveSpec, data_dir: Path) -> str | None:
    """The SHA-256 of the archive's verified download, or None when it is not on disk.

    Verified means both the zip and its `.CHECKSUM` are there: the checksum is written
    only after the downloaded bytes matched it, so no re-hash is needed to trust the pair.
    """
    if not spec.local_zip(data_dir).is_file():
        return None
    return stored_checksum(spec, data_dir)


def stored_checksum(spec: ArchiveSpec, data_dir: Path) -> str | None:
    """The checksum recorded beside a downloaded archive, if any."""
    stored = spec.local_zip(data_dir).with_name(spec.file_name + ".CHECKSUM")
    try:
        return parse_checksum(stored.read_bytes(), str(stored))
    except (OSError, PipelineError):
        return None
