"""A straightforward pure-Python implementation of the bars of docs/bars-spec.md.

It is the test oracle for `tasks.features.bars_nb` (and the pure-Python baseline of the
benchmark): one pass over Python lists, the whole history kept, every expectation
recomputed from its definition. No ring buffers, no running sums, no chunking.

Semantics (the same as the kernels'): the reference's (mlfinlab 0.12), with the warm-up
re-evaluated at every trade while E[x] is NaN, plus the production guards
(min_ticks, max_ticks, E[T] clamp) and the production E[x] ("running": fixed span W,
computed here directly as a weighted sum over the last min(H, W) values).

Target-rate mode (`bars_per_day` > 0) follows tasks.features.bars_nb's module docstring: the
trailing rate, the threshold with its noise term (Var[x] from the same fixed-span mean of
x²), the bounded step on log q and the cap, each computed here from the whole history.

Arithmetic follows the same formulas in the same order as the kernels, so the exact
mode is expected to agree bit for bit; the running mode only up to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tasks.features.bars import BarSpec

Bar = dict[str, Any]


def ewma_last(values: Sequence[float], span: float) -> float:
    """Last value of the adjusted EWMA (pandas ewm(span, adjust=True)); NaN if empty."""
    if not values:
        return math.nan
    d = 1.0 - 2.0 / (span + 1.0)
    acc = float(values[0])
    weight = 1.0
    pw = 1.0
    for x in values[1:]:
        pw *= d
        weight += pw
        acc = acc * d + float(x)
    return acc / weight


def fixed_span_mean(values: Sequence[float], window: int) -> float:
    """sum_k (1-a)^k x[n-1-k] / sum_k (1-a)^k over the last min(n, W) values, a = 2/(W+1)."""
    w = min(len(values), window)
    if w == 0:
        return math.nan
    d = 1.0 - 2.0 / (window + 1.0)
    num = 0.0
    den = 0.0
    pw = 1.0
    for k in range(w):
        num += pw * values[-1 - k]
        den += pw
        pw *= d
    return num / den


def tick_rule(prices: Sequence[float]) -> list[int]:
    """b_t = sign(p_t - p_{t-1}) if the price moved, else b_{t-1}; b starts at 0."""
    out = []
    b = 0
    prev = None
    for p in prices:
        if prev is not None and p != prev:
            b = 1 if p > prev else -1
        out.append(b)
        prev = p
    return out


def _expected(hist: list[float], et: float, warm: bool, spec: BarSpec) -> float:
    if warm and len(hist) < et:
        return math.nan
    w = min(len(hist), spec.expected_imbalance_window)
    if w == 0:
        return math.nan
    if spec.ewma == "exact":
        return ewma_last(hist[-w:], float(w))
    return fixed_span_mean(hist, spec.expected_imbalance_window)


DAY_US = 86_400_000_000.0
CAP_FACTOR = 10.0
LOG_Q_MAX = 3.5


class _Rate:
    """The trailing activity rate and log q of target-rate mode, kept as plain numbers."""

    def __init__(self, spec: BarSpec) -> None:
        self.window = spec.rate_window_days * DAY_US
        self.per_day = spec.bars_per_day
        self.amount = self.time = self.log_q = 0.0
        self.last: float | None = None
        self.bars = 0

    def close(self, open_time: int, close_time: int, amount: float) -> None:
        start = float(open_time) if self.last is None else self.last
        dt = float(close_time) - start
        if dt > 0:
            keep = math.exp(-dt / self.window)
            span = -math.expm1(-dt / self.window) * self.window
            self.amount = self.amount * keep + amount * span / dt
            self.time = self.time * keep + span
        else:
            self.amount += amount
        self.last = float(close_time)

    def per_bar(self, fallback: float) -> float:
        return fallback if self.time <= 0 else self.amount / self.time * DAY_US / self.per_day

    def steer(self, ticks: int, et: float, eta: float) -> float:
        self.bars += 1
        r = ticks / et
        g = min(r, CAP_FACTOR) - 1.0 if r >= 1.0 else math.log(r)
        self.log_q = min(max(self.log_q - 0.5 * max(eta, 1.0 / self.bars) * g, -LOG_Q_MAX), LOG_Q_MAX)
        return math.exp(self.log_q)


def bars(
    spec: BarSpec,
    time: Sequence[int],
    price: Sequence[float],
    qty: Sequence[float],
    is_buyer_maker: Sequence[bool] | None = None,
    trade_id: Sequence[int] | None = None,
    threshold: Sequence[float] | None = None,
) -> list[Bar]:
    """All closed bars of the stream, as dicts with BARS_SCHEMA's names (times as ints)."""
    n = len(price)
    if spec.side == "tick_rule":
        sides = tick_rule(price)
    else:
        assert is_buyer_maker is not None
        sides = [-1 if m else 1 for m in is_buyer_maker]
    ids = list(range(n)) if trade_id is None else list(trade_id)
    k = spec.num_prev_bars
    out: list[Bar] = []
    bar: Bar | None = None
    lens: list[int] = []
    shares: list[float] = []
    hist: list[float] = []
    hist_buy: list[float] = []
    hist_sell: list[float] = []
    et = spec.exp_num_ticks_init
    ex = ex_buy = ex_sell = p_buy = math.nan
    theta = theta_buy = theta_sell = 0.0
    n_buy = 0
    by_rate = spec.bars_per_day > 0
    rate = _Rate(spec)
    q = 1.0
    w = spec.expected_imbalance_window
    eta = 2.0 / (spec.num_prev_bars + 1.0)
    squares: list[float] = []

    def imbalance_threshold() -> float:
        if not by_rate:
            return et * abs(ex)
        var = max(fixed_span_mean(squares, w) - fixed_span_mean(hist, w) ** 2, 0.0)
        return q * math.sqrt(et * et * ex * ex + et * var)

    for i in range(n):
        p, v, b = float(price[i]), float(qty[i]), sides[i]
        if bar is None:
            bar = {
                "open_time": time[i],
                "open": p,
                "high": p,
                "low": p,
                "volume": 0.0,
                "buy_volume": 0.0,
                "sell_volume": 0.0,
                "dollar_value": 0.0,
                "tick_count": 0,
                "first_trade_id": ids[i],
            }
        bar["high"] = max(bar["high"], p)
        bar["low"] = min(bar["low"], p)
        bar["tick_count"] += 1
        bar["volume"] += v
        pv = p * v
        bar["dollar_value"] += pv
        if b > 0:
            bar["buy_volume"] += v
        elif b < 0:
            bar["sell_volume"] += v
        x = float(b) if spec.metric == "tick" else (b * v if spec.metric == "volume" else b * pv)
        cnt = bar["tick_count"]

        etw = min(et, w) if by_rate else et
        if spec.kind == "standard":
            cum = {"tick": float(cnt), "volume": bar["volume"], "dollar": bar["dollar_value"]}[spec.metric]
            if not by_rate:
                thr = float(spec.threshold) if threshold is None else float(threshold[i])  # type: ignore[arg-type]
                close = cum >= thr
            elif rate.time <= 0:  # the first bar, before any rate is known
                thr = math.nan
                close = cnt >= spec.exp_num_ticks_init
            else:
                thr = rate.per_bar(math.nan)
                close = cum >= thr
        elif spec.kind == "imbalance":
            theta += x
            hist.append(x)
            squares.append(x * x)
            if math.isnan(ex):
                ex = _expected(hist, etw, True, spec)
                thr = imbalance_threshold()
            close = cnt >= spec.min_ticks and not math.isnan(ex) and abs(theta) > thr
        else:
            if x > 0:
                theta_buy += x
                n_buy += 1
                hist_buy.append(x)
            elif x < 0:
                theta_sell += -x
                hist_sell.append(-x)
            warming = math.isnan(ex_buy) or math.isnan(ex_sell)
            if warming and len(hist_buy) >= etw and len(hist_sell) >= etw:
                # Both are (re)computed at the trade where both histories are long enough;
                # before it P is NaN, so earlier values would not matter (reference).
                ex_buy = _expected(hist_buy, etw, True, spec)
                ex_sell = _expected(hist_sell, etw, True, spec)
                if not (math.isnan(ex_buy) or math.isnan(ex_sell)):
                    p_buy = n_buy / cnt
            mp = max(ex_buy * p_buy, ex_sell * (1.0 - p_buy))  # Python's max, as the reference
            thr = et * mp * q
            close = cnt >= spec.min_ticks and not math.isnan(mp) and max(theta_buy, theta_sell) > thr
        capped = not close and spec.kind != "standard" and (
            (bool(spec.max_ticks) and cnt >= spec.max_ticks) or (by_rate and cnt >= CAP_FACTOR * et))

        if close or capped:
            bar.update(close_time=time[i], close=p, last_trade_id=ids[i], threshold=thr, capped=capped)
            out.append(bar)
            opened = bar["open_time"]
            bar = None
            if spec.kind == "standard":
                if by_rate:
                    rate.close(opened, time[i], cum)
                continue
            lens.append(cnt)
            if by_rate:
                q = rate.steer(cnt, et, eta)
                rate.close(opened, time[i], float(cnt))
                et = min(max(rate.per_bar(et), spec.exp_num_ticks_min), spec.exp_num_ticks_max)
            elif spec.ema:
                et = min(max(ewma_last(lens[-k:], float(k)), spec.exp_num_ticks_min), spec.exp_num_ticks_max)
            if spec.kind == "imbalance":
                ex = _expected(hist, min(et, w) if by_rate else et, True, spec)
                thr = imbalance_threshold()
                theta = 0.0
            else:
                shares.append(n_buy / cnt)
                p_buy = ewma_last(shares[-k:], float(k))
                ex_buy = _expected(hist_buy, et, False, spec)
                ex_sell = _expected(hist_sell, et, False, spec)
                theta_buy = theta_sell = 0.0
                n_buy = 0
    for b_ in out:
        b_["vwap"] = b_["dollar_value"] / b_["volume"] if b_["volume"] > 0 else math.nan
    return out
