"""aiohttp plumbing shared by listing, checksum and archive requests.

Every failure is turned into one of the pipeline's exception types, so a retry
condition can tell "not published" (404, never retried) from transient faults.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp

from tasks.errors import NotPublished, TransientNetworkError, UnexpectedResponse

T = TypeVar("T")

#: 403 is what the bucket answers with `AccessDenied` during outages (binance-public-data#319);
#: 408/429 and every 5xx are load or outage signals.
TRANSIENT_STATUS = frozenset({403, 408, 425, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class HttpOptions:
    """Timeouts and in-request retry knobs (small requests retry inside a task)."""

    connect_timeout: float = 30.0
    read_timeout: float = 120.0
    retries: int = 4
    retry_base_delay: float = 2.0


def make_session(options: HttpOptions, limit: int = 16) -> aiohttp.ClientSession:
    """A session with socket-level timeouts only: a 900 MB monthly archive must not hit a total timeout."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=options.connect_timeout, sock_read=options.read_timeout)
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    return aiohttp.ClientSession(timeout=timeout, connector=connector, raise_for_status=False)


def check_status(url: str, status: int, body_head: bytes = b"") -> None:
    """Raise the pipeline error matching an HTTP status; return on 200."""
    if status == 200:
        return
    if status == 404:
        raise NotPublished(url, "404 Not Found (S3 NoSuchKey): not published")
    detail = body_head[:200].decode("utf-8", "replace").strip()
    if status in TRANSIENT_STATUS:
        raise TransientNetworkError(url, f"HTTP {status} {detail}".strip())
    raise UnexpectedResponse(url, f"HTTP {status} {detail}".strip())


def transient_from(url: str, exc: BaseException) -> TransientNetworkError:
    """Wrap a connection-level failure (reset, timeout, body cut short) as transient."""
    if isinstance(exc, asyncio.TimeoutError):
        return TransientNetworkError(url, "timed out")
    return TransientNetworkError(url, f"{type(exc).__name__}: {exc}")


_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


async def fetch_bytes(session: aiohttp.ClientSession, url: str, max_bytes: int = 64 << 20) -> bytes:
    """GET a small document (listing page, checksum) whole."""
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                check_status(url, resp.status, await resp.content.read(512))
            # StreamReader.read(n) returns what has arrived, up to n bytes, not the whole body:
            # a 1,000-key listing page (~190 kB) comes in several pieces.
            parts: list[bytes] = []
            size = 0
            while chunk := await resp.content.read(_CHUNK):
                parts.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise UnexpectedResponse(url, f"body larger than {max_bytes} bytes")
            body = b"".join(parts)
            if resp.content_length is not None and len(body) != resp.content_length:
                raise TransientNetworkError(url, f"body cut short: {len(body)} of {resp.content_length} bytes")
            return body
    except _NETWORK_ERRORS as exc:
        raise transient_from(url, exc) from exc


async def stream_to_file(session: aiohttp.ClientSession, url: str, dest: Path) -> tuple[str, int]:
    """Stream `url` into `dest` while hashing, then fsync it; return (sha256 hex, bytes).

    Writing and hashing a chunk run in a worker thread while the event loop receives the
    next one (both release the GIL): on loopback this took the 32-archive download from
    1.08 to 0.66-0.79 s (BENCHMARKS.md), and on a slow link it keeps the loop free for the other
    downloads. A body shorter than its Content-Length is a transient fault (the connection was cut).
    """
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()
    size = 0
    pending: asyncio.Future[None] | None = None
    with open(dest, "wb") as out:

        def absorb(chunk: bytes) -> None:
            out.write(chunk)
            digest.update(chunk)

        try:
            async with session.get(url) as resp:
                if resp.status != 200:
                    check_status(url, resp.status, await resp.content.read(512))
                expected = resp.content_length
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    if pending is not None:
                        await pending  # one chunk in flight: memory stays at two chunks
                    pending = loop.run_in_executor(None, absorb, chunk)
                    size += len(chunk)
                if pending is not None:
                    await pending
                pending = None
                if expected is not None and size != expected:
                    raise TransientNetworkError(url, f"body cut short: {size} of {expected} bytes")
        except _NETWORK_ERRORS as exc:
            raise transient_from(url, exc) from exc
        finally:
            if pending is not None:  # an error while a chunk was being written: let it finish first
                await asyncio.wait([pending])
        out.flush()
        # Durable before the caller renames it into place (atomic.commit's own fsync is then cheap).
        await loop.run_in_executor(None, os.fsync, out.fileno())
    return digest.hexdigest(), size


def backoff_delays(retries: int, base: float, jitter: float = 0.5) -> list[float]:
    """Exponential backoff with multiplicative jitter: base*2^i * U(1-jitter, 1+jitter)."""
    return [base * (2**i) * random.uniform(1 - jitter, 1 + jitter) for i in range(retries)]


async def with_retries(make: Callable[[], Awaitable[T]], options: HttpOptions) -> T:
    """Run `make()` again after a transient failure, with backoff; other errors pass through."""
    delays = backoff_delays(options.retries, options.retry_base_delay)
    for attempt in range(options.retries + 1):
        try:
            return await make()
        except TransientNetworkError:
            if attempt == options.retries:
                raise
            await asyncio.sleep(delays[attempt])
    raise AssertionError("unreachable")
