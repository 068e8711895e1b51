import os
from datetime import date

import pytest
from pydantic import ValidationError

from flows.full_pipeline import build_parser, main, settings_from_args
from tasks.settings import STEPS, Settings, describe_settings_error, parse_day, split_list


def test_cli_builds_settings() -> None:
    s = settings_from_args(
        ["--data-dir", "d", "--market", "um", "--symbols", "BTCUSDT", "ETHUSDT", "--start", "2024-01-01",
         "--end", "2024-01-31", "--granularity", "daily", "--concurrency", "3", "--steps", "download,convert"]
    )
    assert s.market == "um" and s.symbols == ("BTCUSDT", "ETHUSDT") and s.concurrency == 3
    assert s.steps == ("download", "convert") and s.granularity == "daily"
    assert s.base_url == "https://data.binance.vision"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--symbols", "../../etc"], "symbol"),
        (["--symbols", "btcusdt"], "symbol"),
        (["--start", "2024-02-01"], "before start"),
        (["--steps", "download,optimise"], "steps"),
        (["--base-url", "file:///etc"], "http"),
    ],
)
def test_bad_arguments_are_refused_clearly(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--data-dir": "d", "--symbols": "BTCUSDT", "--start": "2024-01-01", "--end": "2024-01-31"}
    argv: list[str] = []
    for k, v in base.items():
        if k not in args:
            argv += [k, v]
    argv += args
    with pytest.raises(ValidationError, match=message):
        settings_from_args(argv)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_explains_every_option() -> None:
    text = build_parser().format_help()
    for option in ("--data-dir", "--market", "--symbols", "--start", "--end", "--granularity", "--base-url",
                   "--listing-url", "--concurrency", "--steps"):
        assert option in text


# ---- item 14 of issue 11: lists in the environment, bounds, one-line errors -------------------

BASE = {"data_dir": "d", "symbols": "BTCUSDT", "start": "2024-01-01", "end": "2024-01-31"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No BINANCE_LAKE_* variable from the caller's environment."""
    for key in list(os.environ):
        if key.upper().startswith("BINANCE_LAKE_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize(
    ("var", "value", "field", "expected"),
    [
        ("BINANCE_LAKE_SYMBOLS", "BTCUSDT,ETHUSDT", "symbols", ("BTCUSDT", "ETHUSDT")),
        ("BINANCE_LAKE_SYMBOLS", " BTCUSDT ETHUSDT\n", "symbols", ("BTCUSDT", "ETHUSDT")),
        ("BINANCE_LAKE_SYMBOLS", '["BTCUSDT", "ETHUSDT"]', "symbols", ("BTCUSDT", "ETHUSDT")),
        ("binance_lake_symbols", "XRPUSDT", "symbols", ("XRPUSDT",)),  # read case-insensitively
        ("BINANCE_LAKE_STEPS", "download,convert", "steps", ("download", "convert")),
        ("BINANCE_LAKE_STEPS", "download, convert merge", "steps", ("download", "convert", "merge")),
        ("BINANCE_LAKE_STEPS", "", "steps", STEPS),  # empty: as if unset
        ("BINANCE_LAKE_FEATURES", "dollar:threshold=1e7,name=d10m;tick", "features",
         ("dollar:threshold=1e7,name=d10m", "tick")),
        ("BINANCE_LAKE_FEATURES", "dollar:threshold=1e7,name=d10m tick", "features",
         ("dollar:threshold=1e7,name=d10m", "tick")),
        ("BINANCE_LAKE_FEATURES", '["tick", "volume"]', "features", ("tick", "volume")),
        ("BINANCE_LAKE_DASK_PROCESSES", "yes", "dask_processes", True),
        ("BINANCE_LAKE_DASK_ADDRESS", "", "dask_address", None),
        ("BINANCE_LAKE_DASK_ADDRESS", "tls://[::1]:8786", "dask_address", "tls://[::1]:8786"),
    ],
)
def test_lists_and_values_from_the_environment(clean_env: pytest.MonkeyPatch, var: str, value: str, field: str,
                                               expected: object) -> None:
    clean_env.setenv(var, value)
    given = {k: v for k, v in BASE.items() if k != field}
    assert getattr(Settings(**given), field) == expected


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("BINANCE_LAKE_SYMBOLS", "BTCUSDT,btc", "'btc'"),
        ("BINANCE_LAKE_SYMBOLS", '["BTCUSDT"', "not a JSON list"),
        ("BINANCE_LAKE_SYMBOLS", '["BTCUSDT", 5]', "=5: Input should be a valid string"),
        ("BINANCE_LAKE_STEPS", "download,optimise", "'optimise'"),
        ("BINANCE_LAKE_STEPS", ",", "at least one step"),
        ("BINANCE_LAKE_FEATURES", "tick;tick", "share a name"),
        ("BINANCE_LAKE_FEATURES", ";".join(f"tick:name=t{i}" for i in range(33)), "at most 32"),
        ("BINANCE_LAKE_CONCURRENCY", "1e3", "valid integer"),
        ("BINANCE_LAKE_RETRIES", "-1", "0..20"),
        ("BINANCE_LAKE_CONNECT_TIMEOUT", "nan", "finite"),
        ("BINANCE_LAKE_LOCK_WAIT_S", "1e300", "0..86400"),
        ("BINANCE_LAKE_DASK_PROCESSES", "2", "boolean"),
        ("BINANCE_LAKE_DASK_ADDRESS", "tcp://a b:1", "Dask scheduler address"),
        ("BINANCE_LAKE_BASE_URL", "http://127.0.0.1:9/\n", "not a URL"),
        ("BINANCE_LAKE_LISTING_URL", "https://user@host/", "not a URL"),
    ],
)
def test_bad_environment_values_are_refused_naming_the_variable(clean_env: pytest.MonkeyPatch, var: str, value: str,
                                                                fragment: str) -> None:
    clean_env.setenv(var, value)
    with pytest.raises(ValidationError) as info:
        Settings(**{k: v for k, v in BASE.items() if k.upper() != var.removeprefix("BINANCE_LAKE_")})
    line = describe_settings_error(info.value, given=BASE.keys() - {var.removeprefix("BINANCE_LAKE_").lower()})
    assert line.startswith(f"error: {var}") and fragment in line and "\n" not in line, line


def test_every_number_list_and_flag_of_settings_is_checked() -> None:
    """Each int/float field has both bounds; each list field is read from text (NoDecode), not JSON."""
    from pydantic_settings import NoDecode

    for name, info in Settings.model_fields.items():
        kinds = {type(m).__name__ for m in info.metadata}
        if info.annotation in ("int", "float", int, float):
            assert kinds & {"Ge", "Gt"} and kinds & {"Le", "Lt"}, f"{name} needs both bounds"
        if "tuple" in str(info.annotation):
            assert NoDecode in info.metadata, f"{name}: a list from the environment must be split, not JSON-decoded"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--symbols", "BTCUSDT\n"], "'BTCUSDT\\n'"),  # `$` matched before the newline: symbol=BTCUSDT\n folders
        (["--symbols", "BTCUSDT,ETHUSDT", "BNB\tUSDT"], "'BNB\\tUSDT'"),
        (["--start", "2024-1-1"], "YYYY-MM-DD"),
        (["--start", "2024-02-30"], "not a day of the calendar"),
        (["--start", "1970-01-01"], "2017-01-01..2099-12-31"),
        (["--end", "9999-12-31"], "2017-01-01..2099-12-31"),
        (["--concurrency", "0"], "--concurrency=0 is out of range: allowed 1..64"),
        (["--target-file-bytes", "1"], "allowed 1048576..68719476736"),
        (["--steps", ""], "at least one step"),
        (["--features", "ema_dollar_imbalance:num_prev_bars=100000000"], "num_prev_bars=100000000"),
        (["--features", "dollar:threshold=0"], "threshold=0.0 is out of range"),
        (["--dask-address", "tcp://host:8786/x"], "Dask scheduler address"),
    ],
)
def test_bad_arguments_are_refused_in_one_line_naming_the_option(argv: list[str], fragment: str,
                                                                 clean_env: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    full = ["--data-dir", "d", "--symbols", "BTCUSDT", "--start", "2024-01-01", "--end", "2024-01-31", *argv]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and err.startswith("error: --"), err


def test_cli_lists_split_on_commas_and_keep_the_order() -> None:
    s = settings_from_args(["--data-dir", "d", "--symbols", "ETHUSDT,BTCUSDT", "BTCUSDT", "--start", "2024-01-01",
                            "--end", "2024-01-31", "--steps", "download,convert", "--features", "tick;volume"])
    assert s.symbols == ("ETHUSDT", "BTCUSDT") and s.steps == ("download", "convert")
    assert s.features == ("tick", "volume")


def test_argparse_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--data-dir", "d", "--concurrency", "many"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "--concurrency" in err and "'many'" in err


def test_split_list_and_parse_day() -> None:
    assert split_list("a, b;c", r"[\s,;]+", ",") == ("a", "b", "c")
    assert split_list(("a,b", "c"), r"[\s,]+", ",") == ("a", "b", "c")
    assert split_list(["a\n"], r"[\s,]+", ",") == ("a\n",)  # a CLI item is not stripped: the check refuses it
    assert split_list(5, r"[\s,]+", ",") == 5  # for pydantic to refuse
    with pytest.raises(ValueError, match="not a JSON list"):
        split_list("[1, 2", r"[\s,]+", ",")
    with pytest.raises(ValueError, match="not a JSON list"):
        split_list('["a"] x', r"[\s,]+", ",")
    assert parse_day("2024-02-29") == date(2024, 2, 29)
    for bad in ("2024-02-29\n", "20240229", "2024-W09-4", "２０２４-02-29", "1704067200"):
        with pytest.raises(ValueError, match="YYYY-MM-DD"):
            parse_day(bad)
