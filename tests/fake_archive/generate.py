"""Synthetic trades rendered byte for byte in the CSV dialects data.binance.vision publishes.

Everything is vectorised with numpy: a spot BTCUSDT day (about 1.1 M trades) is generated and
rendered in well under a second or two, so tests and benchmarks can build realistic archives
on the fly instead of shipping fixtures.

Values are held as integers in fixed-point units (price in cents, quantity in 10**-qty_decimals),
so the rendered decimal strings are exact and the float values a parser should recover
(`Trades.price`, `.qty`, `.quote_qty`, `.base_qty`) are the correctly rounded ones.

Dialects (see docs/binance-archive.md):

| market | header | booleans | numbers | time |
|---|---|---|---|---|
| spot | never | `True`/`False` | 8-decimal strings `42283.58000000` | ms to 2024-12-31, µs from 2025-01-01 |
| um | from 2022-08-11 | `true`/`false` | `42283.58,0.003,126.85074` | ms |
| cm | caller's choice (default yes) | `true`/`false` | `42283.58,3,0.00709498` (qty in contracts) | ms |
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from tasks.source.archive_spec import ArchiveSpec, Market

TimeUnit = Literal["ms", "us"]
TimeLike = datetime | date | int

#: Decimals of the generated price (a cent tick; spot renders it with 8 decimals anyway).
PRICE_DECIMALS = 2
#: Decimals of the generated quantity per market: spot 0.00001 BTC lots, USD-M 0.001 BTC, COIN-M whole contracts.
QTY_DECIMALS: dict[str, int] = {"spot": 5, "um": 3, "cm": 0}
#: USD value of one COIN-M contract (BTCUSD_PERP): base_qty = qty * 100 / price.
CM_CONTRACT_USD = 100
#: Decimals of COIN-M base_qty as rendered.
CM_BASE_DECIMALS = 8
SPOT_DECIMALS = 8

#: First day whose USD-M file carries a header line (older files were never regenerated, #278).
UM_HEADER_FROM = date(2022, 8, 11)
#: First day whose spot file carries microsecond times.
SPOT_US_FROM = date(2025, 1, 1)

HEADERS: dict[str, bytes] = {
    # Binance never writes a spot header; this one only exists for robustness tests (header=True).
    "spot": b"id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch\n",
    "um": b"id,price,qty,quote_qty,time,is_buyer_maker\n",
    "cm": b"id,price,qty,base_qty,time,is_buyer_maker\n",
}

# Rendering works on row chunks: the temporary character matrices (about 100 bytes a row) of a
# 64 Ki-row chunk stay in cache, which measured twice as fast as 1 Mi-row chunks, and memory stays
# bounded so that 10 M rows are feasible. numpy releases the GIL, so chunks render on a few threads.
_RENDER_CHUNK = 1 << 16
_RENDER_THREADS = min(4, os.cpu_count() or 1)
_POW10 = 10 ** np.arange(19, dtype=np.int64)
# ASCII digits of 0000..9999, used to emit four digits per integer division instead of one.
_QUAD = np.array([list(f"{i:04d}".encode()) for i in range(10_000)], dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class Trades:
    """A batch of trades, in the order they appear in a file, as fixed-point integer columns."""

    id: np.ndarray  # int64 trade ids
    time_us: np.ndarray  # int64, microseconds since the epoch (UTC)
    price_ticks: np.ndarray  # int64, price in 10**-PRICE_DECIMALS
    qty_units: np.ndarray  # int64, quantity in 10**-qty_decimals (contracts on COIN-M)
    is_buyer_maker: np.ndarray  # bool
    is_best_match: np.ndarray  # bool (spot only; always True, reserved by Binance)
    qty_decimals: int

    def __len__(self) -> int:
        return int(self.id.shape[0])

    @property
    def first_id(self) -> int:
        """Smallest id (the file's first id once sorted)."""
        return int(self.id.min())

    @property
    def last_id(self) -> int:
        """Largest id."""
        return int(self.id.max())

    def time(self, unit: TimeUnit = "ms") -> np.ndarray:
        """Times as written in a file of that unit (ms are floored µs)."""
        return self.time_us if unit == "us" else self.time_us // 1000

    @property
    def price(self) -> np.ndarray:
        """float64 prices, exactly what parsing the rendered strings gives."""
        return np.asarray(self.price_ticks / 10**PRICE_DECIMALS)

    @property
    def qty(self) -> np.ndarray:
        """float64 quantities (contracts on COIN-M)."""
        return np.asarray(self.qty_units / 10**self.qty_decimals)

    @property
    def quote_units(self) -> np.ndarray:
        """price*qty exactly, in 10**-(PRICE_DECIMALS + qty_decimals)."""
        return np.asarray(self.price_ticks * self.qty_units)

    @property
    def quote_qty(self) -> np.ndarray:
        """float64 price*qty (spot and USD-M)."""
        return np.asarray(self.quote_units / 10 ** (PRICE_DECIMALS + self.qty_decimals))

    @property
    def base_units(self) -> np.ndarray:
        """COIN-M qty*100/price rounded half up to 10**-8, computed in integers so it is exact."""
        scale = CM_CONTRACT_USD * 10 ** (CM_BASE_DECIMALS + PRICE_DECIMALS - self.qty_decimals)
        return np.asarray((self.qty_units * scale + self.price_ticks // 2) // self.price_ticks)

    @property
    def base_qty(self) -> np.ndarray:
        """float64 COIN-M base-asset size as rendered (8 decimals)."""
        return np.asarray(self.base_units / 10**CM_BASE_DECIMALS)

    def take(self, index: np.ndarray | Sequence[int] | slice) -> Trades:
        """Rows at `index` (reorder, subset or repeat rows)."""
        return Trades(
            self.id[index],
            self.time_us[index],
            self.price_ticks[index],
            self.qty_units[index],
            self.is_buyer_maker[index],
            self.is_best_match[index],
            self.qty_decimals,
        )

    @staticmethod
    def concat(parts: Sequence[Trades]) -> Trades:
        """Rows of `parts` one after the other (they must share qty_decimals)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        decimals = {p.qty_decimals for p in parts}
        if len(decimals) != 1:
            raise ValueError(f"parts have different qty_decimals: {sorted(decimals)}")
        return Trades(
            np.concatenate([p.id for p in parts]),
            np.concatenate([p.time_us for p in parts]),
            np.concatenate([p.price_ticks for p in parts]),
            np.concatenate([p.qty_units for p in parts]),
            np.concatenate([p.is_buyer_maker for p in parts]),
            np.concatenate([p.is_best_match for p in parts]),
            decimals.pop(),
        )

    def sorted_unique(self) -> tuple[Trades, int]:
        """Rows sorted by id with exact duplicate rows dropped, and how many were dropped.

        This is what the pipeline must make of an interleaved, duplicated monthly file.
        """
        s = self.take(np.argsort(self.id, kind="stable"))
        same = np.ones(max(len(s) - 1, 0), dtype=bool)
        for col in (s.id, s.time_us, s.price_ticks, s.qty_units, s.is_buyer_maker, s.is_best_match):
            same &= col[1:] == col[:-1]
        keep = np.concatenate([[True], ~same]) if len(s) else np.ones(0, dtype=bool)
        return s.take(keep), int(same.sum())

    def id_gaps(self) -> list[tuple[int, int]]:
        """Missing id ranges (first, last inclusive) between the smallest and largest id."""
        ids = np.unique(self.id)
        jumps = np.nonzero(np.diff(ids) > 1)[0]
        return [(int(ids[j]) + 1, int(ids[j + 1]) - 1) for j in jumps]


def to_us(value: TimeLike) -> int:
    """Microseconds since the epoch; an int is taken as milliseconds, a date as its UTC midnight."""
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return round(dt.timestamp() * 1_000_000)
    if isinstance(value, date):
        return to_us(datetime(value.year, value.month, value.day, tzinfo=UTC))
    return int(value) * 1000


def default_base_price(symbol: str) -> float:
    """A plausible early-2024 price for a symbol (only BTC and ETH matter to the tests)."""
    if symbol.startswith("BTC"):
        return 42_000.0
    if symbol.startswith("ETH"):
        return 2_300.0
    return 100.0


def generate_trades(
    n: int,
    start: TimeLike,
    end: TimeLike,
    first_id: int = 1,
    seed: int = 0,
    *,
    market: Market = "spot",
    gaps: Iterable[tuple[int, int]] = (),
    base_price: float = 42_000.0,
) -> Trades:
    """Generate `n` trades sorted by id and time, inside [start, end).

    `start`/`end` are datetimes (naive = UTC), dates (UTC midnight) or ints in milliseconds.
    Ids are `first_id, first_id+1, ...` except for `gaps`: inclusive ranges `(first_missing,
    last_missing)` of ids that are skipped (e.g. `[(1000, 1009)]`); each must lie strictly
    inside the id range, so that the gap shows between two rows.
    Prices follow a random walk around `base_price` (cent ticks) that moves about 1 % over the
    batch; quantities are log-normal in the market's lot size.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    start_us, end_us = to_us(start), to_us(end)
    if end_us <= start_us:
        raise ValueError(f"empty time range [{start}, {end})")
    rng = np.random.default_rng(seed)

    ids = first_id + np.arange(n, dtype=np.int64)
    prev_last = first_id - 1
    for first_missing, last_missing in sorted(gaps):
        if not (first_missing <= last_missing and first_missing > max(prev_last, int(ids[0]))):
            raise ValueError(f"gap ({first_missing}, {last_missing}) overlaps the first id or another gap")
        at = int(np.searchsorted(ids, first_missing))
        if at >= n:
            raise ValueError(f"gap ({first_missing}, {last_missing}) lies after the last id {int(ids[-1])}")
        ids[at:] += last_missing - first_missing + 1
        prev_last = last_missing

    # Sorted uniform times without a sort: normalised cumulative exponential spacings (O(n)).
    spacing = np.cumsum(rng.exponential(size=n + 1))
    span = end_us - start_us
    time_us = start_us + np.floor(spacing[:n] / spacing[n] * span).astype(np.int64)
    np.minimum(time_us, end_us - 1, out=time_us)

    base_ticks = round(base_price * 10**PRICE_DECIMALS)
    step_sd = base_ticks * 0.01 / np.sqrt(n)
    price_ticks = base_ticks + np.cumsum(np.rint(rng.normal(0.0, step_sd, n))).astype(np.int64)
    np.maximum(price_ticks, max(base_ticks // 10, 1), out=price_ticks)

    decimals = QTY_DECIMALS[market]
    median_units = {"spot": 100.0, "um": 10.0, "cm": 3.0}[market]  # 0.001 BTC, 0.01 BTC, 3 contracts
    qty_units = np.rint(rng.lognormal(np.log(median_units), 1.3, n)).astype(np.int64)
    np.clip(qty_units, 1, 10_000 * 10**decimals, out=qty_units)

    return Trades(
        id=ids,
        time_us=time_us,
        price_ticks=price_ticks,
        qty_units=qty_units,
        is_buyer_maker=rng.random(n) < 0.5,
        is_best_match=np.ones(n, dtype=bool),
        qty_decimals=decimals,
    )


# --- rendering ---------------------------------------------------------------------------------
# Each row is laid out as a fixed-width character matrix, built column-major ((width, n): every
# character position is one contiguous numpy row, which makes the writes cheap). Positions that
# must not be printed (leading zeros of integers, padding of `True` vs `False`, trailing zeros of
# trimmed decimals) hold byte 0, which never occurs in a CSV. One transpose and `chars[chars != 0]`
# then give the CSV body in row order. No per-row Python at all.


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """ASCII digits of non-negative `values`, zero-padded to `width`: shape (width, n)."""
    quads = -(-width // 4)
    out = np.empty((quads * 4, values.shape[0]), dtype=np.uint8)
    quad_t = _QUAD.T
    x = values.copy()
    for q in range(quads - 1, -1, -1):
        out[4 * q : 4 * q + 4] = quad_t[:, x % 10_000]
        x //= 10_000
    return out[quads * 4 - width :]


def _int_segment(values: np.ndarray) -> np.ndarray:
    """Plain decimal integers (leading zeros blanked)."""
    if values.size and int(values.min()) < 0:
        raise ValueError("negative values cannot be rendered")
    ndig = np.searchsorted(_POW10, values, side="right").clip(min=1)
    width = int(ndig.max()) if values.size else 1
    chars = _digits(values, width)
    chars[np.arange(width)[:, None] < (width - ndig)[None, :]] = 0
    return chars


def _fixed_segments(units: np.ndarray, decimals: int, *, trim: bool = False) -> list[np.ndarray]:
    """`units * 10**-decimals` with exactly `decimals` decimals, or trailing zeros trimmed to one."""
    if decimals == 0:
        return [_int_segment(units)]
    scale = 10**decimals
    frac = _digits(units % scale, decimals)
    if trim:
        nonzero = frac != ord("0")
        nonzero[0] = True  # keep at least one decimal: 422.835000 -> 422.835, 100.000 -> 100.0
        frac[~np.logical_or.accumulate(nonzero[::-1], axis=0)[::-1]] = 0
    return [_int_segment(units // scale), _const(b"."), frac]


def _const(text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8)[:, None]


def _bool_segment(values: np.ndarray, true: bytes, false: bytes) -> np.ndarray:
    width = max(len(true), len(false))
    table = np.zeros((width, 2), dtype=np.uint8)  # zero padding = not printed
    table[: len(false), 0] = np.frombuffer(false, dtype=np.uint8)
    table[: len(true), 1] = np.frombuffer(true, dtype=np.uint8)
    return table[:, values.astype(np.intp)]


def _join(segments: list[np.ndarray], n: int) -> bytes:
    width = sum(seg.shape[0] for seg in segments)
    chars_t = np.empty((width, n), dtype=np.uint8)
    at = 0
    for seg in segments:
        chars_t[at : at + seg.shape[0]] = seg  # constants broadcast along the rows
        at += seg.shape[0]
    chars = np.ascontiguousarray(chars_t.T)
    body: bytes = chars[chars != 0].tobytes()
    return body


def _row_segments(t: Trades, market: Market, time_unit: TimeUnit) -> list[np.ndarray]:
    cols: list[list[np.ndarray]] = [[_int_segment(t.id)]]
    if market == "spot":
        up = 10 ** (SPOT_DECIMALS - PRICE_DECIMALS)
        uq = 10 ** (SPOT_DECIMALS - t.qty_decimals)
        uqq = 10 ** (SPOT_DECIMALS - PRICE_DECIMALS - t.qty_decimals)
        cols += [
            _fixed_segments(t.price_ticks * up, SPOT_DECIMALS),
            _fixed_segments(t.qty_units * uq, SPOT_DECIMALS),
            _fixed_segments(t.quote_units * uqq, SPOT_DECIMALS),
        ]
    elif market == "um":
        cols += [
            _fixed_segments(t.price_ticks, PRICE_DECIMALS),
            _fixed_segments(t.qty_units, t.qty_decimals),
            _fixed_segments(t.quote_units, PRICE_DECIMALS + t.qty_decimals, trim=True),
        ]
    else:
        if t.qty_decimals != 0:
            raise ValueError("COIN-M qty counts contracts: generate the trades with market='cm'")
        cols += [
            _fixed_segments(t.price_ticks, PRICE_DECIMALS),
            [_int_segment(t.qty_units)],
            _fixed_segments(t.base_units, CM_BASE_DECIMALS),
        ]
    cols.append([_int_segment(t.time(time_unit))])
    if market == "spot":
        cols.append([_bool_segment(t.is_buyer_maker, b"True", b"False")])
        cols.append([_bool_segment(t.is_best_match, b"True", b"False")])
    else:
        cols.append([_bool_segment(t.is_buyer_maker, b"true", b"false")])
    segments: list[np.ndarray] = []
    for i, col in enumerate(cols):
        if i:
            segments.append(_const(b","))
        segments += col
    segments.append(_const(b"\n"))
    return segments


def default_header(market: Market, day: date) -> bool:
    """Whether Binance's file for `day` starts with a header line."""
    if market == "spot":
        return False
    if market == "um":
        return day >= UM_HEADER_FROM
    return True  # COIN-M is mixed in reality; tests choose per file


def default_time_unit(market: Market, day: date) -> TimeUnit:
    """`us` for spot files from 2025-01-01, else `ms`."""
    return "us" if market == "spot" and day >= SPOT_US_FROM else "ms"


def _as_day(day: date | ArchiveSpec) -> date:
    if isinstance(day, ArchiveSpec):
        return day.first_day
    return day.date() if isinstance(day, datetime) else day


def render_csv(
    trades: Trades,
    market: Market,
    day: date | ArchiveSpec,
    *,
    header: bool | None = None,
    time_unit: TimeUnit | None = None,
) -> bytes:
    """The CSV Binance would publish for these rows, in the given order.

    `day` (or the spec's first day) picks the defaults: spot never has a header and uses µs from
    2025-01-01; USD-M has a header from 2022-08-11; COIN-M has one unless `header=False`.
    `header=True` on spot writes a (non-Binance) camelCase header, for robustness tests.
    Every line, the last included, ends with `\\n`.
    """
    the_day = _as_day(day)
    with_header = default_header(market, the_day) if header is None else header
    unit = default_time_unit(market, the_day) if time_unit is None else time_unit

    def render(lo: int) -> bytes:
        chunk = trades.take(slice(lo, lo + _RENDER_CHUNK))
        return _join(_row_segments(chunk, market, unit), len(chunk))

    starts = range(0, len(trades), _RENDER_CHUNK)
    if len(starts) > 1 and _RENDER_THREADS > 1:
        with ThreadPoolExecutor(_RENDER_THREADS, thread_name_prefix="render_csv") as pool:
            body = list(pool.map(render, starts))
    else:
        body = [render(lo) for lo in starts]
    return b"".join([HEADERS[market]] * with_header + body)


# --- ZIP and checksum --------------------------------------------------------------------------

#: A fixed member timestamp keeps ZIPs (hence their sha256) reproducible from the same rows.
ZIP_DATE_TIME = (2024, 1, 2, 0, 0, 0)


def zip_members(members: Sequence[tuple[str, bytes]], *, compresslevel: int = 6) -> bytes:
    """A DEFLATE ZIP holding `members` (name, data) verbatim: names are not sanitised."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compresslevel=compresslevel)
    return buf.getvalue()


def make_zip(csv_bytes: bytes, member_name: str, *, compresslevel: int = 6) -> bytes:
    """One-member DEFLATE ZIP, like Binance's archives (level 6 is zlib's default; 1 is 3x faster)."""
    return zip_members([(member_name, csv_bytes)], compresslevel=compresslevel)


def write_zip(path: Path, member_name: str, csv_bytes: bytes) -> Path:
    """`make_zip` written to `path` (its folder created): an archive as a download leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_zip(csv_bytes, member_name))
    return path


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def checksum_text(zip_bytes: bytes, file_name: str) -> str:
    """The `.CHECKSUM` body: `<sha256 hex><two spaces><file name>`, with no trailing newline."""
    return f"{sha256_hex(zip_bytes)}  {file_name}"


# --- deliberately bad archives ------------------------------------------------------------------

CorruptMode = Literal["truncated", "garbage", "bad_crc"]


def corrupt_zip(csv_bytes: bytes, member_name: str, mode: CorruptMode = "truncated", *, seed: int = 0) -> bytes:
    """A ZIP that cannot be read.

    - `truncated`: a valid ZIP cut in the middle (no central directory: `zipfile` refuses it);
    - `garbage`: random bytes of a similar size, no ZIP signature at all;
    - `bad_crc`: a ZIP that opens and lists its member, but whose compressed data was altered,
      so extracting it fails (zlib error or CRC mismatch).
    """
    good = make_zip(csv_bytes, member_name)
    if mode == "truncated":
        return good[: max(len(good) // 2, 1)]
    if mode == "garbage":
        return np.random.default_rng(seed).integers(0, 256, max(len(good), 64), dtype=np.uint8).tobytes()
    # Flip bytes inside the member's compressed data, which follows the 30-byte local header,
    # the name and the extra field (their lengths are at offsets 26 and 28).
    data = bytearray(good)
    name_len, extra_len = struct.unpack_from("<HH", good, 26)
    start = 30 + name_len + extra_len
    stop = start + zipfile.ZipFile(io.BytesIO(good)).infolist()[0].compress_size
    for pos in range(start + (stop - start) // 3, stop, max((stop - start) // 7, 1)):
        data[pos] ^= 0xFF
    return bytes(data)


def empty_zip() -> bytes:
    """A valid ZIP with no member at all."""
    return zip_members([])


def two_member_zip(csv_bytes: bytes, names: tuple[str, str] = ("a.csv", "b.csv")) -> bytes:
    """A ZIP with two CSV members (the pipeline expects exactly one)."""
    return zip_members([(names[0], csv_bytes), (names[1], csv_bytes)])


def traversal_zip(csv_bytes: bytes, member_name: str = "../evil.csv") -> bytes:
    """A ZIP whose single member name climbs out of the extraction folder."""
    return zip_members([(member_name, csv_bytes)])


def absolute_zip(csv_bytes: bytes, member_name: str = "/etc/evil.csv") -> bytes:
    """A ZIP whose single member name is an absolute path."""
    return zip_members([(member_name, csv_bytes)])
