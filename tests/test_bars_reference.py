"""Reference-compatible functions: the published result, batch-size independence, the oracle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.features import bars
from tasks.features.bars import REFERENCE_COLUMNS, BarSpec, BarState, process_chunk_arrays
from tests import bars_oracle

# One xdist worker runs the whole module, so its module-scoped fixtures start once.
pytestmark = pytest.mark.xdist_group("test_bars_reference")

DATA = Path(__file__).parent / "data" / "afml"
SMALL = DATA / "imbalance_sample_data_small.csv"
TICKS = DATA / "tick_data.csv"


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return pd.read_csv(SMALL)


def ema_dollar(src: Any, batch_size: float) -> pd.DataFrame:
    out, thresholds = bars.get_ema_dollar_imbalance_bars(
        src, num_prev_bars=3, expected_imbalance_window=10000, exp_num_ticks_init=1000, batch_size=batch_size,
        verbose=False,
    )  # fmt: skip
    assert isinstance(thresholds, pd.DataFrame)
    assert out is not None
    return out


@pytest.mark.parametrize("batch_size", [50, 1000, 1e7])
def test_published_ema_dollar_imbalance_result(small: pd.DataFrame, batch_size: float) -> None:
    db = ema_dollar(SMALL, batch_size)
    assert len(small) == 6955
    assert db.shape == (624, 10)
    assert list(db.columns) == REFERENCE_COLUMNS
    assert db.loc[0, ["open", "high", "low", "close"]].tolist() == [1306, 1306, 1304.25, 1304.5]
    assert np.all(db["high"] >= db["low"])
    assert np.all(db["tick_num"].diff().dropna() == db["cum_ticks"].iloc[1:])
    assert db["tick_num"].iloc[0] == db["cum_ticks"].iloc[0]
    assert db["tick_num"].iloc[-1] <= 6955
    # date_time is the closing trade's original value.
    assert db["date_time"].iloc[0] == small.iloc[db["tick_num"].iloc[0] - 1, 0]


def test_result_does_not_depend_on_batch_size_or_input_form(small: pd.DataFrame) -> None:
    ref = ema_dollar(SMALL, 1e7)
    for src, bs in ((SMALL, 7), (small, 50), (small, 2e7), ([SMALL], 333)):
        pd.testing.assert_frame_equal(ema_dollar(src, bs), ref)


GETTERS: list[tuple[Callable[..., Any], dict[str, Any]]] = [
    (bars.get_ema_dollar_imbalance_bars, {}),
    (bars.get_ema_volume_imbalance_bars, {}),
    (bars.get_ema_tick_imbalance_bars, {}),
    (bars.get_ema_tick_imbalance_bars, {"exp_num_ticks_constraints": [100, 1000]}),
    (bars.get_const_dollar_imbalance_bars, {}),
    (bars.get_const_volume_imbalance_bars, {}),
    (bars.get_const_tick_imbalance_bars, {}),
    (bars.get_ema_dollar_run_bars, {}),
    (bars.get_ema_volume_run_bars, {}),
    (bars.get_ema_tick_run_bars, {}),
    (bars.get_const_dollar_run_bars, {"num_prev_bars": 3}),
    (bars.get_const_volume_run_bars, {"num_prev_bars": 3}),
    (bars.get_const_tick_run_bars, {"num_prev_bars": 3}),
]


def _spec_of(fn: Callable[..., Any], kw: dict[str, Any]) -> BarSpec:
    name = fn.__name__  # get_<ema|const>_<metric>_<imbalance|run>_bars
    _, variant, metric, kind, _ = name.split("_")
    return BarSpec.reference(
        kind, metric, ema=variant == "ema", num_prev_bars=kw.get("num_prev_bars", 3),  # type: ignore[arg-type]
        expected_imbalance_window=10000, exp_num_ticks_init=1000,
        exp_num_ticks_constraints=kw.get("exp_num_ticks_constraints"),
    )  # fmt: skip


@pytest.mark.parametrize(("fn", "kw"), GETTERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_getter_matches_oracle_and_ignores_batch_size(
    small: pd.DataFrame, fn: Callable[..., Any], kw: dict[str, Any]
) -> None:
    a, _ = fn(small, exp_num_ticks_init=1000, batch_size=2e7, verbose=False, **kw)
    b, _ = fn(SMALL, exp_num_ticks_init=1000, batch_size=97, verbose=False, **kw)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) > 0
    want = bars_oracle.bars(
        _spec_of(fn, kw), list(range(len(small))), small.iloc[:, 1].tolist(), small.iloc[:, 2].astype(float).tolist()
    )
    assert len(a) == len(want)
    assert a["tick_num"].tolist() == [w["close_time"] + 1 for w in want]
    np.testing.assert_array_equal(a["cum_dollar_value"].to_numpy(), [w["dollar_value"] for w in want])
    np.testing.assert_array_equal(a["cum_buy_volume"].to_numpy(), [w["buy_volume"] for w in want])


def test_constraints_change_the_result(small: pd.DataFrame) -> None:
    free, _ = bars.get_ema_tick_imbalance_bars(small, exp_num_ticks_init=1000, verbose=False)
    tight, _ = bars.get_ema_tick_imbalance_bars(
        small, exp_num_ticks_init=1000, exp_num_ticks_constraints=[100, 150], verbose=False
    )
    assert free is not None and tight is not None
    assert not free["tick_num"].equals(tight["tick_num"])


def test_standard_bars(small: pd.DataFrame) -> None:
    tb = bars.get_tick_bars(TICKS, threshold=10, verbose=False)
    assert tb is not None
    assert tb.shape == (10, 10) and (tb["cum_ticks"] == 10).all()
    assert tb["tick_num"].tolist() == list(range(10, 101, 10))
    ticks = pd.read_csv(TICKS)
    assert tb.loc[0, "open"] == ticks.iloc[0, 1] and tb.loc[0, "close"] == ticks.iloc[9, 1]
    assert tb.loc[0, "high"] == ticks.iloc[:10, 1].max() and tb.loc[0, "low"] == ticks.iloc[:10, 1].min()
    # Volume and dollar bars close at the first trade where the cumulative metric reaches it.
    vb = bars.get_volume_bars(small, threshold=500, batch_size=333, verbose=False)
    db = bars.get_dollar_bars(SMALL, threshold=1_000_000, verbose=False)
    assert vb is not None and db is not None
    for frame, metric, thr in ((vb, "volume", 500.0), (db, "cum_dollar_value", 1e6)):
        assert (frame[metric] >= thr).all()
        assert len(frame) > 10
    vol = small.iloc[:, 2].to_numpy(float)
    first = int(np.argmax(np.cumsum(vol) >= 500))
    assert vb["tick_num"].iloc[0] == first + 1
    assert vb["volume"].iloc[0] == vol[: first + 1].sum()


def test_time_varying_threshold_series(small: pd.DataFrame) -> None:
    when = pd.to_datetime(small.iloc[:, 0])
    series = pd.Series([200.0, 2000.0], index=[when.iloc[0], when.iloc[3000]])
    vb = bars.get_volume_bars(small, threshold=series, batch_size=1000, verbose=False)
    assert vb is not None
    closes = pd.to_datetime(vb["date_time"])
    early = vb[closes < when.iloc[3000]]
    late = vb[pd.to_datetime(vb["date_time"]).gt(when.iloc[3500])]
    assert len(early) > 5 and len(late) > 0
    assert early["volume"].max() < 2000  # the later, larger threshold was not used before its time
    assert late["volume"].min() >= 2000


def test_to_csv_appends_per_batch(tmp_path: Path, small: pd.DataFrame) -> None:
    out = tmp_path / "bars.csv"
    result, _ = bars.get_ema_dollar_imbalance_bars(
        small, exp_num_ticks_init=1000, batch_size=500, verbose=False, to_csv=True, output_path=out
    )
    assert result is None
    pd.testing.assert_frame_equal(pd.read_csv(out), ema_dollar(small, 2e7), check_dtype=False)


@pytest.mark.parametrize("metric", ["dollar", "tick"])
def test_production_matches_reference_once_history_fills_the_window(small: pd.DataFrame, metric: Any) -> None:
    # With E0 >= W every E[x] is evaluated over a full window, where the O(1) running sum
    # equals the reference's recomputation up to rounding (bars-spec.md).
    ref = BarSpec.reference("imbalance", metric, expected_imbalance_window=200, exp_num_ticks_init=300)
    prod = BarSpec("imbalance", metric, expected_imbalance_window=200, exp_num_ticks_init=300, side="tick_rule")
    args = {"time_us": np.arange(len(small)), "price": small.iloc[:, 1].to_numpy(float),
            "qty": small.iloc[:, 2].to_numpy(float)}  # fmt: skip
    a, _ = process_chunk_arrays(ref, BarState.initial(ref), **args)
    b, _ = process_chunk_arrays(prod, BarState.initial(prod), **args)
    assert len(a["close_time"]) > 1000
    np.testing.assert_array_equal(a["close_time"], b["close_time"])
    np.testing.assert_allclose(a["threshold"], b["threshold"], rtol=1e-9)


def test_analyse_thresholds_is_refused(small: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="analyse_thresholds"):
        bars.get_ema_tick_run_bars(small, analyse_thresholds=True, verbose=False)
