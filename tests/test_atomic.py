"""Stale temporaries (only ours, only in our folders) and folder swaps: leftovers, moved and copied data dirs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.atomic import (
    LEGACY_JOURNAL_NAME,
    SWAP_DIR,
    TMP_MARK,
    recover_swaps,
    remove_stale_temporaries,
    swap_folder,
    temp_path_for,
)
from tests.test_compact import compact, lake_table, names, stage_day


def test_temporary_of_a_zombie_writer_is_stale_and_a_live_one_is_kept(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while True:  # exited but not reaped: a zombie, as a killed worker under an init that does not reap
        with open(f"/proc/{child.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        dead = tmp_path / f".a.parquet{TMP_MARK}{child.pid}-deadbeef"
        live = tmp_path / f".b.parquet{TMP_MARK}{os.getpid()}-deadbeef"
        dead.write_bytes(b"x")
        live.write_bytes(b"x")
        assert remove_stale_temporaries(tmp_path) == 1
        assert not dead.exists() and live.exists()
        # Under the data dir's lock no other run writes: every temporary is stale.
        assert remove_stale_temporaries(tmp_path, check_owner=False) == 1 and not live.exists()
    finally:
        child.wait()


# -- folder swaps: what readers see, leftovers, moved data dirs --------------------------------

def _chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_a_superseded_file_that_cannot_be_deleted_stays_out_of_readers_paths(tmp_path: Path) -> None:
    stage_day(tmp_path, 1)
    compact(tmp_path)
    (old,) = [p for p in (tmp_path / "lake").rglob("*.parquet")]
    if not _chattr("+i", old):
        pytest.skip("chattr +i is not available here (needs CAP_LINUX_IMMUTABLE)")
    try:
        stage_day(tmp_path, 2)
        res = compact(tmp_path)  # rewrites day 1's file as 1..2: the old one cannot be deleted
        assert res.leftover is not None and old.name in res.leftover and "readers" in res.leftover
        assert names(tmp_path) == ["2024-01-01_2024-01-02.parquet"]  # readers see the new set only
        assert lake_table(tmp_path).num_rows == 6000
        count, problems = recover_swaps(tmp_path)  # the next run: a warning, not a failure
        assert count == 1 and len(problems) == 1 and old.name in problems[0]
        stage_day(tmp_path, 3)
        compact(tmp_path)  # and later merges still work
        assert names(tmp_path) == ["2024-01-01_2024-01-03.parquet"]
    finally:
        for p in (tmp_path / SWAP_DIR).rglob("*.parquet"):
            _chattr("-i", p)
    assert recover_swaps(tmp_path) == (1, [])
    assert not any((tmp_path / SWAP_DIR).iterdir())


def test_swap_keeps_unchanged_files_as_hard_links_and_refuses_a_foreign_folder(tmp_path: Path) -> None:
    folder = tmp_path / "lake" / "trades" / "market=spot" / "symbol=X"
    folder.mkdir(parents=True)
    (folder / "a.parquet").write_bytes(b"a")
    (folder / "b.parquet").write_bytes(b"b")
    inode = (folder / "a.parquet").stat().st_ino
    tmp = temp_path_for(folder / "c.parquet")
    tmp.write_bytes(b"c")
    swap_folder(tmp_path, folder, [(tmp, folder / "c.parquet")], [folder / "b.parquet"])
    assert sorted(os.listdir(folder)) == ["a.parquet", "c.parquet"]
    assert (folder / "a.parquet").stat().st_ino == inode  # linked, not copied
    assert not any((tmp_path / SWAP_DIR).iterdir())
    elsewhere = tmp_path / "other" / "d.parquet"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"d")
    with pytest.raises(Exception, match="another folder"):
        swap_folder(tmp_path, folder, [(elsewhere, folder / "d.parquet")], [])
    assert elsewhere.exists() and sorted(os.listdir(folder)) == ["a.parquet", "c.parquet"]


def test_recovery_of_a_moved_or_copied_data_dir_touches_nothing_outside_it(tmp_path: Path) -> None:
    original = tmp_path / "original"
    folder = original / "lake" / "trades" / "market=spot" / "symbol=X"
    staging = original / "staging" / "trades" / "market=spot" / "symbol=X"
    folder.mkdir(parents=True)
    staging.mkdir(parents=True)
    for f in (folder / "2024-01-01_2024-01-01.parquet", staging / "2024-01-02_2024-01-02.parquet"):
        f.write_bytes(b"old")
    new_tmp = folder / f".2024-01-01_2024-01-02.parquet.tmp-{2**22 + 7}-deadbeef"
    new_tmp.write_bytes(b"new")
    # A journal of the earlier per-file swap, with absolute removals, as a killed run left it.
    (folder / LEGACY_JOURNAL_NAME).write_text(json.dumps({
        "moves": [{"tmp": new_tmp.name, "final": "2024-01-01_2024-01-02.parquet"}],
        "remove": [str(folder / "2024-01-01_2024-01-01.parquet"), str(staging / "2024-01-02_2024-01-02.parquet")],
    }))
    # And a work folder whose target tries to leave the data dir.
    evil = original / SWAP_DIR / "1-00"
    (evil / "set").mkdir(parents=True)
    (evil / "set" / "x.parquet").write_bytes(b"x")
    (evil / "ready").write_bytes(b"")
    (evil / "swap.json").write_text(json.dumps({"target": "../../outside"}))
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
    before = sorted(str(p) for p in original.rglob("*"))
    assert recover_swaps(copy) == (2, [])
    assert sorted(str(p) for p in original.rglob("*")) == before  # the original is untouched
    cfolder = copy / "lake" / "trades" / "market=spot" / "symbol=X"
    assert sorted(os.listdir(cfolder)) == ["2024-01-01_2024-01-02.parquet"]
    # The staged file is left to the merge (which drops it once the lake holds it).
    assert (copy / "staging" / "trades" / "market=spot" / "symbol=X" / "2024-01-02_2024-01-02.parquet").exists()
    assert not (tmp_path / "outside").exists() and not any((copy / SWAP_DIR).iterdir())


def test_sweep_removes_only_this_tools_temporaries_in_its_own_folders(tmp_path: Path) -> None:
    dead = 2**22 + 99
    ours = tmp_path / "lake" / "trades" / f".a.parquet{TMP_MARK}{dead}-deadbeef"
    foreign = [
        tmp_path / "notes" / f".a.parquet{TMP_MARK}{dead}-deadbeef",  # not a folder this tool writes
        tmp_path / "lake" / ".vim.swp.tmp-x",  # another program's temporary in the lake
        tmp_path / "lake" / f".b{TMP_MARK}{dead}-nothex!!",
    ]
    for p in [ours, *foreign]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path, check_owner=False) == 1
    assert not ours.exists() and all(p.exists() for p in foreign)
