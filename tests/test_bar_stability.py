"""The default bars sample steadily (issue 13): target-rate mode of every production kind.

- against the pure-Python oracle (tests/bars_oracle.py), which computes the same rules
  from the whole history;
- chunk invariance and an incremental run (state serialised between days) equal to one
  pass, with the defaults;
- stability rules on generated days (tests/bar_streams.py): a stationary week (warm-up
  day included), a burst, persistent selling, a quiet week; caps rarely fire;
- the book's E[T] (bars_per_day=0) on the same week does not: the reason for the mode.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from tasks.features.bars import BARS_SCHEMA, BarSpec, BarState, process_chunk_arrays
from tasks.features.incremental import PRESETS
from tests import bars_oracle
from tests.bar_streams import REGIMES, Day, Stream, bars_by_day, make_stream, scaled

KINDS = sorted(PRESETS)
SCALE = 0.1  # 111,462 trades a day: E[T] about 2,200 at 50 bars a day


def columns(spec: BarSpec, s: Stream, cuts: list[int] | None = None) -> tuple[dict[str, np.ndarray], BarState]:
    """All bars of `s`, fed in pieces cut at `cuts` (one pass if None)."""
    edges = [0, *(cuts or []), len(s)]
    state = BarState.initial(spec)
    parts = []
    for a, b in itertools.pairwise(edges):
        cols, state = process_chunk_arrays(spec, state, s.time_us[a:b], s.price[a:b], s.qty[a:b],
                                           s.is_buyer_maker[a:b], s.trade_id[a:b])
        parts.append(cols)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, state


def per_day(spec: BarSpec, s: Stream, days: int) -> tuple[np.ndarray, float]:
    cols, _ = columns(spec, s)
    stats = bars_by_day(cols["close_time"], cols["tick_count"], cols["capped"], days)
    return np.array([d.bars for d in stats]), float(cols["capped"].mean())


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a["tick_count"].shape == b["tick_count"].shape
    for name in BARS_SCHEMA.names:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # NaN equals NaN here


@pytest.mark.parametrize("kind", KINDS)
def test_target_rate_mode_matches_the_oracle(kind: str) -> None:
    # Small: the oracle recomputes every expectation from the whole history.
    spec = replace(PRESETS[kind], expected_imbalance_window=300, exp_num_ticks_init=100.0, bars_per_day=200.0)
    s = make_stream(scaled([Day(), Day(sell_flow=0.3), Day(4 * 1_114_623)], 0.004), seed=5)
    got, _ = columns(spec, s)
    want = bars_oracle.bars(spec, s.time_us.tolist(), s.price.tolist(), s.qty.tolist(), s.is_buyer_maker.tolist(),
                            s.trade_id.tolist())
    assert len(got["tick_count"]) == len(want) > 50
    for name in BARS_SCHEMA.names:
        expected = np.array([b[name] for b in want])
        if got[name].dtype.kind == "f":
            np.testing.assert_allclose(got[name], expected, rtol=1e-9, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], expected, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_do_not_depend_on_chunks_or_on_resuming_from_a_saved_state(kind: str) -> None:
    spec = PRESETS[kind]
    s = make_stream(scaled([Day()] * 3, 0.05), seed=11)
    whole, end = columns(spec, s)
    rng = np.random.default_rng(3)
    cuts = sorted(set(rng.integers(1, len(s), 40).tolist()))
    chunked, _ = columns(spec, s, cuts)
    same(chunked, whole)
    # Day by day, the state serialised and restored between days (what the features do).
    day_edges = np.searchsorted(s.time_us, s.time_us[0] + np.arange(1, 3) * 86_400_000_000).tolist()
    state = BarState.initial(spec)
    parts = []
    for a, b in zip([0, *day_edges], [*day_edges, len(s)], strict=True):
        cols, state = process_chunk_arrays(spec, BarState.from_bytes(state.to_bytes()), s.time_us[a:b], s.price[a:b],
                                           s.qty[a:b], s.is_buyer_maker[a:b], s.trade_id[a:b])
        parts.append(cols)
    same({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, whole)
    assert state.to_bytes() == end.to_bytes()


@pytest.mark.parametrize("kind", KINDS)
def test_a_stationary_week_gives_steady_bars_from_the_first_day(kind: str) -> None:
    s = make_stream(scaled([Day()] * 7, SCALE), seed=1)
    bars, capped = per_day(PRESETS[kind], s, 7)
    assert bars.max() <= 2 * bars.min(), bars
    assert bars.min() >= 10 and bars.max() <= 1000, bars
    assert capped <= 0.10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_regime_changes_move_the_bar_count_the_right_way_without_collapse(kind: str, regime: str) -> None:
    days = REGIMES[regime]
    spec = PRESETS[kind]
    bars, capped = per_day(spec, make_stream(scaled(days, SCALE), seed=2), len(days))
    before = bars[:3].mean()
    assert bars.min() >= 5 and bars.max() <= 500, bars  # within target/10 .. target*10
    assert capped <= 0.10
    if regime.startswith("burst"):
        assert bars[3] > 1.3 * before, bars
    elif regime.startswith("quiet"):
        assert bars[3] < 0.8 * before, bars
        assert bars[-1] > 0.5 * before, bars  # and it recovers towards the target
    elif spec.kind == "imbalance":  # an imbalance the expectation has not yet learnt closes bars sooner
        assert bars[3] > before, bars
    else:
        assert 0.5 * before <= bars[3] <= 2 * before, bars


def test_the_books_expected_length_on_the_same_week_collapses_or_explodes() -> None:
    # The presets of the previous release: E[T] the EWMA of past bar lengths, clamped and guarded.
    old = BarSpec("imbalance", "dollar", exp_num_ticks_init=2_000.0, exp_num_ticks_min=100.0,
                  exp_num_ticks_max=50_000.0, min_ticks=10, max_ticks=200_000)
    bars, _ = per_day(old, make_stream(scaled([Day()] * 7, SCALE), seed=1), 7)
    new, _ = per_day(PRESETS["ema_dollar_imbalance"], make_stream(scaled([Day()] * 7, SCALE), seed=1), 7)
    # Collapsed (thousands of bars of about min_ticks trades), exploded (a handful), or swinging.
    assert bars.max() > 1000 or bars.min() < 10 or bars.max() > 4 * max(bars.min(), 1), bars
    assert new.max() <= 2 * new.min() and new.min() >= 10 and new.max() <= 1000, new


def test_standard_bars_by_rate_take_their_threshold_from_the_past_only() -> None:
    spec = PRESETS["dollar"]
    s = make_stream(scaled([Day()] * 2 + [Day(4 * 1_114_623)], SCALE), seed=4)
    cols, _ = columns(spec, s)
    thr: Any = cols["threshold"]
    assert np.isnan(thr[0]) and cols["tick_count"][0] == spec.exp_num_ticks_init  # the first bar: 1,000 trades
    # Each threshold is the same whatever follows: cut the stream after bar 100, same thresholds up to it.
    cut = int(np.searchsorted(s.trade_id, cols["last_trade_id"][100], side="right"))
    head, _ = columns(spec, Stream(s.time_us[:cut], s.price[:cut], s.qty[:cut], s.is_buyer_maker[:cut],
                                   s.trade_id[:cut]))
    np.testing.assert_array_equal(head["threshold"], thr[:101])
    assert np.all(cols["dollar_value"][1:] >= thr[1:])
