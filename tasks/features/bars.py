"""Information-driven bars (AFML ch. 2): reference-compatible functions and a streaming API.

Pure computation (no Prefect): the kernels are in `tasks.features.bars_nb`, the semantics in
docs/bars-spec.md (the reference is mlfinlab 0.12, today mlfinpy).

Two faces:

* **Reference-compatible functions** named and parametrised like the reference library
  (`get_ema_dollar_imbalance_bars`, `get_const_tick_run_bars`, `get_dollar_bars`, ...).
  They take a DataFrame or CSV path(s) whose first three columns are date_time, price,
  volume, read CSV in `batch_size` chunks, derive the side by the tick rule and return
  the reference's columns. The result does not depend on `batch_size` (see
  `tasks.features.bars_nb` for the one warm-up corner where the reference's own output does).
* **Streaming API for the pipeline** (production mode): a `BarSpec` (what to build), a
  `BarState` (everything carried from one chunk to the next; `to_bytes`/`from_bytes`
  and `to_json`/`from_json` round-trip it exactly), and `process_chunk(spec, state,
  time_us, price, qty, is_buyer_maker, trade_id)` returning a `pyarrow.Table` of
  `BARS_SCHEMA` and the new state. Chunking is invisible: any cut of the stream, with the
  state carried (or serialised and restored) between calls, gives the bars of one pass.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from tasks.features import bars_nb as nb
from tasks.schema import TIME_TYPE

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

Kind = Literal["standard", "imbalance", "run"]
Metric = Literal["tick", "volume", "dollar"]
Side = Literal["maker", "tick_rule"]
Ewma = Literal["running", "exact"]

_METRIC_CODE: dict[str, int] = {"tick": nb.M_TICK, "volume": nb.M_VOLUME, "dollar": nb.M_DOLLAR}

#: One row per closed bar. Times are those of the first and the closing trade; `threshold`
#: is what the bar's metric was compared with when it closed (standard bars: the
#: threshold in force; imbalance: E[T]·|E[x]|; run: E[T]·max(P·E[x_buy], (1-P)·E[x_sell]);
#: NaN for a bar forced closed by max_ticks before the expectations were defined, and for
#: the first standard bar in target-rate mode, which closes after exp_num_ticks_init
#: trades); `capped` tells a bar closed by a cap from one closed by its rule.
BARS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("open_time", TIME_TYPE, nullable=False),
        pa.field("close_time", TIME_TYPE, nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("vwap", pa.float64(), nullable=False, metadata={"doc": "dollar_value / volume; NaN if volume is 0"}),
        pa.field("volume", pa.float64(), nullable=False, metadata={"doc": "sum of base qty"}),
        pa.field("buy_volume", pa.float64(), nullable=False, metadata={"doc": "qty of trades with side +1"}),
        pa.field("sell_volume", pa.float64(), nullable=False, metadata={"doc": "qty of trades with side -1"}),
        pa.field("dollar_value", pa.float64(), nullable=False, metadata={"doc": "sum of price*qty"}),
        pa.field("tick_count", pa.int64(), nullable=False),
        pa.field("first_trade_id", pa.int64(), nullable=False),
        pa.field("last_trade_id", pa.int64(), nullable=False),
        pa.field("threshold", pa.float64(), nullable=False, metadata={"doc": "threshold the closing test used"}),
        pa.field("capped", pa.bool_(), nullable=False,
                 metadata={"doc": "closed by a cap (max_ticks, or 10·E[T] with bars_per_day), not by its rule"}),
    ]
)

#: Columns of the reference library's bars DataFrame, in its order.
REFERENCE_COLUMNS = [
    "date_time",
    "tick_num",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "cum_buy_volume",
    "cum_ticks",
    "cum_dollar_value",
]


#: Bounds of BarSpec's numeric fields, far beyond any useful value but within what a run can
#: afford: the rings of `num_prev_bars` and `expected_imbalance_window` float64 values are the
#: bar state saved in every feature part's footer (a run bar keeps two of each), and W is the
#: per-trade cost of the exact EWMA (num_prev_bars=100000000 ran 67 s at 14 GB RSS and wrote
#: a 2.5 GB part for 7,500 trades). A bar of a billion trades spans months of BTCUSDT.
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "num_prev_bars": (1, 10_000),
    "expected_imbalance_window": (1, 100_000),
    "min_ticks": (0, 1_000_000_000),
    "max_ticks": (0, 1_000_000_000),
}
#: Threshold: > 0 (a standard bar of 0 closes at every trade) and at most 1e15 (dollars,
#: base units or trades); NaN and infinities are refused (a bar that can never close),
#: except exp_num_ticks_max=inf, the default: no clamp.
_FLOAT_BOUNDS: dict[str, tuple[float, float]] = {
    "threshold": (0.0, 1e15),
    "exp_num_ticks_init": (0.0, 1e9),
    "exp_num_ticks_min": (0.0, 1e9),
    "exp_num_ticks_max": (0.0, 1e9),
    "bars_per_day": (0.0, 1e6),
    "rate_window_days": (0.01, 365.0),
}


def _range(name: str, lo: float, hi: float) -> str:
    if name == "threshold":
        return f"> {lo:g} and <= {hi:g}"
    return f"{lo:g}..{hi:g}" + (" or inf" if name == "exp_num_ticks_max" else "")


@dataclass(frozen=True)
class BarSpec:
    """What bars to build. Production defaults; `BarSpec.reference(...)` gives reference mode.

    kind: "standard" (tick/volume/dollar bars), "imbalance" or "run".
    metric: "tick", "volume" (base qty) or "dollar" (price·qty).
    threshold: standard bars' constant threshold (a time-varying one is passed per
        trade to `process_chunk`, see `threshold_at`).
    ema: E[T] is the EWMA of the last `num_prev_bars` bar lengths (False: E[T] stays
        `exp_num_ticks_init`, the reference's "const" bars).
    num_prev_bars, expected_imbalance_window (W), exp_num_ticks_init (E0): as in the
        reference.
    exp_num_ticks_min / exp_num_ticks_max: E[T] is clamped to this range after each
        bar (the reference's `exp_num_ticks_constraints`).
    min_ticks: a bar never closes with fewer trades (0: no guard).
    max_ticks: a bar is closed once it has this many trades (0: no cap).
    side: "maker" (b = -1 if is_buyer_maker else +1, Binance) or "tick_rule".
    ewma: "running" (O(1) per trade) or "exact" (the reference's O(W) recomputation).
    bars_per_day: target-rate mode when > 0 (the production presets; see
        `tasks.features.bars_nb`): E[T] (imbalance, run) or the threshold (standard bars) is the
        trailing activity per day divided by this, instead of the EWMA of past bar
        lengths (which collapses or explodes) or a constant. Times must be µs. 0: off.
    rate_window_days: mean age of the trailing activity rate, in days (past trades only).
    In target-rate mode, exp_num_ticks_init is the first bar's length (before any rate is
    known), num_prev_bars the span of the step that steers bar lengths to E[T], and a bar
    is closed at 10·E[T] trades whatever its imbalance.
    """

    kind: Kind
    metric: Metric
    threshold: float | None = None
    ema: bool = True
    num_prev_bars: int = 3
    expected_imbalance_window: int = 10_000
    exp_num_ticks_init: float = 20_000.0
    exp_num_ticks_min: float = 0.0
    exp_num_ticks_max: float = math.inf
    min_ticks: int = 0
    max_ticks: int = 0
    side: Side = "maker"
    ewma: Ewma = "running"
    bars_per_day: float = 0.0
    rate_window_days: float = 1.0

    def __post_init__(self) -> None:
        for name, allowed in (("kind", ("standard", "imbalance", "run")), ("metric", tuple(_METRIC_CODE)),
                              ("side", ("maker", "tick_rule")), ("ewma", ("running", "exact"))):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"{name}={value!r} is not allowed: one of {', '.join(allowed)}")
        if not isinstance(self.ema, bool | np.bool_):
            raise ValueError(f"ema={self.ema!r} is not allowed: true or false")
        object.__setattr__(self, "ema", bool(self.ema))
        for name, (lo, hi) in _INT_BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name}={value!r} is not an integer (allowed {lo}..{hi})")
            if not lo <= value <= hi:
                raise ValueError(f"{name}={value} is out of range: allowed {lo}..{hi}")
            object.__setattr__(self, name, int(value))  # canonical: the spec's JSON is its identity
        for name, (low, high) in _FLOAT_BOUNDS.items():
            value = getattr(self, name)
            if name == "threshold" and value is None:
                continue
            if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
                raise ValueError(f"{name}={value!r} is not a number (allowed {_range(name, low, high)})")
            number = float(value)
            unbounded = name == "exp_num_ticks_max" and number == math.inf  # the default: no clamp
            if not unbounded and not (low <= number <= high and (name != "threshold" or number > 0)):
                raise ValueError(f"{name}={number!r} is out of range: allowed {_range(name, low, high)}")
            object.__setattr__(self, name, number)
        if not self.exp_num_ticks_min <= self.exp_num_ticks_max:
            raise ValueError(f"exp_num_ticks_min={self.exp_num_ticks_min!r} exceeds "
                             f"exp_num_ticks_max={self.exp_num_ticks_max!r}")
        if self.bars_per_day and self.bars_per_day < 1e-3:
            raise ValueError(f"bars_per_day={self.bars_per_day!r} is out of range: 0 (off) or 0.001..1e6")
        if self.bars_per_day:
            if self.kind == "standard" and self.threshold is not None:
                raise ValueError("standard bars take threshold=... or bars_per_day=..., not both")
            if self.kind != "standard" and (not self.ema or self.ewma != "running"):
                raise ValueError("bars_per_day needs ema=true and ewma='running' (E[T] comes from the trade rate)")
            if self.exp_num_ticks_init < 1:
                raise ValueError(f"exp_num_ticks_init={self.exp_num_ticks_init!r} is out of range with bars_per_day: "
                                 "the first bar's length, allowed 1..1e9")
        if self.max_ticks and self.max_ticks < self.min_ticks:
            raise ValueError(f"max_ticks={self.max_ticks} is below min_ticks={self.min_ticks} (0 for no cap)")

    @classmethod
    def reference(
        cls,
        kind: Kind,
        metric: Metric,
        *,
        ema: bool = True,
        threshold: float | None = None,
        num_prev_bars: int = 3,
        expected_imbalance_window: int = 10_000,
        exp_num_ticks_init: float = 20_000.0,
        exp_num_ticks_constraints: tuple[float, float] | list[float] | None = None,
    ) -> BarSpec:
        """Reference mode: tick-rule side, exact EWMA, no guards (mlfinlab 0.12 semantics)."""
        lo, hi = (0.0, math.inf) if exp_num_ticks_constraints is None else exp_num_ticks_constraints
        return cls(
            kind=kind,
            metric=metric,
            threshold=threshold,
            ema=ema,
            num_prev_bars=int(num_prev_bars),
            expected_imbalance_window=int(expected_imbalance_window),
            exp_num_ticks_init=float(exp_num_ticks_init),
            exp_num_ticks_min=float(lo),
            exp_num_ticks_max=float(hi),
            side="tick_rule",
            ewma="exact",
        )

    def to_json(self) -> str:
        """A canonical JSON form (stored with the state so a state is never used with other params)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BarSpec:
        """Inverse of `to_json`."""
        return cls(**json.loads(text))


@dataclass
class BarState:
    """Everything a stream carries from one chunk to the next.

    `fs`/`is_` are the kernel's scalar slots (open bar, theta, E[T], E[x], running sums,
    counters; see the F_*/I_* names in `tasks.features.bars_nb`), `buffers` its history rings
    (imbalance: last W x and last num_prev_bars lengths; run: buy and sell rings, lengths,
    buy shares), `tick` the tick rule's [previous price, previous side]. `trades_seen`
    counts trades processed (the reference's tick_num is a global 1-based count).
    """

    spec_json: str
    fs: F64
    is_: I64
    buffers: list[F64]
    tick: F64
    trades_seen: int = 0
    bars_emitted: int = 0

    @classmethod
    def initial(cls, spec: BarSpec) -> BarState:
        """The state before the first trade of a stream."""
        w, k = spec.expected_imbalance_window, spec.num_prev_bars
        buffers: list[F64]
        if spec.kind == "standard":
            fs = np.zeros(nb.N_BAR_F)
            is_ = np.zeros(nb.N_BAR_I, np.int64)
            buffers = []
        elif spec.kind == "imbalance":
            fs = np.zeros(nb.N_IMB_F)
            fs[nb.F_ET] = spec.exp_num_ticks_init
            fs[nb.F_EX] = np.nan
            is_ = np.zeros(nb.N_IMB_I, np.int64)
            buffers = [np.zeros(w), np.zeros(k)]
        else:
            fs = np.zeros(nb.N_RUN_F)
            fs[nb.F_RET] = spec.exp_num_ticks_init
            fs[[nb.F_EXB, nb.F_EXS, nb.F_P]] = np.nan
            is_ = np.zeros(nb.N_RUN_I, np.int64)
            buffers = [np.zeros(w), np.zeros(w), np.zeros(k), np.zeros(k)]
        rate = np.zeros(nb.N_RATE)
        rate[nb.R_LAST] = rate[nb.R_THR] = np.nan
        buffers.append(rate)  # the target-rate state, last in every kind's buffers
        tick = np.array([np.nan, 0.0])
        return cls(spec.to_json(), fs, is_, buffers, tick)

    def copy(self) -> BarState:
        """A deep copy (the kernels update state arrays in place)."""
        return BarState(
            self.spec_json,
            self.fs.copy(),
            self.is_.copy(),
            [b.copy() for b in self.buffers],
            self.tick.copy(),
            self.trades_seen,
            self.bars_emitted,
        )

    def check(self, spec: BarSpec) -> None:
        """Raise ValueError if this state was made for other parameters."""
        if self.spec_json != spec.to_json():
            raise ValueError("bar state was created for another BarSpec")

    @property
    def open_bar_ticks(self) -> int:
        """Trades in the open (unfinished) bar; it is never emitted, it stays here."""
        return int(self.is_[nb.I_N])

    def to_bytes(self) -> bytes:
        """Serialise to an .npz blob (exact: float64 arrays are stored bit for bit)."""
        buf = io.BytesIO()
        arrays: dict[str, Any] = {f"buffer{i}": b for i, b in enumerate(self.buffers)}
        meta = json.dumps(
            {
                "spec": self.spec_json,
                "trades_seen": self.trades_seen,
                "bars_emitted": self.bars_emitted,
                "n": len(self.buffers),
            }
        )
        np.savez(buf, fs=self.fs, is_=self.is_, tick=self.tick, meta=np.array(meta), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> BarState:
        """Inverse of `to_bytes`."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(
                meta["spec"],
                z["fs"].astype(np.float64),
                z["is_"].astype(np.int64),
                [z[f"buffer{i}"].astype(np.float64) for i in range(meta["n"])],
                z["tick"].astype(np.float64),
                int(meta["trades_seen"]),
                int(meta["bars_emitted"]),
            )

    def to_json(self) -> str:
        """Serialise to JSON (floats as repr, so exact; NaN/Infinity as Python's json writes them)."""
        return json.dumps(
            {
                "spec": self.spec_json,
                "fs": self.fs.tolist(),
                "is_": self.is_.tolist(),
                "buffers": [b.tolist() for b in self.buffers],
                "tick": self.tick.tolist(),
                "trades_seen": self.trades_seen,
                "bars_emitted": self.bars_emitted,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> BarState:
        """Inverse of `to_json`."""
        d = json.loads(text)
        return cls(
            d["spec"],
            np.array(d["fs"], np.float64),
            np.array(d["is_"], np.int64),
            [np.array(b, np.float64) for b in d["buffers"]],
            np.array(d["tick"], np.float64),
            int(d["trades_seen"]),
            int(d["bars_emitted"]),
        )


@dataclass
class _Bars:
    """Raw kernel output of one chunk (column j < n is bar j)."""

    out_f: F64
    out_i: I64
    n: int = field(default=0)


def _as_time_us(time_us: npt.ArrayLike) -> I64:
    arr = np.asarray(time_us)
    if np.issubdtype(arr.dtype, np.datetime64):
        arr = arr.astype("datetime64[us]").view(np.int64)
    return np.ascontiguousarray(arr, dtype=np.int64)


def threshold_at(time_us: npt.ArrayLike, change_time_us: npt.ArrayLike, values: npt.ArrayLike) -> F64:
    """Per-trade threshold of a step series: the last value set at or before each trade's time.

    `change_time_us` (sorted) are the times the threshold changes to `values`. Only past
    values are used (never future data); a trade before the first change raises.
    """
    t = _as_time_us(time_us)
    ct = _as_time_us(change_time_us)
    v = np.asarray(values, np.float64)
    if ct.shape != v.shape or ct.ndim != 1:
        raise ValueError("change_time_us and values must be 1-d and of equal length")
    if np.any(np.diff(ct) < 0):
        raise ValueError("change_time_us must be sorted")
    idx = np.searchsorted(ct, t, side="right") - 1
    if idx.size and idx.min() < 0:
        raise ValueError("a trade precedes the first threshold value")
    return np.ascontiguousarray(v[idx])


def _run_kernel(
    spec: BarSpec,
    state: BarState,
    time_us: I64,
    price: F64,
    qty: F64,
    side: npt.NDArray[np.int8],
    trade_id: I64,
    threshold: F64 | None,
) -> _Bars:
    m = _METRIC_CODE[spec.metric]
    rate = state.buffers[-1]
    window_us = spec.rate_window_days * nb.DAY_US
    if spec.kind == "standard" and spec.bars_per_day:
        if threshold is not None:
            raise ValueError("a per-trade threshold and bars_per_day exclude each other")
        of, oi, n = nb.standard_bars(price, qty, side, time_us, trade_id, m, np.array([np.nan]), state.fs, state.is_,
                                     spec.bars_per_day, window_us, spec.exp_num_ticks_init, rate)
    elif spec.kind == "standard":
        if threshold is None:
            if spec.threshold is None:
                raise ValueError("standard bars need spec.threshold or a per-trade threshold array")
            thr = np.array([spec.threshold])
        else:
            thr = np.ascontiguousarray(threshold, np.float64)
            if thr.shape != price.shape:
                raise ValueError("threshold must have one value per trade")
        of, oi, n = nb.standard_bars(price, qty, side, time_us, trade_id, m, thr, state.fs, state.is_,
                                     0.0, window_us, 0.0, rate)
    elif spec.kind == "imbalance":
        of, oi, n = nb.imbalance_bars(
            price, qty, side, time_us, trade_id, m, spec.ema, spec.ewma == "exact", spec.num_prev_bars,
            spec.exp_num_ticks_min, spec.exp_num_ticks_max, spec.min_ticks, spec.max_ticks,
            state.fs, state.is_, state.buffers[0], state.buffers[1], spec.bars_per_day, window_us, rate,
        )  # fmt: skip
    else:
        of, oi, n = nb.run_bars(
            price, qty, side, time_us, trade_id, m, spec.ema, spec.ewma == "exact", spec.num_prev_bars,
            spec.exp_num_ticks_min, spec.exp_num_ticks_max, spec.min_ticks, spec.max_ticks,
            state.fs, state.is_, state.buffers[0], state.buffers[1], state.buffers[2], state.buffers[3],
            spec.bars_per_day, window_us, rate,
        )  # fmt: skip
    return _Bars(of, oi, int(n))


def process_chunk_arrays(
    spec: BarSpec,
    state: BarState,
    time_us: npt.ArrayLike,
    price: npt.ArrayLike,
    qty: npt.ArrayLike,
    is_buyer_maker: npt.ArrayLike | None = None,
    trade_id: npt.ArrayLike | None = None,
    threshold: npt.ArrayLike | None = None,
) -> tuple[dict[str, npt.NDArray[Any]], BarState]:
    """Like `process_chunk`, returning a dict of NumPy columns (BARS_SCHEMA names; times int64 µs)."""
    state.check(spec)
    new = state.copy()  # the caller's state stays valid (retries, checkpoints)
    t = _as_time_us(time_us)
    p = np.ascontiguousarray(price, np.float64)
    q = np.ascontiguousarray(qty, np.float64)
    n = p.shape[0]
    if t.shape != (n,) or q.shape != (n,):
        raise ValueError("time_us, price and qty must be 1-d arrays of one length")
    if spec.side == "maker":
        if is_buyer_maker is None:
            raise ValueError("side='maker' needs is_buyer_maker")
        ibm = np.asarray(is_buyer_maker, np.bool_)
        if ibm.shape != (n,):
            raise ValueError("is_buyer_maker must have one value per trade")
        # b = -1 when the buyer was the maker (the taker sold), else +1.
        side = np.int8(1) - (ibm.view(np.int8) << np.int8(1))
    else:
        side = nb.tick_rule(p, new.tick)
    if trade_id is None:
        tid = np.arange(new.trades_seen, new.trades_seen + n, dtype=np.int64)
    else:
        tid = np.ascontiguousarray(trade_id, np.int64)
        if tid.shape != (n,):
            raise ValueError("trade_id must have one value per trade")
    thr = None if threshold is None else np.asarray(threshold, np.float64)
    bars = _run_kernel(spec, new, t, p, q, side, tid, thr)
    new.trades_seen += n
    new.bars_emitted += bars.n
    of, oi, k = bars.out_f, bars.out_i, bars.n
    if k < n // 8:
        # Few bars: compact copies, so the returned columns do not pin the n-wide blocks.
        of, oi = of[:, :k].copy(), oi[:, :k].copy()
    volume = of[nb.O_VOLUME, :k]
    dollar = of[nb.O_DOLLAR, :k]
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap = np.where(volume > 0, dollar / volume, np.nan)
    cols: dict[str, npt.NDArray[Any]] = {
        "open_time": oi[nb.O_OPEN_TIME, :k],
        "close_time": oi[nb.O_CLOSE_TIME, :k],
        "open": of[nb.O_OPEN, :k],
        "high": of[nb.O_HIGH, :k],
        "low": of[nb.O_LOW, :k],
        "close": of[nb.O_CLOSE, :k],
        "vwap": vwap,
        "volume": volume,
        "buy_volume": of[nb.O_BUY, :k],
        "sell_volume": of[nb.O_SELL, :k],
        "dollar_value": dollar,
        "tick_count": oi[nb.O_TICKS, :k],
        "first_trade_id": oi[nb.O_FIRST_ID, :k],
        "last_trade_id": oi[nb.O_LAST_ID, :k],
        "threshold": of[nb.O_THRESHOLD, :k],
        "capped": oi[nb.O_CAPPED, :k] != 0,
    }
    return cols, new


def bars_table(cols: dict[str, npt.NDArray[Any]]) -> pa.Table:
    """A BARS_SCHEMA table from `process_chunk_arrays` columns (zero-copy where possible)."""
    arrays = [pa.array(cols[f.name], type=f.type) for f in BARS_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=BARS_SCHEMA)


def process_chunk(
    spec: BarSpec,
    state: BarState,
    time_us: npt.ArrayLike,
    price: npt.ArrayLike,
    qty: npt.ArrayLike,
    is_buyer_maker: npt.ArrayLike | None = None,
    trade_id: npt.ArrayLike | None = None,
    threshold: npt.ArrayLike | None = None,
) -> tuple[pa.Table, BarState]:
    """Feed one chunk of a trade stream; return the bars closed in it and the new state.

    time_us: int64 µs since the epoch (or a datetime64 array); price, qty: float64 (qty in
    the base asset); is_buyer_maker: bool, required when spec.side == "maker"; trade_id:
    int64 (default: the global trade index); threshold: standard bars only, one value per
    trade (see `threshold_at`), overriding spec.threshold.

    Trades must be in stream order; chunks may be cut anywhere. `state` is not modified
    (a new one is returned), so a failed chunk can be retried from the old state. The
    unfinished last bar is never emitted: it stays in the state.
    """
    cols, new = process_chunk_arrays(spec, state, time_us, price, qty, is_buyer_maker, trade_id, threshold)
    return bars_table(cols), new


# ---------------------------------------------------------------------------------------
# Reference-compatible functions
# ---------------------------------------------------------------------------------------

FileOrFrame: TypeAlias = str | Path | Iterable[str | Path] | pd.DataFrame


def _batches(file_path_or_df: FileOrFrame, batch_size: int) -> Iterator[pd.DataFrame]:
    if isinstance(file_path_or_df, pd.DataFrame):
        for start in range(0, len(file_path_or_df), batch_size):
            yield file_path_or_df.iloc[start : start + batch_size]
        return
    paths = [file_path_or_df] if isinstance(file_path_or_df, str | Path) else list(file_path_or_df)
    for path in paths:
        with pd.read_csv(path, chunksize=batch_size) as reader:
            yield from reader


def _check_batch(batch: pd.DataFrame) -> None:
    # The reference reads the first three columns as date_time, price, volume.
    if batch.shape[1] < 3:
        raise ValueError("tick data needs at least three columns: date_time, price, volume")
    for j, name in ((1, "price"), (2, "volume")):
        if not pd.api.types.is_numeric_dtype(batch.iloc[:, j]):
            raise ValueError(f"column {j} ({name}) must be numeric")


def _reference_bars(
    spec: BarSpec,
    file_path_or_df: FileOrFrame,
    batch_size: float,
    verbose: bool,
    to_csv: bool,
    output_path: str | Path | None,
    threshold_series: pd.Series | None = None,
) -> pd.DataFrame | None:
    size = int(batch_size)
    if size < 1:
        raise ValueError("batch_size must be >= 1")
    if to_csv:
        if output_path is None:
            raise ValueError("to_csv needs output_path")
        Path(output_path).write_text("")  # like the reference: start an empty file, append per batch
    state = BarState.initial(spec)
    frames: list[pd.DataFrame] = []
    if verbose:
        print("Reading data in batches:")
    for count, batch in enumerate(_batches(file_path_or_df, size)):
        if verbose:
            print("Batch number:", count)
        _check_batch(batch)
        n = len(batch)
        start = state.trades_seen
        index = np.arange(start, start + n, dtype=np.int64)
        thr = None
        if threshold_series is not None:
            when = pd.to_datetime(batch.iloc[:, 0]).to_numpy()
            pos = threshold_series.index.get_indexer(pd.DatetimeIndex(when), method="pad")
            if n and pos.min() < 0:
                raise ValueError("a trade precedes the first value of the threshold series")
            thr = threshold_series.to_numpy(np.float64)[pos]
        cols, state = process_chunk_arrays(
            spec, state, index, batch.iloc[:, 1].to_numpy(np.float64), batch.iloc[:, 2].to_numpy(np.float64),
            trade_id=index, threshold=thr,
        )  # fmt: skip
        close_idx = cols["close_time"]
        frame = pd.DataFrame(
            {
                # The closing trade's own date_time value and dtype (as the reference).
                "date_time": batch.iloc[:, 0].iloc[close_idx - start].reset_index(drop=True),
                "tick_num": close_idx + 1,
                "open": cols["open"],
                "high": cols["high"],
                "low": cols["low"],
                "close": cols["close"],
                "volume": cols["volume"],
                "cum_buy_volume": cols["buy_volume"],
                "cum_ticks": cols["tick_count"],
                "cum_dollar_value": cols["dollar_value"],
            }
        )
        if to_csv:
            assert output_path is not None
            frame.to_csv(output_path, header=count == 0, index=False, mode="a")
        else:
            frames.append(frame)
    if verbose:
        print("Returning bars \n")
    if to_csv:
        return None
    if not frames:
        return pd.DataFrame(columns=REFERENCE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def _info_bars(
    kind: Kind,
    metric: Metric,
    ema: bool,
    file_path_or_df: FileOrFrame,
    num_prev_bars: int,
    expected_imbalance_window: int,
    exp_num_ticks_init: float,
    exp_num_ticks_constraints: tuple[float, float] | list[float] | None,
    batch_size: float,
    analyse_thresholds: bool,
    verbose: bool,
    to_csv: bool,
    output_path: str | Path | None,
) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    if analyse_thresholds:
        # The reference logs theta/E[T]/E[x] at every trade; not implemented here.
        raise ValueError("analyse_thresholds=True is not supported (each bar's threshold is in process_chunk's output)")
    spec = BarSpec.reference(
        kind,
        metric,
        ema=ema,
        num_prev_bars=num_prev_bars,
        expected_imbalance_window=expected_imbalance_window,
        exp_num_ticks_init=exp_num_ticks_init,
        exp_num_ticks_constraints=exp_num_ticks_constraints,
    )
    bars = _reference_bars(spec, file_path_or_df, batch_size, verbose, to_csv, output_path)
    return bars, pd.DataFrame()


_RefResult = tuple[pd.DataFrame | None, pd.DataFrame]


def get_ema_dollar_imbalance_bars(
    file_path_or_df: FileOrFrame,
    num_prev_bars: int = 3,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    exp_num_ticks_constraints: tuple[float, float] | list[float] | None = None,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """EMA dollar imbalance bars (AFML 2.3.2.1, mlfinlab 0.12 semantics; bars-spec.md).

    Returns (bars, thresholds) like the reference: bars has REFERENCE_COLUMNS (None when
    to_csv, the bars are then appended to output_path per batch); thresholds is an empty
    DataFrame (analyse_thresholds is not supported). The bars do not depend on batch_size.
    """
    return _info_bars(
        "imbalance", "dollar", True, file_path_or_df, num_prev_bars, expected_imbalance_window, exp_num_ticks_init,
        exp_num_ticks_constraints, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def get_ema_volume_imbalance_bars(
    file_path_or_df: FileOrFrame,
    num_prev_bars: int = 3,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    exp_num_ticks_constraints: tuple[float, float] | list[float] | None = None,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """EMA volume imbalance bars (x = b·v); see `get_ema_dollar_imbalance_bars`."""
    return _info_bars(
        "imbalance", "volume", True, file_path_or_df, num_prev_bars, expected_imbalance_window, exp_num_ticks_init,
        exp_num_ticks_constraints, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def get_ema_tick_imbalance_bars(
    file_path_or_df: FileOrFrame,
    num_prev_bars: int = 3,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    exp_num_ticks_constraints: tuple[float, float] | list[float] | None = None,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """EMA tick imbalance bars (x = b); see `get_ema_dollar_imbalance_bars`."""
    return _info_bars(
        "imbalance", "tick", True, file_path_or_df, num_prev_bars, expected_imbalance_window, exp_num_ticks_init,
        exp_num_ticks_constraints, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def get_const_dollar_imbalance_bars(
    file_path_or_df: FileOrFrame,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """Constant-E[T] dollar imbalance bars (E[T] = exp_num_ticks_init forever; E[x] still an EWMA)."""
    return _info_bars(
        "imbalance", "dollar", False, file_path_or_df, 3, expected_imbalance_window, exp_num_ticks_init,
        None, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def get_const_volume_imbalance_bars(
    file_path_or_df: FileOrFrame,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """Constant-E[T] volume imbalance bars; see `get_const_dollar_imbalance_bars`."""
    return _info_bars(
        "imbalance", "volume", False, file_path_or_df, 3, expected_imbalance_window, exp_num_ticks_init,
        None, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def get_const_tick_imbalance_bars(
    file_path_or_df: FileOrFrame,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """Constant-E[T] tick imbalance bars; see `get_const_dollar_imbalance_bars`."""
    return _info_bars(
        "imbalance", "tick", False, file_path_or_df, 3, expected_imbalance_window, exp_num_ticks_init,
        None, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def get_ema_dollar_run_bars(
    file_path_or_df: FileOrFrame,
    num_prev_bars: int = 3,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    exp_num_ticks_constraints: tuple[float, float] | list[float] | None = None,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """EMA dollar run bars (AFML 2.3.2.3, mlfinlab 0.12 semantics; see `tasks.features.bars_nb.run_bars`).

    Returns (bars, thresholds) like `get_ema_dollar_imbalance_bars`.
    """
    return _info_bars(
        "run", "dollar", True, file_path_or_df, num_prev_bars, expected_imbalance_window, exp_num_ticks_init,
        exp_num_ticks_constraints, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def get_ema_volume_run_bars(
    file_path_or_df: FileOrFrame,
    num_prev_bars: int = 3,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    exp_num_ticks_constraints: tuple[float, float] | list[float] | None = None,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """EMA volume run bars; see `get_ema_dollar_run_bars`."""
    return _info_bars(
        "run", "volume", True, file_path_or_df, num_prev_bars, expected_imbalance_window, exp_num_ticks_init,
        exp_num_ticks_constraints, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def get_ema_tick_run_bars(
    file_path_or_df: FileOrFrame,
    num_prev_bars: int = 3,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    exp_num_ticks_constraints: tuple[float, float] | list[float] | None = None,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """EMA tick run bars; see `get_ema_dollar_run_bars`."""
    return _info_bars(
        "run", "tick", True, file_path_or_df, num_prev_bars, expected_imbalance_window, exp_num_ticks_init,
        exp_num_ticks_constraints, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def get_const_dollar_run_bars(
    file_path_or_df: FileOrFrame,
    num_prev_bars: int,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """Constant-E[T] dollar run bars (num_prev_bars still sets the EWMA of the buy share P)."""
    return _info_bars(
        "run", "dollar", False, file_path_or_df, num_prev_bars, expected_imbalance_window, exp_num_ticks_init,
        None, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def get_const_volume_run_bars(
    file_path_or_df: FileOrFrame,
    num_prev_bars: int,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """Constant-E[T] volume run bars; see `get_const_dollar_run_bars`."""
    return _info_bars(
        "run", "volume", False, file_path_or_df, num_prev_bars, expected_imbalance_window, exp_num_ticks_init,
        None, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def get_const_tick_run_bars(
    file_path_or_df: FileOrFrame,
    num_prev_bars: int,
    expected_imbalance_window: int = 10000,
    exp_num_ticks_init: float = 20000,
    batch_size: float = 2e7,
    analyse_thresholds: bool = False,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> _RefResult:
    """Constant-E[T] tick run bars; see `get_const_dollar_run_bars`."""
    return _info_bars(
        "run", "tick", False, file_path_or_df, num_prev_bars, expected_imbalance_window, exp_num_ticks_init,
        None, batch_size, analyse_thresholds, verbose, to_csv, output_path,
    )  # fmt: skip


def _standard(
    metric: Metric,
    file_path_or_df: FileOrFrame,
    threshold: float | pd.Series,
    batch_size: float,
    verbose: bool,
    to_csv: bool,
    output_path: str | Path | None,
) -> pd.DataFrame | None:
    if isinstance(threshold, pd.Series):
        # Time-varying: each trade is compared with the last value at or before its time.
        series = threshold.copy()
        series.index = pd.DatetimeIndex(pd.to_datetime(series.index))
        if not series.index.is_monotonic_increasing:
            series = series.sort_index()
        spec = BarSpec.reference("standard", metric)
        return _reference_bars(spec, file_path_or_df, batch_size, verbose, to_csv, output_path, series)
    spec = BarSpec.reference("standard", metric, threshold=float(threshold))
    return _reference_bars(spec, file_path_or_df, batch_size, verbose, to_csv, output_path)


def get_dollar_bars(
    file_path_or_df: FileOrFrame,
    threshold: float | pd.Series = 70000000,
    batch_size: float = 20000000,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> pd.DataFrame | None:
    """Dollar bars: close when the bar's sum of price·volume reaches `threshold` (>=).

    `threshold` is a number or a pd.Series indexed by time (the value in force at each
    trade's time is used). Returns REFERENCE_COLUMNS (None when to_csv).
    """
    return _standard("dollar", file_path_or_df, threshold, batch_size, verbose, to_csv, output_path)


def get_volume_bars(
    file_path_or_df: FileOrFrame,
    threshold: float | pd.Series = 28224,
    batch_size: float = 20000000,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> pd.DataFrame | None:
    """Volume bars: close when the bar's volume reaches `threshold`; see `get_dollar_bars`."""
    return _standard("volume", file_path_or_df, threshold, batch_size, verbose, to_csv, output_path)


def get_tick_bars(
    file_path_or_df: FileOrFrame,
    threshold: float | pd.Series = 2800,
    batch_size: float = 20000000,
    verbose: bool = True,
    to_csv: bool = False,
    output_path: str | Path | None = None,
) -> pd.DataFrame | None:
    """Tick bars: close every `threshold` trades; see `get_dollar_bars`."""
    return _standard("tick", file_path_or_df, threshold, batch_size, verbose, to_csv, output_path)
