"""A fake data.binance.vision: a real aiohttp server on 127.0.0.1 in a background thread.

It serves published objects under `/data/...` exactly like https://data.binance.vision/data/...
and answers S3 ListObjects (v1) at `/listing` like
https://s3-ap-northeast-1.amazonaws.com/data.binance.vision, so the pipeline runs against it
unchanged (only `base_url` and `listing_url` differ). Being a real socket server, it is usable
from synchronous tests, from asyncio code and from other processes (Dask workers, CLI
subprocesses).

Faults are injected per key, per key prefix or on the listing, as FIFO queues consumed one
request at a time: `fa.inject(key, "503")` makes the next request for `key` fail once.
Hostile behaviours (issue 11) are faults too: a trickling body, a body far longer than the
listed size, 429/503 with `Retry-After`, a redirect, a gzip `Content-Encoding`, a garbage
body (a `.CHECKSUM` or one folder's listing page, targeted as `listing:<prefix>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal, NamedTuple, Self, get_args
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from aiohttp import web

from tasks.source.archive_spec import ArchiveSpec
from tests.fake_archive.generate import checksum_text, make_zip, sha256_hex

FaultKind = Literal[
    "ok", "500", "503", "404", "access_denied", "slow", "stall", "cut", "reset",
    "429", "trickle", "oversize", "oversize_chunked", "redirect", "gzip", "garbage",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

#: The injection target naming listing requests.
LISTING = "listing"
BUCKET = "data.binance.vision"
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
_CHUNK = 1 << 20
# S3 escapes the quotes of an ETag inside XML (`&quot;md5&quot;`): a small trap for naive parsers.
_XML_ENTITIES = {'"': "&quot;"}
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RequestRecord(NamedTuple):
    """One request as the server saw it; `status` is 0 when the connection was reset unanswered."""

    method: str
    path_qs: str
    status: int
    at: float = 0.0  # time.time() when the request arrived
    accept_encoding: str = ""  # the request's Accept-Encoding header

    @property
    def path(self) -> str:
        """The decoded path without the query: `/data/spot/...zip` or `/listing`."""
        return unquote(urlsplit(self.path_qs).path)


@dataclass(frozen=True)
class StoredObject:
    """An object in the fake bucket."""

    body: bytes
    md5: str
    last_modified: datetime
    content_type: str
    content_encoding: str | None = None  # served as `Content-Encoding` (the body is stored encoded)

    @property
    def etag(self) -> str:
        """Quoted md5, as S3 sends it."""
        return f'"{self.md5}"'


@dataclass(frozen=True)
class PublishedZip:
    """What `FakeArchive.publish` stored: the zip and its `.CHECKSUM` sibling."""

    key: str
    checksum_key: str
    sha256: str  # actual sha256 of the zip bytes
    advertised_sha256: str | None  # what the .CHECKSUM says (None when no checksum was published)
    size: int

    @property
    def checksum_matches(self) -> bool:
        """True when the published checksum agrees with the zip."""
        return self.sha256 == self.advertised_sha256


@dataclass
class _Fault:
    kind: FaultKind
    delay: float
    retry_after: str | None = None  # 429/503: the Retry-After header
    location: str | None = None  # redirect: the Location header
    body: bytes | None = None  # garbage: the body sent instead
    size: int | None = None  # oversize: bytes sent in all


@dataclass
class _Answer:
    status: int
    body: bytes | memoryview
    headers: dict[str, str] = field(default_factory=dict)


def s3_error_xml(code: str, message: str, **extra: str) -> bytes:
    """An S3 `<Error>` document, e.g. `s3_error_xml("NoSuchKey", "...", Key=key)`."""
    request_id = hashlib.md5(f"{code}{extra}".encode()).hexdigest()[:16].upper()
    parts = [f"<Code>{code}</Code>", f"<Message>{escape(message)}</Message>"]
    parts += [f"<{name}>{escape(value)}</{name}>" for name, value in extra.items()]
    parts += [f"<RequestId>{request_id}</RequestId>", f"<HostId>{request_id.lower()}=</HostId>"]
    return (_XML_DECL + "<Error>" + "".join(parts) + "</Error>").encode()


def _error(status: int, code: str, message: str, **extra: str) -> _Answer:
    return _Answer(status, s3_error_xml(code, message, **extra), {"Content-Type": "application/xml"})


def _no_such_key(key: str) -> _Answer:
    return _error(404, "NoSuchKey", "The specified key does not exist.", Key=key)


def _fault_answer(kind: str, target: str, fault: _Fault | None = None) -> _Answer:
    if kind == "500":
        return _error(500, "InternalError", "We encountered an internal error. Please try again.")
    if kind in ("503", "429"):
        answer = _error(int(kind), "SlowDown", "Please reduce your request rate.")
        if fault is not None and fault.retry_after is not None:
            answer.headers["Retry-After"] = fault.retry_after
        return answer
    if kind == "redirect":
        assert fault is not None and fault.location is not None
        return _Answer(302, b"", {"Location": fault.location})
    if kind == "access_denied":
        return _error(403, "AccessDenied", "Access Denied")
    return _no_such_key(target)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _http_date(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST and no answer at all."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout turns close() into an RST instead of an orderly FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FakeArchive:
    """The fake archive server. Use as `with FakeArchive() as fa:` or `start()`/`stop()`.

    - `page_size`: most entries per listing page (S3: 1000); a `max-keys` query is capped at it.
    - `slow_delay`: default seconds of the "slow" and "stall" faults.
    - `cut_fraction`: share of the body sent before a "cut" closes the connection.
    - `bytes_per_second`: if set, each response's body is paced to this rate (per
      connection, as a CDN edge serves one): a real link instead of loopback's GB/s.
    """

    def __init__(
        self,
        *,
        page_size: int = 1000,
        slow_delay: float = 2.0,
        cut_fraction: float = 0.5,
        host: str = "127.0.0.1",
        port: int = 0,
        bytes_per_second: float | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.page_size = page_size
        self.slow_delay = slow_delay
        self.cut_fraction = cut_fraction
        self.bytes_per_second = bytes_per_second
        self._host = host
        self._port = port
        self._objects: dict[str, StoredObject] = {}
        self._faults: dict[tuple[str, bool], deque[_Fault]] = {}  # (target, is_prefix) -> queue
        self._log: list[RequestRecord] = []
        self._done: list[tuple[str, float, int]] = []  # (path, time.time() at the end, body bytes written)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving; returns self. The port is chosen by the OS unless given."""
        if self._thread is not None:
            raise RuntimeError("FakeArchive already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,), name="FakeArchive", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._port = asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=30)
        except BaseException:
            self._shutdown_thread()
            raise
        return self

    def stop(self) -> None:
        """Stop the server, close every connection and join the thread (idempotent)."""
        if self._loop is None or self._thread is None:
            return
        if self._stopping is not None:
            # Wake handlers sleeping in a "slow"/"stall" fault so that shutdown does not wait for them.
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
            self._runner = None
        self._shutdown_thread()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Cancel whatever is left (e.g. a handler sleeping in a "slow" fault) before closing.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def _shutdown_thread(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise RuntimeError("FakeArchive thread did not stop")
        self._loop = self._thread = None

    async def _serve(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # stop() gives transfers in flight 1 s to finish (the default 60 s would stall a test run);
        # handlers sleeping in a "slow"/"stall" fault are woken through `_stopping` instead.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        self._stopping = asyncio.Event()
        return int(runner.addresses[0][1])

    async def _fault_sleep(self, request: web.Request, delay: float) -> bool:
        """Sleep `delay` s; False (and the connection dropped) if the server is stopping meanwhile."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        if self._stopping.is_set():
            _reset(request)
            return False
        return True

    # --- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        return self._port

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`: stands for https://data.binance.vision."""
        if not self.running:
            raise RuntimeError("FakeArchive is not running")
        return f"http://{self._host}:{self._port}"

    @property
    def listing_url(self) -> str:
        """`http://127.0.0.1:PORT/listing`: stands for https://s3-ap-northeast-1.amazonaws.com/data.binance.vision."""
        return f"{self.base_url}/{LISTING}"

    def url(self, key: str) -> str:
        """Full URL of `key`."""
        return f"{self.base_url}/{key.lstrip('/')}"

    # --- objects -----------------------------------------------------------------------------

    def put(
        self,
        key: str,
        body: bytes,
        *,
        last_modified: datetime | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
    ) -> StoredObject:
        """Publish (or replace) any object, e.g. `data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-01.zip`.

        `content_encoding` is sent as the object's `Content-Encoding` (S3 object metadata: the
        stored bytes, as listed and checksummed, are already encoded)."""
        key = key.lstrip("/")
        if not key or key == LISTING:
            raise ValueError(f"invalid key {key!r}")
        if content_type is None:
            content_type = "application/zip" if key.endswith(".zip") else "binary/octet-stream"
        obj = StoredObject(
            body=bytes(body),
            md5=hashlib.md5(body).hexdigest(),
            last_modified=(last_modified or datetime.now(UTC)).replace(microsecond=0),
            content_type=content_type,
            content_encoding=content_encoding,
        )
        with self._lock:
            self._objects[key] = obj
        return obj

    def remove(self, key: str) -> bool:
        """Unpublish `key`; True if it existed."""
        with self._lock:
            return self._objects.pop(key.lstrip("/"), None) is not None

    def get(self, key: str) -> bytes | None:
        """The stored body of `key`, or None."""
        with self._lock:
            obj = self._objects.get(key.lstrip("/"))
        return None if obj is None else obj.body

    def keys(self, prefix: str = "") -> list[str]:
        """Sorted stored keys under `prefix`."""
        with self._lock:
            return sorted(k for k in self._objects if k.startswith(prefix))

    def publish_zip(
        self,
        spec_or_key: ArchiveSpec | str,
        zip_bytes: bytes,
        *,
        checksum_override: str | None = None,
        checksum_body: bytes | None = None,
        with_checksum: bool = True,
        last_modified: datetime | None = None,
    ) -> PublishedZip:
        """Store a ready-made zip (possibly a broken one) and its `.CHECKSUM` sibling.

        `checksum_override` (hex) is advertised instead of the real sha256; `checksum_body`
        replaces the whole `.CHECKSUM` text verbatim; `with_checksum=False` publishes none.
        """
        key = spec_or_key.key if isinstance(spec_or_key, ArchiveSpec) else spec_or_key.lstrip("/")
        file_name = key.rsplit("/", 1)[-1]
        checksum_key = key + ".CHECKSUM"
        self.put(key, zip_bytes, last_modified=last_modified)
        sha = sha256_hex(zip_bytes)
        advertised: str | None = None
        if with_checksum:
            if checksum_body is None:
                advertised = checksum_override or sha
                checksum_body = (
                    f"{checksum_override}  {file_name}" if checksum_override else checksum_text(zip_bytes, file_name)
                ).encode()
            else:
                advertised = checksum_body.split()[0].decode(errors="replace") if checksum_body.split() else ""
            self.put(checksum_key, checksum_body, last_modified=last_modified)
        else:
            self.remove(checksum_key)
        return PublishedZip(key, checksum_key, sha, advertised, len(zip_bytes))

    def publish(
        self,
        spec_or_key: ArchiveSpec | str,
        csv_bytes: bytes,
        *,
        checksum_override: str | None = None,
        member_name: str | None = None,
        compresslevel: int = 6,
        with_checksum: bool = True,
        last_modified: datetime | None = None,
    ) -> PublishedZip:
        """Zip `csv_bytes` as Binance does (member `<name>.csv`) and store it with its `.CHECKSUM`.

        With `checksum_override` (a hex digest), the `.CHECKSUM` advertises it instead of the
        real sha256: a checksum mismatch.
        """
        if isinstance(spec_or_key, ArchiveSpec):
            default_member = spec_or_key.csv_name
        else:
            default_member = spec_or_key.rsplit("/", 1)[-1].removesuffix(".zip") + ".csv"
        zip_bytes = make_zip(csv_bytes, member_name or default_member, compresslevel=compresslevel)
        return self.publish_zip(
            spec_or_key,
            zip_bytes,
            checksum_override=checksum_override,
            with_checksum=with_checksum,
            last_modified=last_modified,
        )

    # --- faults ------------------------------------------------------------------------------

    def inject(
        self,
        target: str,
        kind: FaultKind,
        *,
        times: int = 1,
        delay: float | None = None,
        prefix: bool = False,
        retry_after: str | None = None,
        location: str | None = None,
        body: bytes | None = None,
        size: int | None = None,
    ) -> None:
        """Queue `times` faults of `kind` for the next requests of `target`.

        `target` is an exact key, `"listing"` (every listing request), `"listing:<prefix>"` (the
        listing requests of one folder, e.g. `listing:data/spot/daily/trades/BTCUSDT/`), or with
        `prefix=True` a key prefix (e.g. `data/spot/` or a zip key, which then also covers its `.CHECKSUM`).
        Kinds: "500", "503", "404" (NoSuchKey even if published), "access_denied" (403 S3
        AccessDenied), "slow" (answer after `delay` s), "stall" (half the body, wait `delay` s,
        then the rest), "cut" (full Content-Length, part of the body, then close; a HEAD or a body
        under 2 bytes is reset instead), "reset" (RST, no answer) and "ok" (a normal answer:
        queue it first to let a request through before a fault, e.g. to fail page 2 of a listing).
        Hostile ones: "429" (and "503") with `retry_after` as the Retry-After header; "trickle"
        (the body one byte every `delay` s, with its full Content-Length); "oversize" (the body
        padded to `size` bytes, with that Content-Length) and "oversize_chunked" (the same,
        chunked, no Content-Length: a server lying by omission); "redirect" (302 to `location`);
        "gzip" (the body gzipped on the fly, `Content-Encoding: gzip`, whatever was asked);
        "garbage" (`body` instead of the answer, status 200).
        An exact target's queue is used before prefix queues; among prefixes, the longest wins.

        Beware: aiohttp's client silently retries an idempotent request once when the connection
        drops before any answer, so a "reset" reaches an aiohttp caller only with `times=2`.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {FAULT_KINDS}")
        if times < 1:
            raise ValueError("times must be at least 1")
        seconds = self.slow_delay if delay is None else delay
        with self._lock:
            queue = self._faults.setdefault((target.lstrip("/"), prefix), deque())
            queue.extend(_Fault(kind, seconds, retry_after, location, body, size) for _ in range(times))

    def pending_faults(self, target: str | None = None) -> int:
        """How many injected faults are still queued (for `target`, or in all)."""
        with self._lock:
            return sum(len(q) for (t, _), q in self._faults.items() if target is None or t == target.lstrip("/"))

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, target: str) -> _Fault | None:
        with self._lock:
            exact = self._faults.get((target, False))
            if exact:
                return exact.popleft()
            prefixes = [t for (t, is_prefix), q in self._faults.items() if is_prefix and q and target.startswith(t)]
            if prefixes:
                return self._faults[(max(prefixes, key=len), True)].popleft()
        return None

    # --- request log -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    def count(self, path: str, *, method: str | None = None) -> int:
        """Requests for `path`: a key (with or without leading `/`), `listing`, or a path with query."""
        with_query = "?" in path
        wanted = "/" + path.lstrip("/")
        with self._lock:
            log = list(self._log)
        return sum(
            1
            for r in log
            if (method is None or r.method == method) and (r.path_qs == wanted if with_query else r.path == wanted)
        )

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self._lock:
            self._log.clear()
            self._done.clear()

    def responses_done(self, path: str) -> list[tuple[float, int]]:
        """(time.time() when the answer ended or its connection broke, body bytes written) per request of `path`."""
        wanted = "/" + path.lstrip("/")
        with self._lock:
            return [(t, n) for p, t, n in self._done if p == wanted]

    # --- HTTP --------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        head = request.method == "HEAD"
        target: str | None = None
        if request.method not in ("GET", "HEAD"):
            answer = _error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        elif request.path == f"/{LISTING}":
            target = LISTING
            answer = self._listing_answer(request.query)
        else:
            target = request.path[1:]
            answer = self._object_answer(target, request.headers.get("Range"))

        fault = None
        if target == LISTING:
            fault = self._take_fault(f"{LISTING}:{request.query.get('prefix', '')}")
        if fault is None and target is not None:
            fault = self._take_fault(target)
        kind = fault.kind if fault else "ok"
        if kind in ("500", "503", "404", "access_denied", "429", "redirect"):
            answer = _fault_answer(kind, target or "", fault)
        if fault and kind == "garbage":
            answer = _Answer(200, fault.body or b"", {"Content-Type": "application/xml"})
        if fault and kind == "gzip" and answer.status == 200:
            answer = _Answer(200, gzip.compress(bytes(answer.body)), {**answer.headers, "Content-Encoding": "gzip"})
        if kind == "cut" and (head or len(answer.body) < 2):
            kind = "reset"  # nothing to cut short
        with self._lock:
            self._log.append(RequestRecord(request.method, request.path_qs, 0 if kind == "reset" else answer.status,
                                           time.time(), request.headers.get("Accept-Encoding", "")))

        if kind == "reset":
            _reset(request)
            return web.Response()  # never sent: aiohttp finds the transport closed and drops it
        if fault and kind == "slow" and not await self._fault_sleep(request, fault.delay):
            return web.Response()  # stopping: dropped, never sent
        stall = fault.delay if fault and kind == "stall" else None
        trickle = fault.delay if fault and kind == "trickle" else None
        pad_to = None
        if fault and kind in ("oversize", "oversize_chunked") and answer.status == 200:
            pad_to = max(fault.size or 2 * len(answer.body), len(answer.body))
        sent = [0]
        try:
            return await self._send(request, answer, head=head, cut=kind == "cut", stall=stall, trickle=trickle,
                                    chunked=kind == "oversize_chunked", sent=sent, pad_to=pad_to)
        except ConnectionError:  # the client hung up mid-body (a deadline, a size bound): nothing to send
            return web.Response()
        finally:
            with self._lock:
                self._done.append((request.path, time.time(), sent[0]))

    async def _send(
        self, request: web.Request, answer: _Answer, *, head: bool, cut: bool, stall: float | None,
        trickle: float | None = None, chunked: bool = False, sent: list[int] | None = None,
        pad_to: int | None = None,
    ) -> web.StreamResponse:
        body = memoryview(answer.body)
        sent = sent if sent is not None else [0]
        resp = web.StreamResponse(status=answer.status, headers={"Server": "AmazonS3", **answer.headers})
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(body) if pad_to is None else pad_to
        await resp.prepare(request)
        if head:
            await resp.write_eof()
            return resp
        if cut:
            part = max(1, min(int(len(body) * self.cut_fraction), len(body) - 1))
            await resp.write(body[:part])
            if request.transport is not None:
                # close() flushes what was written then sends FIN: the client gets a short body.
                request.transport.close()
            return resp  # aiohttp's write_eof then meets a closed transport and gives up quietly
        if stall is not None:
            half = len(body) // 2
            await resp.write(body[:half])
            if not await self._fault_sleep(request, stall):
                return resp
            body = body[half:]
        if trickle is not None:  # one byte at a time: never silent long enough for a read timeout
            for i in range(len(body)):
                await resp.write(body[i : i + 1])
                sent[0] += 1
                if not await self._fault_sleep(request, trickle):
                    return resp
            await resp.write_eof()
            return resp
        loop = asyncio.get_running_loop()
        started = loop.time()
        for lo in range(0, len(body), _CHUNK):
            if self.bytes_per_second:  # a chunk leaves once the link would have carried it
                ahead = started + min(lo + _CHUNK, len(body)) / self.bytes_per_second - loop.time()
                if ahead > 0 and not await self._fault_sleep(request, ahead):
                    return resp
            await resp.write(body[lo : lo + _CHUNK])
            sent[0] += len(body[lo : lo + _CHUNK])
        if pad_to is not None:  # zeros after the body, made as they go (a 1 GiB answer costs no memory)
            zeros = bytes(_CHUNK)
            while sent[0] < pad_to:
                n = min(_CHUNK, pad_to - sent[0])
                await resp.write(zeros[:n])
                sent[0] += n
        await resp.write_eof()
        return resp

    def _object_answer(self, key: str, range_header: str | None) -> _Answer:
        with self._lock:
            obj = self._objects.get(key)
        if obj is None:
            return _no_such_key(key)
        headers = {
            "Content-Type": obj.content_type,
            "ETag": obj.etag,
            "Last-Modified": _http_date(obj.last_modified),
            "Accept-Ranges": "bytes",
        }
        if obj.content_encoding:
            headers["Content-Encoding"] = obj.content_encoding
        size = len(obj.body)
        match = _RANGE_RE.match(range_header.strip()) if range_header else None
        if match is None or match.groups() == ("", ""):
            # No Range (or one we do not understand: RFC 9110 lets a server ignore it).
            return _Answer(200, obj.body, headers)
        first, last = match.groups()
        if first:
            lo, hi = int(first), min(int(last), size - 1) if last else size - 1
        else:
            lo, hi = max(size - int(last), 0), size - 1
        if lo >= size or lo > hi:
            answer = _error(
                416, "InvalidRange", "The requested range is not satisfiable", RangeRequested=range_header or ""
            )
            answer.headers["Content-Range"] = f"bytes */{size}"
            return answer
        headers["Content-Range"] = f"bytes {lo}-{hi}/{size}"
        return _Answer(206, memoryview(obj.body)[lo : hi + 1], headers)

    def _listing_answer(self, query: Mapping[str, str]) -> _Answer:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        marker = query.get("marker", "")
        max_keys = self.page_size
        if "max-keys" in query:
            try:
                max_keys = min(int(query["max-keys"]), self.page_size)
            except ValueError:
                return _error(400, "InvalidArgument", "Provided max-keys not an integer or within integer range")
            if max_keys < 0:
                return _error(400, "InvalidArgument", "Argument maxKeys must be an integer between 0 and 2147483647")
        with self._lock:
            objects = sorted((k, o) for k, o in self._objects.items() if k.startswith(prefix) and k > marker)

        # Merge keys and rolled-up "sub-folders" in lexicographic order; each counts as one entry.
        entries: list[tuple[str, StoredObject | None]] = []  # (key, object) or (common prefix, None)
        for key, obj in objects:
            rest = key[len(prefix) :]
            cut = rest.find(delimiter) if delimiter else -1
            if cut < 0:
                entries.append((key, obj))
                continue
            common = prefix + rest[: cut + len(delimiter)]
            # A marker equal to a common prefix means that whole folder was already returned.
            if common > marker and (not entries or entries[-1][0] != common):
                entries.append((common, None))
        page = entries[:max_keys]
        truncated = len(entries) > len(page)

        xml = [_XML_DECL, f'<ListBucketResult xmlns="{S3_NS}">', f"<Name>{BUCKET}</Name>"]
        xml.append(f"<Prefix>{escape(prefix)}</Prefix><Marker>{escape(marker)}</Marker>")
        if truncated and delimiter and page:
            xml.append(f"<NextMarker>{escape(page[-1][0])}</NextMarker>")
        xml.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            xml.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        xml.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        for name, entry in page:
            if entry is not None:
                xml.append(
                    f"<Contents><Key>{escape(name)}</Key><LastModified>{_iso(entry.last_modified)}</LastModified>"
                    f"<ETag>{escape(entry.etag, _XML_ENTITIES)}</ETag><Size>{len(entry.body)}</Size>"
                    "<StorageClass>STANDARD</StorageClass></Contents>"
                )
        for name, entry in page:
            if entry is None:
                xml.append(f"<CommonPrefixes><Prefix>{escape(name)}</Prefix></CommonPrefixes>")
        xml.append("</ListBucketResult>")
        return _Answer(200, "".join(xml).encode(), {"Content-Type": "application/xml"})
