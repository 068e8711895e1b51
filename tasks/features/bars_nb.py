"""Numba kernels for information-driven bars (AFML ch. 2; semantics in docs/bars-spec.md).

Reference: López de Prado, *Advances in Financial Machine Learning*, ch. 2, and the
behaviour of its reference implementation mlfinlab 0.12 (mlfinpy today) as pinned down
in bars-spec.md. No code of the reference is used here: these kernels implement the
behaviour the spec describes.

Every kernel is a pure function of NumPy arrays. The state of the stream (the open bar's
accumulators, theta, E[T], E[x], the imbalance history, the last bar lengths ...) lives
in small arrays the caller owns and passes in; the kernel updates them in place. Feeding
a stream in chunks and carrying those arrays (or a serialised copy of them) from one call
to the next gives exactly the bars of a single pass: no kernel keeps anything between
calls, and no decision depends on where a chunk starts.

Per trade the kernels take price, qty (base size), side b in {-1, 0, +1}, a time (int64,
e.g. µs since the epoch; the reference wrapper passes the global row index) and a trade
id (int64). The side comes from `tick_rule` (reference mode, b starts at 0 and carries
across chunks) or from Binance's `is_buyer_maker` (production mode: b = -1 if maker).

Output: `(out_f, out_i, n_bars)`, two row-major blocks of shape (columns, n_trades); bar
j is column j < n_bars (the rest is unused). The O_* indices below name the rows.

Two ways to get E[x] (the expected imbalance):

* ``exact`` (reference mode): at each evaluation, the adjusted EWMA of the last
  w = min(history, W) values with span w, recomputed in O(w) with the reference's
  recurrence. O(W) per closed bar, so the collapse regime (one-trade bars) is O(N·W).
* running (production mode): a running exponentially weighted sum S over the last W
  values with the fixed alpha = 2/(W+1), updated in O(1) per trade (the value leaving
  the window is read back from a ring buffer of W values and subtracted with weight
  (1-alpha)^W), and E[x] = S / Z with Z the sum of the weights. Once the history holds W
  values this is the reference's E[x] up to rounding; before that the reference uses the
  span w = history length, the running sum the span W (a documented difference).

Target-rate mode (production defaults; `bars_per_day` > 0). The book's E[T], the EWMA of
past bar lengths, feeds back on itself: a threshold E[T]·|E[x]| is reached in fewer than
E[T] trades whenever the flow is noisy (the expected first exit of a random walk from
[-h, h] is h²/σ², from one with drift μ it is (h/μ)·tanh(hμ/σ²), Cox & Miller 1965,
ch. 5), so bars shorten, E[T] follows, and they collapse, or grow without end the other
way. In this mode E[T] is no longer learnt from past bar lengths:

* E[T] = (trades per day) / bars_per_day, the rate of trades measured over the past
  only: exponentially weighted over time (mean age `window_us`), folded in at each close
  (`_rate_close`). The first bar, before any rate is known, has E[T] = E0. Standard bars
  get their threshold the same way: (metric per day) / bars_per_day.
* the imbalance threshold is h = q·sqrt(E[T]²·E[x]² + E[T]·Var[x]): the drift term of
  the book plus the noise term whose first exit takes E[T] trades (within 26 % of E[T]
  at any ratio of the two). Var[x] comes from a running sum of x² next to the one of x.
  Run bars keep the book's threshold, q·E[T]·max(P·E[x_buy], (1-P)·E[x_sell]).
* q corrects what the model leaves out (trades whose sides are correlated exit sooner
  than independent ones): after each bar, log q -= eta/2·log(length / E[T]) with eta =
  2/(num_prev_bars+1), a Robbins-Monro step that drives the median bar length to E[T].
  It is bounded (|log q| <= LOG_Q_MAX).
* a bar is closed by the cap once it has CAP_FACTOR·E[T] trades (and by max_ticks).

A bar closed by a cap (max_ticks, CAP_FACTOR·E[T]) and not by its rule has O_CAPPED = 1.

Warm-up (both modes): while E[x] is NaN it is re-evaluated at every trade: NaN while the
history holds fewer than E[T] values. The reference only does this "while no bar has
closed in the current chunk" (a property of its batching); re-evaluating at every trade
is the reference run with batch_size=1, and equals the reference at any batch size
whenever the reference's output does not itself depend on the batch size (which is the
case unless the E[T] lower constraint exceeds the history length after a close).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

from tasks.utc import DAY_US as _DAY_US

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]

# ---- output rows -------------------------------------------------------------------
# float block
O_OPEN, O_HIGH, O_LOW, O_CLOSE, O_VOLUME, O_BUY, O_SELL, O_DOLLAR, O_THRESHOLD = range(9)
N_OUT_F = 9
# int block
O_OPEN_TIME, O_CLOSE_TIME, O_TICKS, O_FIRST_ID, O_LAST_ID, O_CAPPED = range(6)
N_OUT_I = 6

# ---- state slots shared by all kernels (the open bar's accumulators) ---------------
F_OPEN, F_HIGH, F_LOW, F_VOL, F_BUY, F_SELL, F_DOLLAR = range(7)
I_N, I_OPEN_TIME, I_FIRST_ID = range(3)
N_BAR_F = 7
N_BAR_I = 3

# ---- imbalance-bar state -----------------------------------------------------------
F_THETA, F_ET, F_EX, F_S, F_Z = range(7, 12)
N_IMB_F = 12
I_H, I_POS, I_NLEN = range(3, 6)
N_IMB_I = 6

# ---- run-bar state -----------------------------------------------------------------
F_TB, F_TS, F_RET, F_EXB, F_EXS, F_P, F_SB, F_ZB, F_SS, F_ZS = range(7, 17)
N_RUN_F = 17
I_HB, I_HS, I_POSB, I_POSS, I_RNLEN, I_NBUY = range(3, 9)
N_RUN_I = 9

# ---- tick-rule state ---------------------------------------------------------------
T_PREV_PRICE, T_PREV_SIDE = 0, 1
N_TICK = 2

# ---- metrics -----------------------------------------------------------------------
M_TICK, M_VOLUME, M_DOLLAR = 0, 1, 2

# ---- target-rate state (one array per stream, all kernels; see the module docstring) --
#: decayed amount (trades, or the standard bar's metric), decayed time (µs), last close
#: time (µs; NaN before the first close), log q, running sum of x² (imbalance), and the
#: imbalance threshold set at the last close (the running sums move on after it, so it
#: is kept, not recomputed at a chunk's start).
R_AMOUNT, R_TIME, R_LAST, R_LOGQ, R_S2, R_THR = range(6)
N_RATE = 6
DAY_US = float(_DAY_US)
#: A bar with this many times E[T] trades is closed, whatever its imbalance.
CAP_FACTOR = 10.0
#: q stays within [e^-3.5, e^3.5] (about 1/33..33).
LOG_Q_MAX = 3.5

_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _jit(fn: _Fn) -> _Fn:
    """numba.njit with an on-disk cache; nogil so callers may run chunks in threads.

    (A typed wrapper: numba has no type hints, and strict mypy rejects untyped decorators.)
    """
    return cast(_Fn, numba.njit(cache=True, nogil=True)(fn))


@_jit
def tick_rule(price: F64, state: F64) -> I8:
    """Side of each trade by the tick rule (AFML ch. 2; mlfinlab 0.12 semantics).

    b_t = sign(p_t - p_{t-1}) if the price moved, else b_{t-1}; b starts at 0, so trades
    before the first price change carry no imbalance. `state` = [previous price (NaN
    before the first trade), previous side]; it is updated so the rule carries across
    chunks (resetting b at a chunk border is a known bug of naive implementations).
    """
    n = price.shape[0]
    out = np.empty(n, np.int8)
    prev = state[T_PREV_PRICE]
    b = state[T_PREV_SIDE]
    for i in range(n):
        p = price[i]
        if not math.isnan(prev):
            if p > prev:
                b = 1.0
            elif p < prev:
                b = -1.0
        out[i] = np.int8(b)
        prev = p
    state[T_PREV_PRICE] = prev
    state[T_PREV_SIDE] = b
    return out


@_jit
def _new_output(n: int) -> tuple[F64, I64]:
    """Output blocks for up to n bars (a chunk of n trades closes at most n).

    Sized once, up front: growing them inside the trade loop (reassigning the arrays)
    stops LLVM from keeping the loop's state in registers and costs ~10x. np.empty
    only reserves address space; pages are committed as bars are written (the caller
    slices the first n_bars columns, or copies them when few).
    """
    return np.empty((N_OUT_F, n), np.float64), np.empty((N_OUT_I, n), np.int64)


@_jit
def _ewma_last(ring: F64, pos: int, w: int, span: float) -> float:
    """Adjusted EWMA (pandas ewm(span, adjust=True)), last value, of the last `w` values.

    `ring` is a circular buffer whose next write position is `pos` (so the newest value is
    at pos-1). The recurrence is the reference's (acc = acc·(1-a) + x, weight += (1-a)^i),
    oldest value first.
    """
    if w <= 0:
        return np.nan
    size = ring.shape[0]
    idx = pos - w
    if idx < 0:
        idx += size
    d = 1.0 - 2.0 / (span + 1.0)
    acc = float(ring[idx])
    weight = 1.0
    pw = 1.0
    for _ in range(1, w):
        idx += 1
        if idx == size:
            idx = 0
        # (1-a)^i by repeated multiplication: cheaper than pow, and plain IEEE products
        # that a pure-Python oracle reproduces bit for bit.
        pw *= d
        weight += pw
        acc = acc * d + float(ring[idx])
    return acc / weight


@_jit
def _expected(ring: F64, pos: int, count: int, et: float, warm: bool, exact: bool, s: float, z: float) -> float:
    """E[x] from a history of `count` values (ring of the last W), NaN while warming up."""
    if warm and count < et:
        return np.nan
    w = min(count, ring.shape[0])
    if w == 0:
        return np.nan
    if exact:
        return _ewma_last(ring, pos, w, float(w))
    return s / z


@_jit
def _next_et(lens: F64, lpos: int, nlen: int, span: int, et_min: float, et_max: float) -> float:
    """E[T] after a close: EWMA (span num_prev_bars) of the last bar lengths, clipped."""
    et = _ewma_last(lens, lpos, min(nlen, lens.shape[0]), float(span))
    return min(max(et, et_min), et_max)


@_jit
def _rate_close(rate: F64, open_time: int, close_time: int, amount: float, window_us: float) -> None:
    """Fold a closed bar (its amount spread evenly from the previous close) into the rate."""
    last = rate[R_LAST]
    start = float(open_time) if math.isnan(last) else last
    dt = float(close_time) - start
    if dt > 0.0:
        keep = math.exp(-dt / window_us)
        span = -math.expm1(-dt / window_us) * window_us  # the decayed length of [start, close]
        rate[R_AMOUNT] = rate[R_AMOUNT] * keep + amount * span / dt
        rate[R_TIME] = rate[R_TIME] * keep + span
    else:
        rate[R_AMOUNT] += amount
    rate[R_LAST] = float(close_time)


@_jit
def _rate_per_bar(rate: F64, bars_per_day: float, fallback: float) -> float:
    """The amount one bar should hold at `bars_per_day`; `fallback` while no time has passed."""
    if rate[R_TIME] <= 0.0:
        return fallback
    return float(rate[R_AMOUNT] / rate[R_TIME] * DAY_US / bars_per_day)


@_jit
def _steer(rate: F64, ticks: int, et: float, eta: float, bars: int) -> float:
    """One Robbins-Monro step of log q towards bars of E[T] trades; the new q.

    The step is 1/bars (a running mean of the corrections) until it reaches eta: the
    first bars set q quickly, later ones follow slow changes.
    """
    step = max(eta, 1.0 / bars)
    r = ticks / et
    # Long bars count linearly (up to the cap), short ones by their log: the mean of the
    # step is 0 near E[r] = 1, so the bar count per day comes close to bars_per_day, while
    # one long bar (first exits are skewed to the right) cannot throw q far.
    g = min(r, CAP_FACTOR) - 1.0 if r >= 1.0 else math.log(r)
    lq = rate[R_LOGQ] - 0.5 * step * g
    lq = min(max(lq, -LOG_Q_MAX), LOG_Q_MAX)
    rate[R_LOGQ] = lq
    return math.exp(lq)


@_jit
def standard_bars(
    price: F64,
    qty: F64,
    side: I8,
    time: I64,
    trade_id: I64,
    metric: int,
    threshold: F64,
    fs: F64,
    is_: I64,
    bars_per_day: float,
    window_us: float,
    first_ticks: float,
    rate: F64,
) -> tuple[F64, I64, int]:
    """Tick, volume or dollar bars (AFML ch. 2.3.1; mlfinlab 0.12 standard bars).

    A bar closes on the trade at which its cumulative metric (ticks, volume, or dollar
    value p·v) reaches the threshold (>=); that trade belongs to the closing bar and the
    overshoot is not split. `threshold` holds one value (constant) or one per trade: the
    threshold in force at that trade's time (the caller looks it up from the past only),
    compared with the open bar's cumulative metric at each of its trades.

    Target rate (`bars_per_day` > 0): the threshold is the metric's trailing amount per
    day / bars_per_day (module docstring), set at each close; `threshold` is not used.
    The first bar, before any rate is known, closes after `first_ticks` trades.

    State: `fs` (N_BAR_F floats) and `is_` (N_BAR_I ints) hold the open bar; `rate`
    (N_RATE) the trailing rate.
    """
    n = price.shape[0]
    out_f, out_i = _new_output(n)
    nb = 0
    by_rate = bars_per_day > 0.0
    rate_thr = _rate_per_bar(rate, bars_per_day, np.nan) if by_rate else np.nan
    const_thr = threshold.shape[0] == 1
    o, h, lo = fs[F_OPEN], fs[F_HIGH], fs[F_LOW]
    vol, buy, sell, dol = fs[F_VOL], fs[F_BUY], fs[F_SELL], fs[F_DOLLAR]
    cnt, t0, id0 = is_[I_N], is_[I_OPEN_TIME], is_[I_FIRST_ID]
    for i in range(n):
        p = price[i]
        v = qty[i]
        b = side[i]
        if cnt == 0:
            o = p
            h = p
            lo = p
            t0 = time[i]
            id0 = trade_id[i]
        else:
            h = max(h, p)
            lo = min(lo, p)
        cnt += 1
        vol += v
        dol += p * v
        if b > 0:
            buy += v
        elif b < 0:
            sell += v
        if metric == M_TICK:
            cum = float(cnt)
        elif metric == M_VOLUME:
            cum = vol
        else:
            cum = dol
        if not by_rate:
            thr = threshold[0] if const_thr else threshold[i]
            close = cum >= thr
        elif math.isnan(rate_thr):  # the first bar: no rate known yet
            thr = np.nan
            close = cnt >= first_ticks
        else:
            thr = rate_thr
            close = cum >= thr
        if close:
            out_f[O_OPEN, nb] = o
            out_f[O_HIGH, nb] = h
            out_f[O_LOW, nb] = lo
            out_f[O_CLOSE, nb] = p
            out_f[O_VOLUME, nb] = vol
            out_f[O_BUY, nb] = buy
            out_f[O_SELL, nb] = sell
            out_f[O_DOLLAR, nb] = dol
            out_f[O_THRESHOLD, nb] = thr
            out_i[O_OPEN_TIME, nb] = t0
            out_i[O_CLOSE_TIME, nb] = time[i]
            out_i[O_TICKS, nb] = cnt
            out_i[O_FIRST_ID, nb] = id0
            out_i[O_LAST_ID, nb] = trade_id[i]
            out_i[O_CAPPED, nb] = 0
            nb += 1
            if by_rate:
                _rate_close(rate, t0, time[i], cum, window_us)
                rate_thr = _rate_per_bar(rate, bars_per_day, np.nan)
            cnt = 0
            vol = 0.0
            buy = 0.0
            sell = 0.0
            dol = 0.0
    fs[F_OPEN], fs[F_HIGH], fs[F_LOW] = o, h, lo
    fs[F_VOL], fs[F_BUY], fs[F_SELL], fs[F_DOLLAR] = vol, buy, sell, dol
    is_[I_N], is_[I_OPEN_TIME], is_[I_FIRST_ID] = cnt, t0, id0
    return out_f, out_i, nb


@_jit
def imbalance_bars(
    price: F64,
    qty: F64,
    side: I8,
    time: I64,
    trade_id: I64,
    metric: int,
    ema: bool,
    exact: bool,
    num_prev_bars: int,
    et_min: float,
    et_max: float,
    min_ticks: int,
    max_ticks: int,
    fs: F64,
    is_: I64,
    ring: F64,
    lens: F64,
    bars_per_day: float,
    window_us: float,
    rate: F64,
) -> tuple[F64, I64, int]:
    """Tick/volume/dollar imbalance bars, EMA or constant E[T] (AFML ch. 2.3.2.1-2).

    Semantics of bars-spec.md (mlfinlab 0.12): per trade x = b, b·v or b·v·p; theta += x;
    x joins the history (`ring`, its length W = expected_imbalance_window); while E[x] is
    NaN it is re-evaluated (warm-up, see the module docstring); the bar closes when E[x]
    is not NaN and |theta| > E[T]·|E[x]| (strictly). On close the bar's length joins
    `lens` (the last num_prev_bars lengths), E[T] becomes their EWMA (span
    num_prev_bars) clipped to [et_min, et_max] when `ema` (else E[T] stays E0), E[x] is
    re-evaluated (NaN if the history is shorter than E[T]), theta and the bar reset.

    Guards (production; 0 disables them): no close while the bar has fewer than
    `min_ticks` trades; a forced close once it has `max_ticks`, whatever theta (also
    during warm-up), so bar length is bounded even when E[T]·|E[x]| explodes.

    `exact` selects E[x] recomputed in O(W) like the reference, otherwise the O(1)
    running sum (module docstring). The threshold recorded per bar is E[T]·|E[x]| at
    the closing trade (NaN for a bar forced closed during warm-up).

    Target rate (`bars_per_day` > 0, running EWMA only): E[T] from the trailing trade
    rate, threshold q·sqrt(E[T]²·E[x]² + E[T]·Var[x]), warm-up until min(E[T], W) values,
    cap at CAP_FACTOR·E[T] (module docstring).

    State: `fs` (N_IMB_F), `is_` (N_IMB_I), `ring` (W values), `lens` (num_prev_bars),
    `rate` (N_RATE).
    """
    n = price.shape[0]
    out_f, out_i = _new_output(n)
    nb = 0
    window = ring.shape[0]
    d = 1.0 - 2.0 / (window + 1.0)
    d_w = d**window
    o, h, lo = fs[F_OPEN], fs[F_HIGH], fs[F_LOW]
    vol, buy, sell, dol = fs[F_VOL], fs[F_BUY], fs[F_SELL], fs[F_DOLLAR]
    theta, et, ex, s, z = fs[F_THETA], fs[F_ET], fs[F_EX], fs[F_S], fs[F_Z]
    cnt, t0, id0 = is_[I_N], is_[I_OPEN_TIME], is_[I_FIRST_ID]
    hist, pos, nlen = is_[I_H], is_[I_POS], is_[I_NLEN]
    warming = math.isnan(ex)
    k = lens.shape[0]
    lpos = nlen % k
    by_rate = bars_per_day > 0.0
    eta = 2.0 / (num_prev_bars + 1.0)
    s2 = rate[R_S2]
    qf = math.exp(rate[R_LOGQ])
    limit = _limit(max_ticks, by_rate, et)
    thr = rate[R_THR] if by_rate else et * abs(ex)
    for i in range(n):
        p = price[i]
        v = qty[i]
        b = side[i]
        if cnt == 0:
            o = p
            h = p
            lo = p
            t0 = time[i]
            id0 = trade_id[i]
        else:
            h = max(h, p)
            lo = min(lo, p)
        cnt += 1
        vol += v
        pv = p * v
        dol += pv
        if b > 0:
            buy += v
        elif b < 0:
            sell += v
        if metric == M_TICK:
            x = float(b)
        elif metric == M_VOLUME:
            x = b * v
        else:
            x = b * pv
        theta += x
        if not exact:
            # O(1) window update: the oldest value (weight d^W after this step) leaves.
            if hist >= window:
                old = ring[pos]
                s = s * d + x - d_w * old
                if by_rate:
                    s2 = s2 * d + x * x - d_w * old * old
            else:
                s = s * d + x
                z = z * d + 1.0
                if by_rate:
                    s2 = s2 * d + x * x
        ring[pos] = x
        pos += 1
        if pos == window:
            pos = 0
        hist += 1
        if warming:
            ex = _expected(ring, pos, hist, min(et, window) if by_rate else et, True, exact, s, z)
            warming = math.isnan(ex)
            thr = _imbalance_threshold(et, ex, s, s2, z, qf, by_rate)
        close = cnt >= min_ticks and not warming and abs(theta) > thr
        capped = not close and cnt >= limit
        if close or capped:
            out_f[O_OPEN, nb] = o
            out_f[O_HIGH, nb] = h
            out_f[O_LOW, nb] = lo
            out_f[O_CLOSE, nb] = p
            out_f[O_VOLUME, nb] = vol
            out_f[O_BUY, nb] = buy
            out_f[O_SELL, nb] = sell
            out_f[O_DOLLAR, nb] = dol
            out_f[O_THRESHOLD, nb] = thr
            out_i[O_OPEN_TIME, nb] = t0
            out_i[O_CLOSE_TIME, nb] = time[i]
            out_i[O_TICKS, nb] = cnt
            out_i[O_FIRST_ID, nb] = id0
            out_i[O_LAST_ID, nb] = trade_id[i]
            out_i[O_CAPPED, nb] = capped
            nb += 1
            # lpos tracks nlen % k without a division per bar (it shows in the collapse regime).
            lens[lpos] = cnt
            lpos += 1
            if lpos == k:
                lpos = 0
            nlen += 1
            if by_rate:
                qf = _steer(rate, cnt, et, eta, nlen)
                _rate_close(rate, t0, time[i], float(cnt), window_us)
                et = min(max(_rate_per_bar(rate, bars_per_day, et), et_min), et_max)
                limit = _limit(max_ticks, by_rate, et)
            elif ema:
                et = _next_et(lens, lpos, nlen, num_prev_bars, et_min, et_max)
            ex = _expected(ring, pos, hist, min(et, window) if by_rate else et, True, exact, s, z)
            warming = math.isnan(ex)
            thr = _imbalance_threshold(et, ex, s, s2, z, qf, by_rate)
            theta = 0.0
            cnt = 0
            vol = 0.0
            buy = 0.0
            sell = 0.0
            dol = 0.0
    fs[F_OPEN], fs[F_HIGH], fs[F_LOW] = o, h, lo
    fs[F_VOL], fs[F_BUY], fs[F_SELL], fs[F_DOLLAR] = vol, buy, sell, dol
    fs[F_THETA], fs[F_ET], fs[F_EX], fs[F_S], fs[F_Z] = theta, et, ex, s, z
    rate[R_S2] = s2
    rate[R_THR] = thr
    is_[I_N], is_[I_OPEN_TIME], is_[I_FIRST_ID] = cnt, t0, id0
    is_[I_H], is_[I_POS], is_[I_NLEN] = hist, pos, nlen
    return out_f, out_i, nb


@_jit
def _limit(max_ticks: int, by_rate: bool, et: float) -> float:
    """The trade count at which a bar is capped: max_ticks, CAP_FACTOR·E[T] in target-rate mode, or never."""
    lim = float(max_ticks) if max_ticks > 0 else math.inf
    if by_rate:
        lim = min(lim, CAP_FACTOR * et)
    return lim


@_jit
def _imbalance_threshold(et: float, ex: float, s: float, s2: float, z: float, qf: float, by_rate: bool) -> float:
    """The book's E[T]·|E[x]|, or in target-rate mode q·sqrt(E[T]²·E[x]² + E[T]·Var[x])."""
    if not by_rate:
        return et * abs(ex)
    var = max(s2 / z - (s / z) ** 2, 0.0) if z > 0.0 else np.nan
    return qf * math.sqrt(et * et * ex * ex + et * var)


@_jit
def run_bars(
    price: F64,
    qty: F64,
    side: I8,
    time: I64,
    trade_id: I64,
    metric: int,
    ema: bool,
    exact: bool,
    num_prev_bars: int,
    et_min: float,
    et_max: float,
    min_ticks: int,
    max_ticks: int,
    fs: F64,
    is_: I64,
    ring_buy: F64,
    ring_sell: F64,
    lens: F64,
    shares: F64,
    bars_per_day: float,
    window_us: float,
    rate: F64,
) -> tuple[F64, I64, int]:
    """Tick/volume/dollar run bars, EMA or constant E[T] (AFML ch. 2.3.2.3; mlfinlab 0.12).

    theta_buy / theta_sell are the sums of the positive x / of |negative x| within the bar
    (sums, not consecutive runs, as in the reference); the positive values join the buy
    history, the others the sell history (x = 0 joins neither). The bar closes when
    max(theta_buy, theta_sell) > E[T]·max(P·E[x_buy], (1-P)·E[x_sell]) and that
    threshold is not NaN. P is the EWMA (span num_prev_bars) of the per-bar share of buy
    ticks; during warm-up, as in the reference, P is the open bar's buy share at the
    trade at which both expectations become defined (both histories hold >= E[T]
    values). After a close E[x_buy], E[x_sell] are recomputed over min(len, W) values
    with no warm-up length check (reference), NaN only for an empty history.

    Guards, `exact`, threshold column and chunking: as in `imbalance_bars`. Target rate
    (`bars_per_day` > 0): E[T] from the trailing trade rate, threshold multiplied by q,
    warm-up until both histories hold min(E[T], W) values, cap at CAP_FACTOR·E[T].
    State: `fs` (N_RUN_F), `is_` (N_RUN_I), `ring_buy`/`ring_sell` (W values each),
    `lens`/`shares` (num_prev_bars values each), `rate` (N_RATE).
    """
    n = price.shape[0]
    out_f, out_i = _new_output(n)
    nb = 0
    window = ring_buy.shape[0]
    d = 1.0 - 2.0 / (window + 1.0)
    d_w = d**window
    o, h, lo = fs[F_OPEN], fs[F_HIGH], fs[F_LOW]
    vol, buy, sell, dol = fs[F_VOL], fs[F_BUY], fs[F_SELL], fs[F_DOLLAR]
    tb, ts, et, exb, exs, pb = fs[F_TB], fs[F_TS], fs[F_RET], fs[F_EXB], fs[F_EXS], fs[F_P]
    sb, zb, ss, zs = fs[F_SB], fs[F_ZB], fs[F_SS], fs[F_ZS]
    cnt, t0, id0 = is_[I_N], is_[I_OPEN_TIME], is_[I_FIRST_ID]
    hb, hs, posb, poss, nlen, nbuy = is_[I_HB], is_[I_HS], is_[I_POSB], is_[I_POSS], is_[I_RNLEN], is_[I_NBUY]
    warming = math.isnan(exb) or math.isnan(exs)
    k = lens.shape[0]
    lpos = nlen % k
    by_rate = bars_per_day > 0.0
    eta = 2.0 / (num_prev_bars + 1.0)
    qf = math.exp(rate[R_LOGQ]) if by_rate else 1.0
    limit = _limit(max_ticks, by_rate, et)
    etw = min(et, window) if by_rate else et
    for i in range(n):
        p = price[i]
        v = qty[i]
        b = side[i]
        if cnt == 0:
            o = p
            h = p
            lo = p
            t0 = time[i]
            id0 = trade_id[i]
        else:
            h = max(h, p)
            lo = min(lo, p)
        cnt += 1
        vol += v
        pv = p * v
        dol += pv
        if b > 0:
            buy += v
        elif b < 0:
            sell += v
        if metric == M_TICK:
            x = float(b)
        elif metric == M_VOLUME:
            x = b * v
        else:
            x = b * pv
        if x > 0:
            tb += x
            nbuy += 1
            if not exact:
                if hb >= window:
                    sb = sb * d + x - d_w * ring_buy[posb]
                else:
                    sb = sb * d + x
                    zb = zb * d + 1.0
            ring_buy[posb] = x
            posb += 1
            if posb == window:
                posb = 0
            hb += 1
        elif x < 0:
            ax = -x
            ts += ax
            if not exact:
                if hs >= window:
                    ss = ss * d + ax - d_w * ring_sell[poss]
                else:
                    ss = ss * d + ax
                    zs = zs * d + 1.0
            ring_sell[poss] = ax
            poss += 1
            if poss == window:
                poss = 0
            hs += 1
        if warming and hb >= etw and hs >= etw:
            # Only the moment both become defined matters: before it P is NaN and no bar
            # can close, so computing them here alone is the reference's result.
            exb = _expected(ring_buy, posb, hb, etw, True, exact, sb, zb)
            exs = _expected(ring_sell, poss, hs, etw, True, exact, ss, zs)
            warming = math.isnan(exb) or math.isnan(exs)
            if not warming:
                pb = nbuy / cnt
        a = exb * pb
        c = exs * (1.0 - pb)
        # Python's max(a, c) as in the reference: a unless c > a (matters for NaN only).
        mp = c if c > a else a
        mt = ts if ts > tb else tb
        thr = et * mp * qf  # qf is 1.0 outside target-rate mode: the product is exact
        close = cnt >= min_ticks and not math.isnan(mp) and mt > thr
        capped = not close and cnt >= limit
        if close or capped:
            out_f[O_OPEN, nb] = o
            out_f[O_HIGH, nb] = h
            out_f[O_LOW, nb] = lo
            out_f[O_CLOSE, nb] = p
            out_f[O_VOLUME, nb] = vol
            out_f[O_BUY, nb] = buy
            out_f[O_SELL, nb] = sell
            out_f[O_DOLLAR, nb] = dol
            out_f[O_THRESHOLD, nb] = thr
            out_i[O_OPEN_TIME, nb] = t0
            out_i[O_CLOSE_TIME, nb] = time[i]
            out_i[O_TICKS, nb] = cnt
            out_i[O_FIRST_ID, nb] = id0
            out_i[O_LAST_ID, nb] = trade_id[i]
            out_i[O_CAPPED, nb] = capped
            nb += 1
            lens[lpos] = cnt
            shares[lpos] = nbuy / cnt
            lpos += 1
            if lpos == k:
                lpos = 0
            nlen += 1
            if by_rate:
                qf = _steer(rate, cnt, et, eta, nlen)
                _rate_close(rate, t0, time[i], float(cnt), window_us)
                et = min(max(_rate_per_bar(rate, bars_per_day, et), et_min), et_max)
                limit = _limit(max_ticks, by_rate, et)
                etw = min(et, window)
            elif ema:
                et = _next_et(lens, lpos, nlen, num_prev_bars, et_min, et_max)
            pb = _ewma_last(shares, lpos, min(nlen, k), float(num_prev_bars))
            exb = _expected(ring_buy, posb, hb, et, False, exact, sb, zb)
            exs = _expected(ring_sell, poss, hs, et, False, exact, ss, zs)
            warming = math.isnan(exb) or math.isnan(exs)
            tb = 0.0
            ts = 0.0
            nbuy = 0
            cnt = 0
            vol = 0.0
            buy = 0.0
            sell = 0.0
            dol = 0.0
    fs[F_OPEN], fs[F_HIGH], fs[F_LOW] = o, h, lo
    fs[F_VOL], fs[F_BUY], fs[F_SELL], fs[F_DOLLAR] = vol, buy, sell, dol
    fs[F_TB], fs[F_TS], fs[F_RET], fs[F_EXB], fs[F_EXS], fs[F_P] = tb, ts, et, exb, exs, pb
    fs[F_SB], fs[F_ZB], fs[F_SS], fs[F_ZS] = sb, zb, ss, zs
    is_[I_N], is_[I_OPEN_TIME], is_[I_FIRST_ID] = cnt, t0, id0
    is_[I_HB], is_[I_HS], is_[I_POSB], is_[I_POSS], is_[I_RNLEN], is_[I_NBUY] = hb, hs, posb, poss, nlen, nbuy
    return out_f, out_i, nb
