"""Bounds on input (issue 11, item 14): the CLIs refuse bad arguments and variables in one line.

The first cases run `python -m flows.<cli>` as real subprocesses, with a clean
`BINANCE_LAKE_*` environment and a home of their own, and check: exit status 2, exactly
one line on stderr naming the problem (the option or variable, its value, what is
allowed), no traceback, nothing on stdout (no run, no server) and no data dir created.
They run a few at a time: each is mostly Prefect's import (about 3 s). The other cases
call the same `main()` in this process, with the same checks; the parsers behind them are
unit-tested below.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tasks.errors import UnsafePath
from tasks.features.bars import BarSpec
from tasks.features.incremental import PRESETS, Feature, parse_feature, read_feature
from tasks.source.archive_spec import check_symbol
from tests.conftest import REPO

# One xdist worker runs the whole module, so its module-scoped fixtures start once.
pytestmark = pytest.mark.xdist_group("test_input_bounds")

OK = ["--symbols", "BTCUSDT", "--start", "2024-01-01", "--end", "2024-01-02",
      # never reached, but were a case to get through, it would fail here, not on the internet
      "--base-url", "http://127.0.0.1:9", "--listing-url", "http://127.0.0.1:9"]


@dataclass(frozen=True)
class Case:
    """One refused command line: what it runs and what its one line of stderr must say."""

    id: str
    module: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    expect: tuple[str, ...]


def _case(id: str, module: str, args: list[str], expect: list[str], **env: str) -> Case:
    return Case(id, module, tuple(args), tuple(env.items()), tuple(expect))


FP, DU, ST = "flows.full_pipeline", "flows.daily_update", "flows.status"
CASES = [
    # The reproduction: 67 s at 14 GB RSS and a 2.5 GB part for 7,500 trades.
    _case("num_prev_bars", FP, [*OK, "--features", "ema_dollar_imbalance:num_prev_bars=100000000"],
          ["--features", "num_prev_bars=100000000", "1..10000"]),
    _case("feature-name", FP, [*OK, "--features", "dollar:threshold=1e6,name=../etc"],
          ["--features", "'../etc'", "[a-z0-9_]"]),
    _case("threshold-nan", FP, [*OK, "--features", "dollar:threshold=nan"], ["threshold=nan", "> 0"]),
    _case("unknown-field", FP, [*OK, "--features", "tick:colour=red"], ["'colour' is not a bar parameter"]),
    _case("symbol-newline", FP, ["--symbols", "BTCUSDT\n", *OK[2:]], ["--symbols", "'BTCUSDT\\n'", "[A-Z0-9_]"]),
    _case("start-unix-time", FP, [*OK, "--start", "1704067200"], ["--start", "'1704067200'", "YYYY-MM-DD"]),
    _case("end-far", FP, [*OK, "--end", "9999-12-31"], ["--end", "9999-12-31", "2017-01-01..2099-12-31"]),
    _case("concurrency-type", FP, [*OK, "--concurrency", "many"], ["--concurrency", "'many'"]),
    _case("target-file-bytes", FP, [*OK, "--target-file-bytes", str(1 << 50)], ["--target-file-bytes", "allowed"]),
    # Lists in the environment are parsed (this crashed with a SettingsError traceback before),
    # so the one line names only the bad value beside them.
    _case("env-lists-parse", FP, OK, ["BINANCE_LAKE_CONCURRENCY='0'", "1..64"],
          BINANCE_LAKE_SYMBOLS="BTCUSDT,ETHUSDT", BINANCE_LAKE_STEPS="download,convert",
          BINANCE_LAKE_FEATURES="dollar:threshold=1e7,name=d10m;tick", BINANCE_LAKE_CONCURRENCY="0"),
    _case("env-step", FP, OK, ["BINANCE_LAKE_STEPS='frobnicate'", "'download'"],
          BINANCE_LAKE_STEPS="download,frobnicate"),
    _case("env-json-broken", FP, OK, ["BINANCE_LAKE_FEATURES", "not a JSON list"], BINANCE_LAKE_FEATURES='["tick"'),
    _case("env-inf", FP, OK, ["BINANCE_LAKE_READ_TIMEOUT='inf'", "finite"], BINANCE_LAKE_READ_TIMEOUT="inf"),
    _case("env-bool", FP, OK, ["BINANCE_LAKE_DASK_PROCESSES='maybe'", "boolean"], BINANCE_LAKE_DASK_PROCESSES="maybe"),
    _case("env-workers", FP, OK, ["BINANCE_LAKE_DASK_WORKERS='100000'", "1..256"], BINANCE_LAKE_DASK_WORKERS="100000"),
    _case("env-dask-address", FP, OK, ["BINANCE_LAKE_DASK_ADDRESS", "scheduler address"],
          BINANCE_LAKE_DASK_ADDRESS="tcp://evil host:8786"),
    _case("env-feature", DU, ["--symbols", "BTCUSDT"], ["BINANCE_LAKE_FEATURES", "max_ticks=-1", "0..1000000000"],
          BINANCE_LAKE_FEATURES="ema_tick_imbalance:max_ticks=-1"),
    _case("reprobe-days", DU, ["--reprobe-days", "1000000000"], ["--reprobe-days", "1000000000", "1..366"]),
    _case("today", DU, ["--today", "0001-01-01"], ["--today", "0001-01-01", "2017-01-01"]),
    _case("daily-symbol", DU, ["--symbols", "BTCUSDT\n"], ["--symbols", "'BTCUSDT\\n'"]),
    _case("daily-url", DU, ["--symbols", "BTCUSDT", "--base-url", "http://127.0.0.1:9/a b"], ["--base-url", "URL"]),
    _case("status-no-data-dir", ST, [], ["--data-dir", "required"]),
    _case("status-missing", ST, ["--data-dir", "{data}"], ["no such data dir"]),
]


#: Run as real subprocesses: each CLI, an argument and an environment case (a few: ~3 s each).
SUBPROCESS = ("num_prev_bars", "symbol-newline", "env-lists-parse", "env-feature", "today", "status-no-data-dir",
              "status-missing")
REAL_CASES = [c for c in CASES if c.id in SUBPROCESS]
IN_PROCESS_CASES = [c for c in CASES if c.id not in SUBPROCESS]


def _argv(case: Case, data: Path) -> list[str]:
    args = [a.replace("{data}", str(data)) for a in case.args]
    if (case.module != ST or args) and "--data-dir" not in args:
        args = ["--data-dir", str(data), *args]
    return args


def _run(case: Case, root: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    home, data = root / case.id / "home", root / case.id / "data"
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("BINANCE_LAKE_", "PREFECT_"))}
    env.update({"HOME": str(home), "PYTHONPATH": str(REPO), **dict(case.env)})
    done = subprocess.run([sys.executable, "-m", case.module, *_argv(case, data)], cwd=root / case.id, env=env,
                          capture_output=True, text=True, timeout=300)
    return done, data


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Any, Path]]]:
    """Every case, run as a real CLI, three at a time (each is mostly Prefect's import)."""
    root = tmp_path_factory.mktemp("cli")
    with ThreadPoolExecutor(3) as pool:
        results = dict(zip([c.id for c in REAL_CASES], pool.map(lambda c: _run(c, root), REAL_CASES), strict=True))
    yield results


def _check(case: Case, status: object, out: str, err: str, data: Path) -> None:
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    for fragment in case.expect:
        assert fragment in lines[0], (fragment, lines[0])
    assert status == 2, err
    assert out == ""  # no run started, no summary
    assert not data.exists()  # refused before anything is created


@pytest.mark.parametrize("case", REAL_CASES, ids=[c.id for c in REAL_CASES])
def test_cli_refuses_in_one_line_with_exit_2(case: Case, refused: dict[str, tuple[Any, Path]]) -> None:
    done, data = refused[case.id]
    _check(case, done.returncode, done.stdout, done.stderr, data)


@pytest.mark.parametrize("case", IN_PROCESS_CASES, ids=[c.id for c in IN_PROCESS_CASES])
def test_main_refuses_in_one_line_with_exit_2(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    for key in list(os.environ):
        if key.upper().startswith("BINANCE_LAKE_"):
            monkeypatch.delenv(key)
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    main = importlib.import_module(case.module).main
    data = tmp_path / "data"
    try:
        status = main(_argv(case, data))
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    captured = capsys.readouterr()
    _check(case, status, captured.out, captured.err, data)


# ---- the parsers behind them ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("num_prev_bars", 100_000_000, "num_prev_bars=100000000 is out of range: allowed 1..10000"),
        ("num_prev_bars", 0, "allowed 1..10000"),
        ("num_prev_bars", 3.0, "not an integer"),
        ("num_prev_bars", True, "not an integer"),
        ("expected_imbalance_window", 100_001, "allowed 1..100000"),
        ("expected_imbalance_window", "10", "not an integer"),
        ("min_ticks", -1, "allowed 0..1000000000"),
        ("max_ticks", 10**10, "allowed 0..1000000000"),
        ("exp_num_ticks_init", math.nan, "exp_num_ticks_init=nan"),
        ("exp_num_ticks_init", math.inf, "allowed 0..1e+09"),
        ("exp_num_ticks_init", -5.0, "allowed 0..1e+09"),
        ("exp_num_ticks_min", 2e9, "allowed 0..1e+09"),
        ("exp_num_ticks_max", -math.inf, "or inf"),
        ("exp_num_ticks_max", math.nan, "or inf"),
        ("threshold", 0.0, "> 0"),
        ("threshold", -1.0, "> 0"),
        ("threshold", math.inf, "<= 1e+15"),
        ("threshold", "5e6", "not a number"),
        ("bars_per_day", -1.0, "bars_per_day=-1.0 is out of range"),
        ("bars_per_day", math.nan, "bars_per_day=nan is out of range"),
        ("rate_window_days", 1000.0, "allowed 0.01..365"),
        ("ema", "yes", "ema='yes'"),
        ("kind", ["imbalance"], "one of standard, imbalance, run"),
        ("metric", "notional", "one of tick, volume, dollar"),
        ("side", None, "one of maker, tick_rule"),
        ("ewma", "EXACT", "one of running, exact"),
    ],
)
def test_bar_spec_refuses_each_field_out_of_bounds_naming_it(field: str, value: Any, fragment: str) -> None:
    kwargs: dict[str, Any] = {"kind": "imbalance", "metric": "dollar", field: value}
    with pytest.raises(ValueError) as info:
        BarSpec(**kwargs)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_bar_spec_bounds_keep_the_presets_the_reference_defaults_and_the_edges() -> None:
    for spec in PRESETS.values():
        assert BarSpec.from_json(spec.to_json()) == spec
    BarSpec.reference("imbalance", "tick", num_prev_bars=3, expected_imbalance_window=10_000, exp_num_ticks_init=20_000)
    edge = BarSpec("run", "volume", num_prev_bars=10_000, expected_imbalance_window=100_000, min_ticks=10**9,
                   max_ticks=10**9, exp_num_ticks_init=0.0, exp_num_ticks_min=1e9, exp_num_ticks_max=1e9)
    assert edge.num_prev_bars == 10_000
    assert BarSpec("standard", "dollar", threshold=1e15).threshold == 1e15


def test_bar_spec_numbers_are_canonical_so_its_json_is_its_identity() -> None:
    import numpy as np

    a = BarSpec("imbalance", "dollar", exp_num_ticks_init=5000, num_prev_bars=np.int64(3))  # type: ignore[arg-type]
    b = BarSpec("imbalance", "dollar", exp_num_ticks_init=5000.0, num_prev_bars=3)
    assert a.to_json() == b.to_json()
    assert type(a.num_prev_bars) is int and type(a.exp_num_ticks_init) is float


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ema_dollar_imbalance:num_prev_bars=100000000", "num_prev_bars=100000000 is out of range: allowed 1..10000"),
        ("ema_dollar_imbalance:num_prev_bars=1e3", "num_prev_bars='1e3' is not a valid int"),
        ("ema_dollar_imbalance:min_ticks=20,min_ticks=30", "min_ticks is given twice"),
        ("ema_dollar_imbalance:name=a,name=b", "name is given twice"),
        ("ema_dollar_imbalance:kind=standard,bars_per_day=0", "standard bars need threshold"),
        ("dollar:threshold=5e6,bars_per_day=50", "threshold=... or bars_per_day=..., not both"),
        ("ema_dollar_imbalance:ewma=exact,bars_per_day=50", "bars_per_day needs ema=true and ewma='running'"),
        ("ema_dollar_imbalance:bars_per_day=1e7", "bars_per_day=10000000.0 is out of range"),
        ("ema_dollar_imbalance:bars_per_day=0.0001", "bars_per_day=0.0001 is out of range"),
        ("ema_dollar_imbalance:rate_window_days=0", "rate_window_days=0.0 is out of range: allowed 0.01..365"),
        ("ema_dollar_imbalance:exp_num_ticks_init=0", "the first bar's length, allowed 1..1e9"),
        ("ema_dollar_imbalance:kind=renko", "kind='renko' is not allowed"),
        ("ema_dollar_imbalance:ema=maybe", "ema='maybe' is not a valid bool"),
        ("dollar:threshold=-5", "threshold=-5.0 is out of range"),
        ("dollar:threshold=inf", "threshold=inf is out of range"),
        ("dollar:name=bars\n", "must match [a-z0-9_]{1,64}"),
        ("dollar:name=", "must match"),
        ("dollar:name=" + "a" * 65, "must match"),
        ("dollar:threshold", "expected field=value"),
        ("tick:" + "x=1," * 400, "at most 1000 characters"),
        ("Dollar", "unknown bar kind"),
    ],
)
def test_parse_feature_refuses_in_one_line_naming_the_field(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_feature(text)
    assert fragment in str(info.value)


def test_parse_feature_takes_every_field_within_bounds() -> None:
    f = parse_feature("ema_dollar_run:num_prev_bars=10000,expected_imbalance_window=100000,min_ticks=0,"
                      "max_ticks=1000000000,exp_num_ticks_max=inf,ema=false,side=tick_rule,ewma=exact,name=r_1")
    assert f.name == "r_1" and f.spec.num_prev_bars == 10_000 and f.spec.exp_num_ticks_max == math.inf
    assert f.spec.ema is False and f.spec.side == "tick_rule" and f.spec.ewma == "exact"


def test_feature_and_part_names_are_matched_whole(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must match"):
        Feature("bars\n", PRESETS["tick"])
    # A file named like a part but with a trailing newline is not a part (with `$` it was
    # read as one, and its garbage failed the read).
    feature = Feature("tick", PRESETS["tick"])
    folder = feature.folder(tmp_path, "spot", "BTCUSDT")
    folder.mkdir(parents=True)
    (folder / "2024-01-01_2024-01-02.parquet\n").write_bytes(b"not parquet")
    (folder / "２０２４-01-01_2024-01-02.parquet").write_bytes(b"not parquet")
    assert read_feature(tmp_path, "spot", "BTCUSDT", feature).num_rows == 0


def test_a_symbol_with_a_trailing_newline_makes_no_folder(tmp_path: Path) -> None:
    from tasks.source.archive_spec import lake_symbol_dir, staging_symbol_dir

    for make in (lake_symbol_dir, staging_symbol_dir):
        with pytest.raises(UnsafePath):
            make(tmp_path, "spot", "BTCUSDT\n")
    with pytest.raises(UnsafePath):
        check_symbol(b"BTCUSDT")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
