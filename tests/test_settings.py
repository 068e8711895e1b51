import pytest
from pydantic import ValidationError

from flows.full_pipeline import build_parser, main, settings_from_args


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
