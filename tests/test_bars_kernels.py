"""Bar kernels against the pure-Python oracle, chunk invariance, guards, state round trips."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.features import bars_nb
from tasks.features.bars import BARS_SCHEMA, BarSpec, BarState, process_chunk, process_chunk_arrays, threshold_at
from tests import bars_oracle

# Deterministic (CI-stable) and bounded: the whole file stays well under a minute.
FAST = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Mostly streams long enough for many bars, some tiny ones for the edges.
SIZES = st.one_of(st.integers(0, 5), st.integers(50, 400))

FLOAT_COLS = [f.name for f in BARS_SCHEMA if pa.types.is_floating(f.type)]


def make_trades(seed: int, n: int, regime: str, continuous: bool = False) -> dict[str, Any]:
    """A random-walk tape on a 0.25 tick grid (so the tick rule often sees no change)."""
    rng = np.random.default_rng(seed)
    if continuous:
        price = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
        qty = rng.exponential(1.0, n) + 1e-3
    else:
        price = 100.0 + 0.25 * np.cumsum(rng.choice([-1, 0, 0, 1], n))
        qty = rng.integers(1, 6, n).astype(np.float64)
    if regime == "balanced":
        ibm = rng.random(n) < 0.5
    elif regime == "one_sided":
        ibm = np.zeros(n, bool)
    elif regime == "skewed":
        ibm = rng.random(n) < 0.2
    else:  # runs of one side
        ibm = (np.cumsum(rng.random(n) < 0.1) % 2).astype(bool)
    time = 1_700_000_000_000_000 + np.cumsum(rng.integers(0, 1000, n))
    return {
        "time_us": time.astype(np.int64),
        "price": price,
        "qty": qty,
        "is_buyer_maker": ibm,
        "trade_id": np.arange(5_000, 5_000 + n, dtype=np.int64),
    }


@st.composite
def specs(draw: st.DrawFn, ewma: str | None = None) -> BarSpec:
    kind = draw(st.sampled_from(["standard", "imbalance", "run"]))
    metric = draw(st.sampled_from(["tick", "volume", "dollar"]))
    threshold = None
    if kind == "standard":
        base = draw(st.integers(1, 25))
        threshold = float(base) * {"tick": 1.0, "volume": 3.0, "dollar": 300.0}[metric]
    lo, hi = draw(st.sampled_from([(0.0, math.inf), (2.0, 30.0), (5.0, 8.0)]))
    min_ticks = draw(st.sampled_from([0, 0, 2, 5]))
    max_ticks = draw(st.sampled_from([0, 0, 10, 40]))
    return BarSpec(
        kind=kind,
        metric=metric,
        threshold=threshold,
        ema=draw(st.booleans()),
        num_prev_bars=draw(st.integers(1, 4)),
        expected_imbalance_window=draw(st.integers(1, 30)),
        exp_num_ticks_init=float(draw(st.integers(0, 40))),
        exp_num_ticks_min=lo,
        exp_num_ticks_max=hi,
        min_ticks=min_ticks,
        max_ticks=max(max_ticks, min_ticks) if max_ticks else 0,
        side=draw(st.sampled_from(["maker", "tick_rule"])),
        ewma=ewma or draw(st.sampled_from(["exact", "running"])),  # type: ignore[arg-type]
    )


def oracle_columns(spec: BarSpec, t: dict[str, Any], threshold: Any = None) -> dict[str, np.ndarray]:
    out = bars_oracle.bars(
        spec,
        t["time_us"].tolist(),
        t["price"].tolist(),
        t["qty"].tolist(),
        t["is_buyer_maker"].tolist(),
        t["trade_id"].tolist(),
        None if threshold is None else list(threshold),
    )
    return {
        f.name: np.array([b[f.name] for b in out], dtype=np.float64 if f.name in FLOAT_COLS else np.int64)
        for f in BARS_SCHEMA
    }


def run_one_pass(spec: BarSpec, t: dict[str, Any], **kw: Any) -> tuple[dict[str, np.ndarray], BarState]:
    return process_chunk_arrays(spec, BarState.initial(spec), **t, **kw)


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], exact: bool) -> None:
    assert got["tick_count"].shape == want["tick_count"].shape, (len(got["tick_count"]), len(want["tick_count"]))
    for name in BARS_SCHEMA.names:
        if exact or name not in FLOAT_COLS:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)


# ---- kernels vs oracle ---------------------------------------------------------------


@FAST
@given(spec=specs(ewma="exact"), seed=st.integers(0, 2**32 - 1), n=SIZES,
       regime=st.sampled_from(["balanced", "one_sided", "skewed", "runs"]))  # fmt: skip
def test_exact_mode_matches_oracle_bit_for_bit(spec: BarSpec, seed: int, n: int, regime: str) -> None:
    t = make_trades(seed, n, regime)
    got, state = run_one_pass(spec, t)
    want = oracle_columns(spec, t)
    assert_same(got, want, exact=True)
    # Every trade is in exactly one closed bar or in the open one.
    assert int(got["tick_count"].sum()) + state.open_bar_ticks == n
    if len(got["tick_count"]):
        assert np.all(got["first_trade_id"][1:] == got["last_trade_id"][:-1] + 1)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(spec=specs(ewma="running"), seed=st.integers(0, 2**32 - 1), n=SIZES,
       regime=st.sampled_from(["balanced", "skewed", "runs"]))  # fmt: skip
def test_running_ewma_matches_direct_weighted_sum(spec: BarSpec, seed: int, n: int, regime: str) -> None:
    # Continuous sizes and prices: the O(1) running sum and the oracle's direct sum differ
    # by rounding only, so no closing test sits on an exact tie.
    t = make_trades(seed, n, regime, continuous=True)
    got, _ = run_one_pass(spec, t)
    assert_same(got, oracle_columns(spec, t), exact=False)


def test_running_sum_stays_accurate_over_a_long_stream() -> None:
    # 200k trades through a W=50 window: drift of the running sum would show in E[x].
    spec = BarSpec("imbalance", "dollar", expected_imbalance_window=50, exp_num_ticks_init=50.0)
    t = make_trades(7, 200_000, "skewed", continuous=True)
    state = BarState.initial(spec)
    _, state = process_chunk_arrays(spec, state, **t)
    x = np.where(t["is_buyer_maker"], -1.0, 1.0) * t["price"] * t["qty"]
    direct = bars_oracle.fixed_span_mean(x[-50:].tolist(), 50)
    running = state.fs[bars_nb.F_S] / state.fs[bars_nb.F_Z]
    assert running == pytest.approx(direct, rel=1e-9)


# ---- chunking --------------------------------------------------------------------------


@FAST
@given(spec=specs(), seed=st.integers(0, 2**32 - 1), n=SIZES,
       cuts=st.lists(st.floats(0, 1), max_size=8), codec=st.sampled_from(["none", "bytes", "json"]))  # fmt: skip
def test_chunked_equals_one_pass(spec: BarSpec, seed: int, n: int, cuts: list[float], codec: str) -> None:
    t = make_trades(seed, n, "balanced" if seed % 2 else "runs")
    whole, whole_state = run_one_pass(spec, t)
    bounds = sorted({0, n, *(int(c * n) for c in cuts)})
    state = BarState.initial(spec)
    parts = []
    for a, b in itertools.pairwise(bounds):
        cols, state = process_chunk_arrays(spec, state, **{k: v[a:b] for k, v in t.items()})
        parts.append(cols)
        if codec == "bytes":
            state = BarState.from_bytes(state.to_bytes())
        elif codec == "json":
            state = BarState.from_json(state.to_json())
    got = {k: np.concatenate([p[k] for p in parts]) if parts else whole[k][:0] for k in whole}
    assert_same(got, whole, exact=True)
    np.testing.assert_array_equal(state.fs, whole_state.fs)
    np.testing.assert_array_equal(state.is_, whole_state.is_)
    for x, y in zip(state.buffers, whole_state.buffers, strict=True):
        np.testing.assert_array_equal(x, y)
    assert state.trades_seen == n and state.bars_emitted == len(whole["tick_count"])


def test_process_chunk_table_and_state_immutability() -> None:
    spec = BarSpec("imbalance", "dollar", exp_num_ticks_init=20.0, expected_imbalance_window=20, min_ticks=2)
    t = make_trades(3, 3_000, "skewed")
    state = BarState.initial(spec)
    before = state.to_bytes()
    table, new = process_chunk(spec, state, **t)
    assert state.to_bytes() == before  # the input state is not modified
    assert table.schema.equals(BARS_SCHEMA)
    assert table.num_rows > 10
    d = table.to_pydict()
    for row in range(table.num_rows):
        assert d["low"][row] <= min(d["open"][row], d["close"][row]) <= d["high"][row]
        assert d["open_time"][row] <= d["close_time"][row]
        assert d["buy_volume"][row] + d["sell_volume"][row] == pytest.approx(d["volume"][row])
        assert d["low"][row] <= d["vwap"][row] <= d["high"][row]
    # Same trades again from the returned state continue the stream, not restart it.
    table2, newer = process_chunk(spec, new, **t)
    assert newer.trades_seen == 6_000
    assert table2.column("first_trade_id")[0].as_py() >= table.column("last_trade_id")[-1].as_py() - 3_000


def test_state_rejects_other_spec() -> None:
    a = BarSpec("imbalance", "dollar")
    b = BarSpec("imbalance", "dollar", min_ticks=3)
    t = make_trades(0, 10, "balanced")
    with pytest.raises(ValueError, match="another BarSpec"):
        process_chunk(b, BarState.initial(a), **t)


# ---- tick rule -------------------------------------------------------------------------


def test_tick_rule_starts_at_zero_and_carries_across_chunks() -> None:
    prices = np.array([10.0, 10.0, 10.5, 10.5, 10.0, 10.0, 10.25, 10.25])
    want = [0, 0, 1, 1, -1, -1, 1, 1]
    assert bars_oracle.tick_rule(prices.tolist()) == want
    st_ = np.array([np.nan, 0.0])
    got = np.concatenate([bars_nb.tick_rule(prices[:3], st_), bars_nb.tick_rule(prices[3:4], st_),
                          bars_nb.tick_rule(prices[4:], st_)])  # fmt: skip
    assert got.tolist() == want


# ---- guards ----------------------------------------------------------------------------


def test_min_ticks_stops_collapse() -> None:
    # Balanced flow makes E[x] ~ 0, so with a small E0 every trade beats E[T]·|E[x]|:
    # bars of one trade (the collapse regime of bars-spec.md).
    t = make_trades(11, 20_000, "balanced", continuous=True)
    loose = BarSpec("imbalance", "dollar", exp_num_ticks_init=1.0, expected_imbalance_window=1000)
    cols, _ = run_one_pass(loose, t)
    assert np.median(cols["tick_count"]) == 1  # it does collapse without the guard
    guarded = BarSpec("imbalance", "dollar", exp_num_ticks_init=1.0, expected_imbalance_window=1000, min_ticks=7)
    cols, _ = run_one_pass(guarded, t)
    assert len(cols["tick_count"]) > 100
    assert cols["tick_count"].min() >= 7
    for kind in ("run",):
        spec = BarSpec(kind, "volume", exp_num_ticks_init=1.0, expected_imbalance_window=1000, min_ticks=7)
        cols, _ = run_one_pass(spec, t)
        assert len(cols["tick_count"]) > 100 and cols["tick_count"].min() >= 7


def test_max_ticks_stops_explosion() -> None:
    # One-sided warm-up fixes a large |E[x]|; then balanced flow: |theta| grows like
    # sqrt(n) against E[T]·|E[x]|, so the bar never closes (explosion).
    a = make_trades(5, 200, "one_sided")
    b = make_trades(6, 30_000, "balanced")
    t = {k: np.concatenate([a[k], b[k]]) for k in a}
    t["trade_id"] = np.arange(len(t["price"]), dtype=np.int64)
    loose = BarSpec("imbalance", "tick", exp_num_ticks_init=50.0, expected_imbalance_window=50)
    cols, state = run_one_pass(loose, t)
    assert state.open_bar_ticks > 10_000  # it does explode without the guard
    guarded = BarSpec("imbalance", "tick", exp_num_ticks_init=50.0, expected_imbalance_window=50, max_ticks=500)
    cols, state = run_one_pass(guarded, t)
    assert cols["tick_count"].max() <= 500
    assert state.open_bar_ticks < 500
    assert int(cols["tick_count"].sum()) + state.open_bar_ticks == len(t["price"])
    assert len(cols["tick_count"]) >= 30_000 // 500
    # E[T] clamp: however long the forced bars, E[T] stays within its bounds.
    clamped = BarSpec("imbalance", "tick", exp_num_ticks_init=50.0, expected_imbalance_window=50, max_ticks=500,
                      exp_num_ticks_min=20.0, exp_num_ticks_max=100.0)  # fmt: skip
    _, state = run_one_pass(clamped, t)
    assert 20.0 <= state.fs[bars_nb.F_ET] <= 100.0


# ---- standard bars with a time-varying threshold ----------------------------------------


def test_time_varying_threshold_uses_only_the_past() -> None:
    t = make_trades(2, 3_000, "balanced")
    change = np.array([t["time_us"][0], t["time_us"][1000], t["time_us"][2000] + 1])
    values = np.array([50.0, 10.0, 200.0])
    thr = threshold_at(t["time_us"], change, values)
    assert thr[999] == 50.0 and thr[1000] == 10.0 and thr[2000] == 10.0  # never the future value
    spec = BarSpec("standard", "volume")
    got, _ = run_one_pass(spec, t, threshold=thr)
    assert_same(got, oracle_columns(spec, t, thr), exact=True)
    assert set(np.unique(got["threshold"])) <= {50.0, 10.0, 200.0}
    assert np.all(got["volume"] >= got["threshold"])
    with pytest.raises(ValueError, match="precedes"):
        threshold_at(t["time_us"], change + 5, values)


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        BarSpec("imbalance", "dollar", min_ticks=10, max_ticks=5)
    with pytest.raises(ValueError):
        BarSpec("imbalance", "notional")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        run_one_pass(BarSpec("standard", "tick"), make_trades(0, 10, "balanced"))
    assert BarSpec.from_json(BarSpec("run", "tick", max_ticks=9).to_json()) == BarSpec("run", "tick", max_ticks=9)
