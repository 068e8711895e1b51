"""Features from the lake: incremental runs equal a full recomputation; staleness; parameters."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tasks.features.bars import BarSpec, BarState, process_chunk
from tasks.features.incremental import Feature, compute_feature, parse_feature, read_feature
from tests.conftest import REPO
from tests.fake_archive import FakeArchive, publish_day
from tests.test_compact import compact, lake_table, stage_day
from tests.test_flow_e2e import run

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


@pytest.mark.slow
def test_flow_computes_features_then_extends_them_with_the_next_day(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    fa, data = fake_archive, tmp_path / "data"
    n = 4000
    for d in (1, 2, 3):
        publish_day(fa, "spot", "BTCUSDT", date(2024, 1, d), n, 1 + (d - 1) * n, d)
    text = ("ema_dollar_imbalance:exp_num_ticks_init=100,exp_num_ticks_min=10,exp_num_ticks_max=300,"
            "expected_imbalance_window=500,min_ticks=5")
    feature = parse_feature(text)
    common: dict[str, Any] = {"market": "spot", "symbols": ("BTCUSDT",), "granularity": "daily",
                              "features": (text,), "start": date(2024, 1, 1)}
    state, report = run(fa, data, dask_address, end=date(2024, 1, 2), **common)
    assert state.is_completed(), state.message
    assert [(f.mode, f.trades) for f in report.features] == [("recomputed", 2 * n)]
    state, report = run(fa, data, dask_address, end=date(2024, 1, 3), **common)
    assert state.is_completed(), state.message
    assert [(f.mode, f.trades) for f in report.features] == [("extended", n)]
    bars = read_feature(data, "spot", "BTCUSDT", feature)
    assert bars.num_rows > 50 and bars.equals(one_pass(data, feature.spec))
    assert bars.equals(fresh(data, feature))
    # Another parameter: recomputed (the cache key and the stored spec hold the parameters).
    state, report = run(fa, data, dask_address, end=date(2024, 1, 3), **{**common, "features": (text + "0",)})
    assert [(f.mode, f.reason) for f in report.features] == [("recomputed", "parameters changed")]
    feature = parse_feature(text + "0")
    # The example plots the lake and the bars.
    out = tmp_path / "plots"
    done = subprocess.run([sys.executable, str(REPO / "examples" / "plot_bars.py"), "--data-dir", str(data),
                           "--feature", feature.name, "--day", "2024-01-02", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["BTCUSDT-2024-01-02-bars.png", "BTCUSDT-bar-sizes.png",
                                      "BTCUSDT-vs-time-bars.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 20_000 for p in pngs)
    # A day the lake does not hold: one line saying what it holds, exit 2, no chart.
    missing = subprocess.run([sys.executable, str(REPO / "examples" / "plot_bars.py"), "--data-dir", str(data),
                              "--feature", feature.name, "--day", "2024-03-02", "--out", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.startswith("error: spot/BTCUSDT 2024-03-02: no trades in the lake")
    assert "its bars run from 2024-01-01 to 2024-01-03" in missing.stderr and missing.stderr.count("\n") == 1
    assert not (tmp_path / "none").exists()


def test_daily_parts_are_consolidated_and_still_extend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.features.incremental as features

    monkeypatch.setattr(features, "MAX_PARTS", 2)
    stage_day(tmp_path, 1)
    compact(tmp_path)
    compute_feature(tmp_path, "spot", "BTCUSDT", FEATURE)
    for n in (2, 3, 4):
        stage_day(tmp_path, n)
        compact(tmp_path)
        res = compute_feature(tmp_path, "spot", "BTCUSDT", FEATURE)
        assert res.mode == "extended" and res.parts <= 2
    bars = read_feature(tmp_path, "spot", "BTCUSDT", FEATURE)
    assert bars.equals(one_pass(tmp_path, SPEC))
    names = sorted(p.name for p in FEATURE.folder(tmp_path, "spot", "BTCUSDT").iterdir())
    assert names[0].startswith("2024-01-01_") and not [n for n in names if n.startswith(".")]
