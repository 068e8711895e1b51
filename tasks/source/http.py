"""aiohttp plumbing shared by listing, checksum and archive requests.

Every failure is turned into one of the pipeline's exception types, so a retry
condition can tell "not published" (404, never retried) from transient faults.

What a hostile or broken server can no longer do (issue 11):
- hold a run with a trickling body: every request has a deadline (an archive's grows with
  its listed size at `min_rate` bytes/s, on top of `deadline_floor` seconds);
- fill the disk: an archive's body is read up to its listed size plus `size_margin` bytes,
  never further;
- make us wait as it likes: `Retry-After` (429, 503) is honoured up to `retry_after_cap` s;
- send us elsewhere: a redirect is followed only to the same scheme, host and port unless
  `cross_host_redirects` is set;
- change the bytes we hash: we ask for `Accept-Encoding: identity` and never decode a
  `Content-Encoding`, so the sha256 and the size are those of the bytes as served.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TypeVar

import aiohttp
from yarl import URL

from tasks.errors import (
    NotPublished,
    OversizedResponse,
    RedirectRefused,
    TransientNetworkError,
    UnexpectedResponse,
)

T = TypeVar("T")

#: 403 is what the bucket answers with `AccessDenied` during outages (binance-public-data#10,
#: #319, #444), never a real "forbidden" for public data; 408/425/429 and every 5xx are load
#: or outage signals.
TRANSIENT_STATUS = frozenset({403, 408, 425, 429, 500, 502, 503, 504})
#: Answers whose `Retry-After` we honour (RFC 9110 §10.2.3).
RETRY_AFTER_STATUS = frozenset({429, 503})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_CHUNK = 1 << 20
_S3_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_S3_MESSAGE = re.compile(rb"<Message>([^<]{1,200})</Message>")


@dataclass(frozen=True)
class HttpOptions:
    """Timeouts, bounds and retry knobs of every request (small requests retry inside a task)."""

    connect_timeout: float = 30.0
    read_timeout: float = 120.0
    retries: int = 4
    retry_base_delay: float = 2.0
    #: An archive must arrive at this average rate at least (bytes/s): its deadline is
    #: `deadline_floor + listed size / min_rate`.
    min_rate: float = 32_768.0
    #: Seconds every request gets on top of its size's share (a listing page or a `.CHECKSUM`
    #: gets this alone).
    deadline_floor: float = 30.0
    #: Bytes an archive may exceed its listed size by before it is refused.
    size_margin: int = 1 << 20
    #: Longest wait a `Retry-After` can impose (s); a longer one is cut to this.
    retry_after_cap: float = 60.0
    #: Follow a redirect to another host (or scheme or port); default: same host only.
    cross_host_redirects: bool = False

    def deadline_for(self, size: int | None) -> float:
        """Seconds a transfer of `size` bytes may take in all (`deadline_floor` when the size is unknown)."""
        return self.deadline_floor + (size or 0) / self.min_rate

    def size_limit(self, listed: int | None) -> int | None:
        """Most bytes accepted for an object listed at `listed` bytes (None: no bound known)."""
        return None if listed is None else listed + self.size_margin


def make_session(options: HttpOptions, limit: int = 16) -> aiohttp.ClientSession:
    """A session with socket-level timeouts (deadlines are per request) that never decodes bodies.

    `auto_decompress=False` and `Accept-Encoding: identity`: the sha256 and size checks see the
    bytes exactly as the server sent them, which are the object the listing sized and the
    `.CHECKSUM` describes; a decoded body would be hashed and sized as something else.
    """
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=options.connect_timeout, sock_read=options.read_timeout)
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    return aiohttp.ClientSession(
        timeout=timeout, connector=connector, raise_for_status=False, auto_decompress=False,
        headers={"Accept-Encoding": "identity"},
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP-date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _s3_detail(body_head: bytes) -> str:
    """`AccessDenied: Access Denied` from an S3 `<Error>` body, else the body's first 200 characters."""
    code, message = _S3_CODE.search(body_head), _S3_MESSAGE.search(body_head)
    if code:
        text = code.group(1).decode("utf-8", "replace")
        return f"{text}: {message.group(1).decode('utf-8', 'replace')}" if message else text
    return body_head[:200].decode("utf-8", "replace").strip()


def check_status(url: str, status: int, body_head: bytes = b"", retry_after: str | None = None) -> None:
    """Raise the pipeline error matching an HTTP status; return on 200.

    `retry_after` is the answer's `Retry-After` header, kept on the error for 429 and 503.
    """
    if status == 200:
        return
    if status == 404:
        raise NotPublished(url, "404 Not Found (S3 NoSuchKey): not published")
    detail = f"HTTP {status} {_s3_detail(body_head)}".strip()
    if status in TRANSIENT_STATUS:
        wait = parse_retry_after(retry_after) if status in RETRY_AFTER_STATUS else None
        if wait is not None:
            detail += f" (Retry-After {wait:g} s)"
        raise TransientNetworkError(url, detail, retry_after=wait)
    raise UnexpectedResponse(url, detail)


def transient_from(url: str, exc: BaseException) -> TransientNetworkError:
    """Wrap a connection-level failure (reset, timeout, body cut short) as transient."""
    if isinstance(exc, asyncio.TimeoutError):
        return TransientNetworkError(url, "timed out")
    return TransientNetworkError(url, f"{type(exc).__name__}: {exc}")


_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    return (url.scheme, url.host, url.port)


@asynccontextmanager
async def open_get(
    session: aiohttp.ClientSession, url: str, options: HttpOptions
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET `url`, following at most MAX_REDIRECTS redirects, each only within the same origin by default.

    A redirect to another scheme, host or port raises RedirectRefused unless
    `options.cross_host_redirects` (BINANCE_LAKE_ALLOW_CROSS_HOST_REDIRECTS) allows it: the
    archive's checksum comes from the first host, and a redirect elsewhere would let that
    host's answers decide what we fetch.
    """
    first = URL(url)
    current = first
    for _ in range(MAX_REDIRECTS + 1):
        resp = await session.get(current, allow_redirects=False)
        if resp.status not in REDIRECT_STATUS:
            break
        location = resp.headers.get("Location")
        resp.release()
        if not location:
            raise UnexpectedResponse(url, f"HTTP {resp.status} redirect without a Location")
        target = current.join(URL(location))
        if target.scheme not in ("http", "https"):
            raise RedirectRefused(url, f"HTTP {resp.status} redirect to {target}: not http(s)")
        if _origin(target) != _origin(first) and not options.cross_host_redirects:
            raise RedirectRefused(
                url, f"HTTP {resp.status} redirect to {target}, another host; refused (set "
                "BINANCE_LAKE_ALLOW_CROSS_HOST_REDIRECTS=true to follow redirects to other hosts)",
            )
        current = target
    else:
        raise UnexpectedResponse(url, f"more than {MAX_REDIRECTS} redirects")
    try:
        yield resp
    except BaseException:
        resp.close()  # a body left unread (refused, timed out): drop the connection, do not drain it
        raise
    resp.release()


async def _raise_for(url: str, resp: aiohttp.ClientResponse) -> None:
    if resp.status != 200:
        check_status(url, resp.status, await resp.content.read(512), resp.headers.get("Retry-After"))


def _deadline_error(url: str, deadline: float, received: int, listed: int | None) -> TransientNetworkError:
    of = f" of {listed} listed" if listed is not None else ""
    return TransientNetworkError(url, f"deadline of {deadline:.1f} s exceeded with {received} bytes{of} received "
                                      "(a body slower than the minimum rate)")


async def fetch_bytes(
    session: aiohttp.ClientSession, url: str, max_bytes: int = 8 << 20, options: HttpOptions | None = None
) -> bytes:
    """GET a small document (listing page, checksum) whole, within `options.deadline_floor` seconds."""
    options = options or HttpOptions()
    deadline = options.deadline_for(None)
    size = 0
    try:
        async with asyncio.timeout(deadline) as timer:
            async with open_get(session, url, options) as resp:
                await _raise_for(url, resp)
                # StreamReader.read(n) returns what has arrived, up to n bytes, not the whole body:
                # a 1,000-key listing page (~190 kB) comes in several pieces.
                parts: list[bytes] = []
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
        if isinstance(exc, TimeoutError) and timer.expired():
            raise _deadline_error(url, deadline, size, None) from None
        raise transient_from(url, exc) from exc


@dataclass(frozen=True)
class Streamed:
    """What `stream_to_file` received: the sha256 and size of the bytes as sent, and their encoding."""

    sha256: str
    size: int
    content_encoding: str | None = None  # a Content-Encoding other than identity, sent despite our request


async def stream_to_file(
    session: aiohttp.ClientSession, url: str, dest: Path, options: HttpOptions | None = None,
    listed_size: int | None = None, on_bytes: Callable[[int], None] | None = None,
) -> Streamed:
    """Stream `url` into `dest` while hashing, then fsync it.

    `on_bytes`, if given, is called with the bytes received so far after each chunk (a progress
    bar's feed; it must be cheap).

    Bounds (`options`): the whole transfer must end within `options.deadline_for(listed_size)`
    seconds (a trickling body is a transient fault, retried by the caller), and no more than
    `listed_size + options.size_margin` bytes are read: a longer body (announced by its
    Content-Length or not) raises OversizedResponse at once, having read at most that much.

    Writing and hashing a chunk run in a worker thread while the event loop receives the
    next one (both release the GIL): on loopback this took the 32-archive download from
    1.08 to 0.66-0.79 s (BENCHMARKS.md), and on a slow link it keeps the loop free for the other
    downloads. A body shorter than its Content-Length is a transient fault (the connection was cut).
    """
    options = options or HttpOptions()
    limit = options.size_limit(listed_size)
    deadline = options.deadline_for(listed_size)
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()
    size = 0
    encoding: str | None = None
    pending: asyncio.Future[None] | None = None
    with open(dest, "wb") as out:

        def absorb(chunk: bytes) -> None:
            out.write(chunk)
            digest.update(chunk)

        try:
            async with asyncio.timeout(deadline) as timer:
                async with open_get(session, url, options) as resp:
                    await _raise_for(url, resp)
                    encoding = resp.headers.get("Content-Encoding", "").strip().lower() or None
                    encoding = None if encoding == "identity" else encoding
                    expected = resp.content_length
                    if limit is not None and expected is not None and expected > limit:
                        raise OversizedResponse(
                            url, f"Content-Length {expected} bytes but the listing says {listed_size} bytes "
                            f"(+{options.size_margin} margin): refused without reading the body",
                        )
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        if limit is not None and size + len(chunk) > limit:
                            raise OversizedResponse(
                                url, f"body longer than the listed {listed_size} bytes (+{options.size_margin} "
                                f"margin): stopped reading after {size + len(chunk)} bytes",
                            )
                        if pending is not None:
                            await pending  # one chunk in flight: memory stays at two chunks
                        pending = loop.run_in_executor(None, absorb, chunk)
                        size += len(chunk)
                        if on_bytes is not None:
                            on_bytes(size)
                    if pending is not None:
                        await pending
                    pending = None
                    if expected is not None and size != expected:
                        raise TransientNetworkError(url, f"body cut short: {size} of {expected} bytes")
        except _NETWORK_ERRORS as exc:
            if isinstance(exc, TimeoutError) and timer.expired():
                raise _deadline_error(url, deadline, size, listed_size) from None
            raise transient_from(url, exc) from exc
        finally:
            if pending is not None:  # an error while a chunk was being written: let it finish first
                await asyncio.wait([pending])
        out.flush()
        # Durable before the caller renames it into place (atomic.commit's own fsync is then cheap).
        await loop.run_in_executor(None, os.fsync, out.fileno())
    return Streamed(digest.hexdigest(), size, encoding)


def backoff_delays(retries: int, base: float, jitter: float = 0.5) -> list[float]:
    """Exponential backoff with multiplicative jitter: base*2^i * U(1-jitter, 1+jitter)."""
    return [base * (2**i) * random.uniform(1 - jitter, 1 + jitter) for i in range(retries)]


async def with_retries(make: Callable[[], Awaitable[T]], options: HttpOptions) -> T:
    """Run `make()` again after a transient failure, at most `options.retries` times; other errors pass through.

    The wait is the exponential backoff, or the server's `Retry-After` (429, 503) when it
    sent one, cut to `options.retry_after_cap` seconds.
    """
    delays = backoff_delays(options.retries, options.retry_base_delay)
    for attempt in range(options.retries + 1):
        try:
            return await make()
        except TransientNetworkError as exc:
            if attempt == options.retries:
                raise
            wait = delays[attempt]
            if exc.retry_after is not None:
                wait = min(exc.retry_after, options.retry_after_cap)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")
