"""Fixed costs kept off every run: kernel warm-up, the cache block, heartbeats to a temporary server."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

# In a fresh interpreter: warm up, then run a real conversion, merge and features; the
# dispatchers must not have needed another specialisation (or the warm-up warmed nothing useful).
_WARM_THEN_RUN = """
import asyncio, sys
from datetime import date
from pathlib import Path
from tasks.features import bars_nb
from tasks.convert import csv_parse_nb
from tasks.lake import digest_nb
from tasks.warmup import warm_up

kernels = {"parser": csv_parse_nb.simple_rows, "digest": digest_nb.day_runs, "bars": bars_nb.imbalance_bars}
assert all(not k.signatures for k in kernels.values()), "kernels compiled before the warm-up"
warm_up(["ema_dollar_imbalance"])
after_warm_up = {name: len(k.signatures) for name, k in kernels.items()}
assert all(after_warm_up.values()), after_warm_up

from tasks.lake.compact import compact_symbol
from tasks.features.incremental import compute_feature, parse_feature
from tasks.lake.ingest import ingest_archive
from tasks.settings import Settings
from tests.fake_archive import FakeArchive, publish_day
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.download import download_archive, fetch_checksums
from tasks.source.http import HttpOptions

data = Path(sys.argv[1])
spec = ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, 1))
settings = Settings(data_dir=data, symbols=("BTCUSDT",), start=spec.first_day, end=spec.first_day)
with FakeArchive() as fa:
    publish_day(fa, "spot", "BTCUSDT", spec.first_day, 20_000, 1, 1)
    (pub,) = asyncio.run(fetch_checksums([spec], fa.base_url, HttpOptions(), 1))
    asyncio.run(download_archive(spec, pub.sha256, fa.base_url, data, HttpOptions()))
ingest_archive(spec, pub.sha256, data, settings.convert_options)
compact_symbol(data, "spot", "BTCUSDT", settings.target_file_bytes, settings.convert_options, True)
result = compute_feature(data, "spot", "BTCUSDT", parse_feature("ema_dollar_imbalance"))
assert result.trades == 20_000, result
after_run = {name: len(k.signatures) for name, k in kernels.items()}
assert after_run == after_warm_up, (after_warm_up, after_run)
print("ok", after_run)
"""


def test_warm_up_compiles_what_a_run_then_uses(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_WARM_THEN_RUN), str(tmp_path / "data")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr


def test_warm_up_failure_is_harmless_and_runs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from tasks import warmup

    calls: list[tuple[str, ...]] = []
    done = threading.Event()

    def boom(features: tuple[str, ...]) -> None:
        calls.append(features)
        done.set()
        raise RuntimeError("no kernels today")

    monkeypatch.setattr(warmup, "warm_up", boom)
    monkeypatch.setattr(warmup, "_STARTED", threading.Event())
    warmup.warm_up_in_background(["ema_dollar_imbalance"])
    warmup.warm_up_in_background(["ema_dollar_imbalance"])
    assert done.wait(10)
    assert calls == [("ema_dollar_imbalance",)]


@pytest.mark.slow
def test_cache_block_is_saved_once_then_only_read(prefect_api: str, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.filesystems import LocalFileSystem

    from flows.full_pipeline import CACHE_DIR, cache_storage

    first = cache_storage(tmp_path)
    assert isinstance(first, LocalFileSystem) and first.basepath == str(tmp_path / CACHE_DIR)
    doc_id = first._block_document_id
    with get_client(sync_client=True) as client:
        before = client.read_block_document(doc_id)
        second = cache_storage(tmp_path)
        after = client.read_block_document(doc_id)
    assert second._block_document_id == doc_id and second.basepath == first.basepath
    assert after.updated == before.updated and after.data == before.data  # read, not saved again
    other = cache_storage(tmp_path / "elsewhere")
    assert other.basepath == str(tmp_path / "elsewhere" / CACHE_DIR) and other._block_document_id != doc_id


def test_no_heartbeats_to_the_temporary_server(server_template_db: Path) -> None:
    # In a fresh interpreter with no API configured, as `python -m flows.full_pipeline` runs
    # (in a data dir used before: its server starts from the migrated template).
    code = textwrap.dedent(f"""
        from pathlib import Path
        from prefect.settings import get_current_settings
        from flows.runtime import shared_api_server
        assert get_current_settings().flows.heartbeat_frequency is not None
        with shared_api_server(Path({str(server_template_db)!r})) as url:
            assert url and get_current_settings().flows.heartbeat_frequency is None
        assert get_current_settings().flows.heartbeat_frequency is not None
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr
