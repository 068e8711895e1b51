"""Features from the lake: incremental runs equal a full recomputation; staleness; parameters."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.bars import BarSpec, BarState, process_chunk
from tasks.features import Feature, compute_feature, parse_feature, read_feature
from tests.test_compact import compact, lake_table, stage_day

SPEC = BarSpec("imbalance", "dollar", exp_num_ticks_init=100.0, exp_num_ticks_min=10.0, exp_num_ticks_max=300.0,
               min_ticks=5, max_ticks=5000, expected_imbalance_window=500)
FEATURE = Feature("ema_dollar_imbalance", SPEC)


def one_pass(data_dir: Path, spec: BarSpec) -> pa.Table:
    t = lake_table(data_dir)
    bars, _ = process_chunk(spec, BarState.initial(spec), t["time"].cast(pa.int64()).to_numpy(),
                            t["price"].to_numpy(), t["qty"].to_numpy(), t["is_buyer_maker"].to_numpy(),
                            t["trade_id"].to_numpy())
    return bars


def fresh(data_dir: Path, feature: Feature) -> pa.Table:
    shutil.rmtree(data_dir / "features", ignore_errors=True)
    compute_feature(data_dir, "spot", "BTCUSDT", feature, batch_rows=700)
    return read_feature(data_dir, "spot", "BTCUSDT", feature)


def test_daily_increments_equal_a_full_recomputation(tmp_path: Path) -> None:
    for n in (1, 2):
        stage_day(tmp_path, n)
    compact(tmp_path)
    first = compute_feature(tmp_path, "spot", "BTCUSDT", FEATURE, batch_rows=700)
    assert first.mode == "recomputed" and first.trades == 6000 and first.bars > 10
    assert compute_feature(tmp_path, "spot", "BTCUSDT", FEATURE).mode == "up to date"
    for n in (3, 4):  # two daily updates: each reads only the new day
        stage_day(tmp_path, n)
        compact(tmp_path)
        res = compute_feature(tmp_path, "spot", "BTCUSDT", FEATURE, batch_rows=1100)
        assert res.mode == "extended" and res.trades == 3000
    incremental = read_feature(tmp_path, "spot", "BTCUSDT", FEATURE)
    assert res.parts == 3
    assert incremental.equals(one_pass(tmp_path, SPEC))
    assert incremental.equals(fresh(tmp_path, FEATURE))
    ids = incremental["last_trade_id"].to_numpy()
    assert (ids[1:] > ids[:-1]).all() and incremental["tick_count"].to_numpy().min() >= SPEC.min_ticks


def test_republished_or_backfilled_day_and_changed_parameters_recompute(tmp_path: Path) -> None:
    for n in (1, 2, 4):
        stage_day(tmp_path, n)
    compact(tmp_path)
    compute_feature(tmp_path, "spot", "BTCUSDT", FEATURE)
    stage_day(tmp_path, 3)  # a late day, before the last one consumed
    compact(tmp_path)
    res = compute_feature(tmp_path, "spot", "BTCUSDT", FEATURE)
    assert res.mode == "recomputed" and "changed" in res.reason and res.parts == 1
    assert read_feature(tmp_path, "spot", "BTCUSDT", FEATURE).equals(one_pass(tmp_path, SPEC))
    stage_day(tmp_path, 2, sha="b" * 64, seed=77)  # re-published
    compact(tmp_path)
    res = compute_feature(tmp_path, "spot", "BTCUSDT", FEATURE)
    assert res.mode == "recomputed"
    assert read_feature(tmp_path, "spot", "BTCUSDT", FEATURE).equals(one_pass(tmp_path, SPEC))
    other = Feature(FEATURE.name, BarSpec(**{**SPEC.__dict__, "min_ticks": 50}))
    res = compute_feature(tmp_path, "spot", "BTCUSDT", other)
    assert res.mode == "recomputed" and res.reason == "parameters changed"
    bars = read_feature(tmp_path, "spot", "BTCUSDT", other)
    assert bars.equals(one_pass(tmp_path, other.spec)) and bars["tick_count"].to_numpy().min() >= 50


def test_parse_feature() -> None:
    f = parse_feature("ema_dollar_imbalance:exp_num_ticks_init=5000,min_ticks=20,name=my_bars")
    assert f.name == "my_bars" and f.spec.exp_num_ticks_init == 5000.0 and f.spec.min_ticks == 20
    assert parse_feature("dollar:threshold=1e6").spec.threshold == 1e6
    with pytest.raises(ValueError, match="unknown bar kind"):
        parse_feature("renko")
    with pytest.raises(ValueError, match="not a bar parameter"):
        parse_feature("dollar:colour=red")
    with pytest.raises(ValueError, match="not a valid int"):
        parse_feature("ema_tick_imbalance:min_ticks=many")
    with pytest.raises(ValueError, match="must match"):
        parse_feature("dollar:name=../x")
