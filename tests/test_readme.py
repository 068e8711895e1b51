"""The README's main command, exactly as written, against the fake archive (only the URLs added); and every
example of the README that reads the lake, run against a lake holding one symbol in two markets."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from tests.conftest import REPO
from tests.fake_archive import FakeArchive, publish_month

# One xdist worker runs the whole module, so its module-scoped fixtures start once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_readme")]


def readme_commands() -> tuple[str, str]:
    """The two commands the README opens with."""
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block is not None
    lines = [ln for ln in block.group(1).splitlines() if ln.strip()]
    assert len(lines) == 2, lines
    return lines[0], lines[1]


def test_readme_opens_with_install_and_run_and_install_and_test() -> None:
    run_cmd, test_cmd = readme_commands()
    assert run_cmd.startswith("pip install -r requirements.txt && python -m flows.full_pipeline ")
    assert test_cmd == "pip install -r requirements-dev.txt && python -m pytest"
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -r requirements-dev.txt" in ci and "python -m pytest" in ci


def test_readme_main_command_as_written(fake_archive: FakeArchive, tmp_path: Path) -> None:
    run_cmd, _ = readme_commands()
    args = shlex.split(run_cmd.split("&&", 1)[1])
    assert args[:3] == ["python", "-m", "flows.full_pipeline"]
    # What the command asks for: spot BTCUSDT and ETHUSDT, January 2024 (auto: the monthly archives).
    for i, symbol in enumerate(("BTCUSDT", "ETHUSDT")):
        publish_month(fake_archive, "spot", symbol, date(2024, 1, 1), 5000, 1, i)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # ad hoc: the CLI starts its own API
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect-home"))
    done = subprocess.run(
        [sys.executable, *args[1:], "--base-url", fake_archive.base_url, "--listing-url", fake_archive.listing_url],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lake = ds.dataset(tmp_path / "data" / "lake" / "trades", format="parquet", partitioning="hive")
    assert lake.count_rows() == 10_000
    assert sorted(lake.to_table(columns=["symbol"])["symbol"].unique().to_pylist()) == ["BTCUSDT", "ETHUSDT"]
    assert "archives: 2 landed in the lake (10,000 rows)" in done.stdout
    assert (tmp_path / "data" / "features" / "ema_dollar_imbalance").is_dir()


# --- Reading the lake: every python block of the README that reads it, run as written ---------------

#: Trade ids per market in the lake the examples read: disjoint, so a row of another market shows.
EXAMPLE_IDS = {"spot": (1, 9000), "um": (50_000_001, 50_009_000)}


def readme_lake_blocks() -> list[str]:
    """Every ```python block of the README that reads the lake (names `data/lake` or the read API)."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return [b for b in blocks if "data/lake" in b or re.search(r"\bread_(trades|bars)", b)]


@pytest.fixture(scope="module")
def example_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`./data` holding spot and USD-M BTCUSDT, 2024-01-01..03 (USD-M without is_best_match, as published),
    merged by the lake's own merge, with the default feature's bars."""
    from tasks.features.incremental import PRESETS, Feature, compute_feature
    from tasks.lake.compact import compact_symbol
    from tasks.schema import TRADES_SCHEMA
    from tasks.source.archive_spec import ArchiveSpec
    from tests.test_compact import OPTS, day, stage, trades

    cwd = tmp_path_factory.mktemp("readme-lake")
    data = cwd / "data"
    feature = Feature("ema_dollar_imbalance", replace(PRESETS["ema_dollar_imbalance"], exp_num_ticks_init=200.0,
                                                      exp_num_ticks_min=20.0))
    for market, (first_id, last_id) in EXAMPLE_IDS.items():
        rows = (last_id - first_id + 1) // 3
        for n in range(1, 4):
            t = trades(first_id + (n - 1) * rows, rows, day(n), seed=n + (10 if market == "um" else 0))
            if market == "um":
                t = t.set_column(7, TRADES_SCHEMA.field("is_best_match"), pa.nulls(rows, pa.bool_()))
            stage(data, ArchiveSpec(market, "BTCUSDT", "daily", day(n)), t)  # type: ignore[arg-type]
        compact_symbol(data, market, "BTCUSDT", 1 << 30, OPTS, False)  # type: ignore[arg-type]
        compute_feature(data, market, "BTCUSDT", feature)
    (data / ".binance-lake").write_text("")
    return cwd


def _as_arrow(value: object) -> pa.Table | None:
    """A result of a README example as an Arrow table (None for what is not a result: modules, datasets)."""
    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pd.DataFrame):
        return pa.Table.from_pandas(value, preserve_index=False)
    module = type(value).__module__.split(".")[0]
    if module == "dask":
        return _as_arrow(value.compute())  # type: ignore[attr-defined]  # (checked as a pandas frame too)
    if module == "polars":
        frame: Any = value.collect() if hasattr(value, "collect") else value
        return frame.to_arrow()  # type: ignore[no-any-return]
    if module in ("duckdb", "_duckdb"):
        return value.to_arrow_table()  # type: ignore[attr-defined, no-any-return]
    return None


def test_readme_has_the_reading_examples() -> None:
    blocks = readme_lake_blocks()
    text = "\n".join(blocks)
    for needed in ("read_trades(", "read_bars(", "read_trades_pandas(", "pd.read_parquet", "dd.read_parquet",
                   "ds.dataset", "pl.", "duckdb.sql"):
        assert needed in text, needed
    assert len(blocks) >= 5


@pytest.mark.parametrize("index", range(len(readme_lake_blocks())))
def test_readme_reading_example_gives_only_the_market_asked(
        example_lake: Path, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    block = readme_lake_blocks()[index]
    for optional in ("polars", "duckdb"):  # dev extras: their examples run where they are installed
        if re.search(rf"^import {optional}\b", block, re.M):
            pytest.importorskip(optional)
    monkeypatch.chdir(example_lake)
    namespace: dict[str, object] = {}
    exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    results = {name: t for name, value in namespace.items() if (t := _as_arrow(value)) is not None}
    for name, value in namespace.items():  # pandas frames (and Dask's, computed): is_best_match stays typed
        frame = value.compute() if type(value).__module__.startswith("dask") else value  # type: ignore[attr-defined]
        if name in results and isinstance(frame, pd.DataFrame) and "is_best_match" in frame.columns:
            assert str(frame["is_best_match"].dtype) == "boolean", f"{name}: {frame['is_best_match'].dtype}"
    assert results, f"block {index} leaves no result to check:\n{block}"
    lo, hi = EXAMPLE_IDS["spot"]
    for name, table in results.items():
        if "first_trade_id" in table.column_names:  # bars: built from spot trades only
            ids = np.concatenate([table[c].to_numpy() for c in ("first_trade_id", "last_trade_id")])
            assert table.num_rows > 10 and ((ids >= lo) & (ids <= hi)).all(), name
            continue
        assert "trade_id" in table.column_names, f"{name}: a result without trade ids cannot be checked"
        ids = np.sort(table["trade_id"].to_numpy())
        np.testing.assert_array_equal(ids, np.arange(lo, hi + 1), err_msg=f"{name} in block {index}: not the spot rows")
        for column in ("market", "symbol"):
            if column in table.column_names:
                assert set(table[column].cast(pa.string()).to_pylist()) == {"spot" if column == "market" else "BTCUSDT"}
        if "is_best_match" in table.column_names:
            assert table["is_best_match"].type == pa.bool_(), f"{name}: is_best_match is {table['is_best_match'].type}"
