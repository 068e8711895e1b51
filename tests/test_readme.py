"""The README's main command, exactly as written, against the fake archive (only the URLs added)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.conftest import REPO
from tests.fake_archive import FakeArchive, publish_month

pytestmark = pytest.mark.slow


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
    assert "2 ingested" in done.stdout and (tmp_path / "data" / "features" / "ema_dollar_imbalance").is_dir()
