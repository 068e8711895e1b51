"""Which folders may be a data dir: new, empty, or a marked lake; everything else exits 2 at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.datadir import MARKER_NAME, check_data_dir, is_lake, open_data_dir
from tasks.errors import DataDirRefused
from tests.conftest import REPO


def test_new_and_empty_folders_are_marked_and_a_marked_lake_is_accepted(tmp_path: Path) -> None:
    new = tmp_path / "a" / "b"
    assert open_data_dir(new) == new.resolve() and is_lake(new)
    empty = tmp_path / "empty"
    empty.mkdir()
    open_data_dir(empty)
    assert is_lake(empty)
    (empty / "lake").mkdir()
    (empty / "my-notes.txt").write_text("mine")
    assert check_data_dir(empty) == empty.resolve()  # marked: whatever else it holds


def test_an_unmarked_lake_of_an_earlier_version_is_accepted_and_marked(tmp_path: Path) -> None:
    (tmp_path / "lake" / "trades").mkdir(parents=True)
    (tmp_path / "archive" / "data").mkdir(parents=True)
    (tmp_path / ".lock").write_text("{}")
    open_data_dir(tmp_path)
    assert (tmp_path / MARKER_NAME).is_file()


@pytest.mark.parametrize("case", ["home-like", "file", "lake-and-more"])
def test_folders_that_are_not_lakes_are_refused_unchanged(tmp_path: Path, case: str) -> None:
    target = tmp_path / "d"
    if case == "home-like":
        (target / ".bashrc").parent.mkdir()
        (target / ".bashrc").write_text("x")
        (target / "Documents").mkdir()
    elif case == "file":
        target.write_text("x")
    else:
        (target / "lake").mkdir(parents=True)
        (target / "thesis.tex").write_text("x")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(DataDirRefused, match=str(target)):
        open_data_dir(target)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_filesystem_root_is_refused() -> None:
    with pytest.raises(DataDirRefused, match="not empty"):
        check_data_dir(Path("/"))


def test_cli_refuses_a_folder_that_is_not_a_lake_in_one_line_with_exit_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".profile").write_text("x")
    (home / ".lock").write_text("someone else's lock")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for module in ("flows.full_pipeline", "flows.daily_update"):
        args = [sys.executable, "-m", module, "--data-dir", str(home), "--symbols", "BTCUSDT"]
        if module == "flows.full_pipeline":
            args += ["--start", "2024-01-01", "--end", "2024-01-02"]
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(home) in lines[0] and "not a binance-lake data dir" in lines[0], lines
        assert sorted(os.listdir(home)) == [".lock", ".profile"]
        assert (home / ".lock").read_text() == "someone else's lock"
