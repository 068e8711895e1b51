"""What a run leaves on the machine: no process after a kill, no socket beyond loopback, no
file outside the data dir, and no code run from a cache record in the data dir.

The CLI runs for real (`python -m flows.full_pipeline` against the fake archive) with HOME
and TMPDIR pointed at fresh empty folders and no Prefect or Dask settings, as a user runs it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pyarrow.dataset as ds
import pytest

from flows.runtime import RUN_DIR_PREFIX
from tasks.errors import UnsafeCacheRecord
from tasks.features.incremental import FeatureResult
from tasks.prefect_cache import SERIALIZER_TYPE, LakeJSONSerializer, decode, encode, vet_record
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.download import DownloadResult
from tests.conftest import REPO
from tests.fake_archive import FakeArchive, publish_day
from tests.test_infra import tree
from tests.test_runtime import http_status

# One xdist worker runs the whole module, so its module-scoped fixtures start once.
pytestmark = pytest.mark.xdist_group("test_process_safety")

GUARD = REPO / "flows" / "run_guard.py"
DAYS = 2
ROWS = 3_000
STALLED = "data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-02.zip"
#: How long after a SIGKILL of the CLI everything it started may take to be gone.
GRACE_S = 5.0


def fresh_env(home: Path, tmp: Path, **extra: str) -> dict[str, str]:
    """A user's environment with an empty HOME and TMPDIR, and no Prefect, Dask or lake settings.

    No warm runner (a terminal's default): these runs must leave nothing running;
    tests/test_warm_runner.py tests the runner.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "DASK_", "BINANCE_LAKE_", "XDG_", "NUMBA_"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONPATH=str(REPO), BINANCE_LAKE_KEEP_WARM="0")
    env.update(extra)
    return env


def cli(fa: FakeArchive, data: Path, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "flows.full_pipeline", "--symbols", "BTCUSDT", "--start", "2024-01-01",
            "--end", f"2024-01-{DAYS:02d}", "--granularity", "daily", "--data-dir", str(data),
            "--base-url", fa.base_url, "--listing-url", fa.listing_url, *extra]
    with open(log, "ab") as out:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def publish(fa: FakeArchive) -> None:
    for i in range(DAYS):
        publish_day(fa, "spot", "BTCUSDT", date(2024, 1, 1) + timedelta(days=i), ROWS, 1 + i * ROWS, i)


def running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (this machine's init does not reap orphans; a zombie has exited)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(procs: list[psutil.Process], timeout: float = GRACE_S) -> list[psutil.Process]:
    """Those of `procs` still running after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in procs if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return alive


def listening_procs(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `procs` with a listening TCP socket."""
    return [p for p in procs if any(c.status == psutil.CONN_LISTEN for c in p.net_connections("inet"))]


def describe_proc(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline()[:4])}"
    except psutil.Error as exc:
        return f"{proc.pid} ({type(exc).__name__})"


def leftovers(folder: Path) -> list[str]:
    """What is in `folder` now, except the empty `.prefect` Prefect creates when imported (README)."""
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    return [] if found == [".prefect"] and not any((folder / ".prefect").iterdir()) else found


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# --- the guard alone (fast) -----------------------------------------------------------------


def start_guard_under_a_parent(scratch: Path, *command: str) -> tuple[subprocess.Popen[bytes], psutil.Process]:
    """A shell that starts the guard (so the guard's parent can be killed), and the guard.

    The shell writes the guard's exit status to `<scratch>.status` when the guard exits.
    """
    cmd = " ".join([sys.executable, str(GUARD), "--parent", "$$", "--remove", str(scratch), "--", *command])
    parent = subprocess.Popen(["bash", "-c", f"{cmd} & wait $!; echo $? >{scratch}.status"], start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = psutil.Process(parent.pid).children()
        if kids and len(kids[0].children()) == len(command[:1]):
            return parent, kids[0]
        time.sleep(0.02)
    raise AssertionError("the guard did not start")


def test_guard_kills_its_command_and_removes_the_folder_when_its_parent_is_killed(tmp_path: Path) -> None:
    scratch = tmp_path / "run"
    (scratch / "prefect").mkdir(parents=True)
    (scratch / "prefect" / "prefect.db").write_bytes(b"x" * 1000)
    parent, guard = start_guard_under_a_parent(scratch, "sleep", "600")
    child = guard.children()[0]
    t0 = time.monotonic()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    alive = wait_gone([guard, child])
    elapsed = time.monotonic() - t0
    assert alive == [] and not scratch.exists(), (alive, elapsed)
    print(f"guard and its command gone, folder removed, {elapsed:.2f} s after the parent's SIGKILL")


def test_guard_passes_sigterm_on_and_keeps_the_folder(tmp_path: Path) -> None:
    scratch = tmp_path / "run"
    scratch.mkdir()
    parent, guard = start_guard_under_a_parent(scratch, "sleep", "600")
    try:
        child = guard.children()[0]
        guard.terminate()  # how the CLI stops its server
        assert parent.wait(timeout=GRACE_S) == 0
        # The guard's status is its command's: killed by the SIGTERM it passed on.
        assert Path(f"{scratch}.status").read_text().strip() == str(128 + signal.SIGTERM)
        assert wait_gone([child]) == []
        assert scratch.exists()  # the CLI removes it itself, after the server stopped
    finally:
        parent.kill()
        parent.wait()


def test_guard_passes_on_a_sigterm_that_comes_while_it_starts_its_command(tmp_path: Path) -> None:
    """SIGTERM the moment the command's process exists, before Popen has returned in the guard.

    Before the guard held SIGTERM back around Popen, such a signal found no child to pass to
    and the guard waited on its command forever (about 1 start in 6 hung here).
    """
    hung = []
    for i in range(20):
        scratch = tmp_path / f"run{i}"
        command = [sys.executable, str(GUARD), "--parent", "$$", "--remove", str(scratch), "--", "sleep", "600"]
        parent = subprocess.Popen(["bash", "-c", f"{' '.join(command)} & wait $!"], start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # no sleep: catch the child right after its fork
                kids = psutil.Process(parent.pid).children()
                if kids and kids[0].children():
                    break
            else:
                raise AssertionError("the guard did not start")
            kids[0].terminate()
            try:
                parent.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                hung.append(i)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is gone when all went well
                os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert hung == [], f"the guard ignored an early SIGTERM in starts {hung}"


def test_a_killed_guard_takes_its_command_with_it(tmp_path: Path) -> None:
    """The command's parent-death signal: a SIGKILLed guard cannot leave the server running."""
    parent, guard = start_guard_under_a_parent(tmp_path, "sleep", "600")
    try:
        child = guard.children()[0]
        guard.kill()
        alive = wait_gone([child])
        assert alive == []
    finally:
        parent.kill()
        parent.wait()


# --- cache records (fast) ------------------------------------------------------------------


SPEC = ArchiveSpec("spot", "BTCUSDT", "daily", date(2024, 1, 2))


def record(serializer: dict[str, Any], result: str) -> bytes:
    return json.dumps({"metadata": {"storage_key": "k", "expiration": None, "serializer": serializer,
                                    "prefect_version": "3.9.1", "storage_block_id": None},
                       "result": result}).encode()


class _Touch:
    """Unpickling this runs `touch path`: what an attacker who can write the data dir plants."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def pickle_record(canary: Path) -> bytes:
    """A cache record naming Prefect's pickle serializer, whose payload runs `touch canary`."""
    payload = base64.encodebytes(cloudpickle.dumps(_Touch(canary))).decode()
    return record({"type": "pickle", "picklelib": "cloudpickle"}, payload)


def prefect_json_record(canary: Path) -> bytes:
    """A record naming Prefect's *json* serializer with `object_decoder` = subprocess.run:
    json.loads then calls subprocess.run({"touch": 0, canary: 0}), i.e. runs `touch canary`."""
    return record({"type": "json", "object_decoder": "subprocess.run"}, json.dumps({"touch": 0, str(canary): 0}))


@pytest.mark.parametrize("make", [pickle_record, prefect_json_record], ids=["pickle", "prefect-json"])
def test_hostile_records_run_code_in_prefect_but_are_refused_here(make: Any, tmp_path: Path) -> None:
    from prefect._internal.result_records import ResultRecord

    canary = tmp_path / "pwned"
    hostile = make(canary)
    # The payload is live: Prefect itself, reading the record, runs it.
    with contextlib.suppress(Exception):  # whatever it returns or raises, the code has run
        ResultRecord.deserialize(hostile)
    assert canary.exists()
    canary.unlink()
    with pytest.raises(UnsafeCacheRecord, match="serializer"):
        vet_record("records/k", hostile)
    assert not canary.exists()


@pytest.mark.parametrize(("content", "reason"), [
    (b"\x80\x04garbage", "not JSON"),
    (json.dumps([1, 2]).encode(), "not a cache record"),
    (record({"type": SERIALIZER_TYPE, "jsonlib": "pickle"}, "1"), "serializer"),
    (record({"type": SERIALIZER_TYPE}, json.dumps({"$": "subprocess.Popen", "v": {"args": ["touch", "x"]}})),
     "unknown tag"),
    (record({"type": SERIALIZER_TYPE}, json.dumps({"__class__": "os.system", "data": "touch x"})), "not an encoded"),
    (record({"type": SERIALIZER_TYPE}, json.dumps({"$": "FeatureResult", "v": {"feature": "f", "evil": 1}})),
     "no field"),
    (record({"type": SERIALIZER_TYPE}, json.dumps({"$": "FeatureResult", "v": {"feature": "f", "market": "spot",
     "symbol": "X", "mode": "m", "trades": "many", "bars": 1, "parts": 1, "seconds": 0.1}})), "trades"),
    (record({"type": SERIALIZER_TYPE}, json.dumps({"$": "ArchiveSpec", "v": {"market": "spot", "symbol": "../x",
     "granularity": "daily", "period": {"$": "date", "v": "2024-01-01"}}})), "ArchiveSpec"),
    (b" " * (2 << 20), "bytes"),
])
def test_records_that_are_not_ours_are_refused_with_the_reason(content: bytes, reason: str) -> None:
    with pytest.raises(UnsafeCacheRecord, match=reason) as err:
        vet_record("data/.prefect-cache/abc", content)
    assert "data/.prefect-cache/abc" in str(err.value)


def test_results_round_trip_through_the_record_format() -> None:
    dl = DownloadResult(SPEC, Path("/lake/archive/x.zip"), "ab" * 32, 123, 0.5, True)
    feat = FeatureResult("ema", "spot", "BTCUSDT", "extended", 10, 2, 1, 0.25, "why")
    for value in (dl, feat, [dl, (1, "a", None)], {"k": date(2024, 1, 1)}):
        blob = LakeJSONSerializer().dumps(value)
        assert LakeJSONSerializer().loads(blob) == value
        assert decode(encode(value)) == value
    with pytest.raises(TypeError, match="CACHED_TYPES"):
        encode(object())
    good = record({"type": SERIALIZER_TYPE}, LakeJSONSerializer().dumps(dl).decode())
    assert json.loads(vet_record("k", good)) == json.loads(good)


# --- the real CLI ---------------------------------------------------------------------------


@dataclass
class Watched:
    """A CLI run and what was seen of it while it ran."""

    returncode: int
    log: str
    # (pid, ip, port) of every listening socket of the CLI and its children.
    listening: set[tuple[int, str, int]] = field(default_factory=set)
    # Answers of the CLI process's own ports (the Dask cluster's) to dashboard and metrics paths.
    answers: dict[tuple[int, str], int | str] = field(default_factory=dict)


def run_watched(fa: FakeArchive, data: Path, env: dict[str, str], log: Path, *extra: str) -> Watched:
    proc = cli(fa, data, env, log, *extra)
    seen: Watched = Watched(-1, "")
    while proc.poll() is None:
        for p in tree(proc.pid):
            try:
                conns = p.net_connections("inet")
            except psutil.Error:
                continue
            for c in conns:
                if c.status != psutil.CONN_LISTEN:
                    continue
                key = (p.pid, c.laddr.ip, c.laddr.port)
                if key not in seen.listening and p.pid == proc.pid:
                    for path in ("/status", "/metrics", "/info/main/workers.html"):
                        seen.answers[(c.laddr.port, path)] = http_status(c.laddr.port, path)
                seen.listening.add(key)
        time.sleep(0.02)
    seen.returncode = proc.returncode
    seen.log = log.read_text(errors="replace")
    return seen


@dataclass
class FirstRun:
    home: Path
    tmp: Path
    data: Path
    run: Watched
    fa: FakeArchive
    base: Path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    """One clean CLI run, ad hoc (its own temporary API server), into a fresh data dir."""
    base = tmp_path_factory.mktemp("safety")
    home, tmp, data = base / "home", base / "tmp", base / "data"
    home.mkdir()
    tmp.mkdir()
    with FakeArchive() as fa:
        publish(fa)
        run = run_watched(fa, data, fresh_env(home, tmp), base / "run.log")
        yield FirstRun(home, tmp, data, run, fa, base)


@pytest.mark.slow
def test_a_run_leaves_nothing_outside_its_data_dir(first_run: FirstRun) -> None:
    run = first_run.run
    assert run.returncode == 0, run.log[-3000:]
    # No ~/.prefect/prefect.db, storage or memo store; no dask-scratch-space, no run folder.
    assert leftovers(first_run.home) == []
    assert leftovers(first_run.tmp) == []
    # The cache records are in the data dir, in the lake's JSON format.
    records = list((first_run.data / ".prefect-cache").iterdir())
    assert len(records) == DAYS + 1  # the downloads and the default feature
    for path in records:
        assert json.loads(path.read_bytes())["metadata"]["serializer"] == {"type": SERIALIZER_TYPE}


@pytest.mark.slow
def test_a_run_listens_on_loopback_only_and_serves_no_dashboard(first_run: FirstRun) -> None:
    run = first_run.run
    assert run.returncode == 0, run.log[-3000:]
    assert run.listening, "no listening socket seen: the sampling missed the run"
    assert {ip for _, ip, _ in run.listening} <= {"127.0.0.1", "::1"}, run.listening
    # The in-process Dask cluster's HTTP servers (scheduler and worker) were seen, and serve
    # neither a dashboard nor metrics, logs or call stacks: every path is a 404.
    assert run.answers, run.listening
    assert set(run.answers.values()) == {404}, run.answers
    assert "dashboard is available" not in run.log


@pytest.mark.slow
def test_rewritten_cache_records_run_nothing_and_the_tasks_run_again(first_run: FirstRun) -> None:
    """Every record rewritten by an attacker: the next run executes none, re-runs, ends as a clean run."""
    assert first_run.run.returncode == 0
    data, base = first_run.data, first_run.base
    lake = {p: p.read_bytes() for p in (data / "lake").rglob("*.parquet")}
    canaries = []
    for i, path in enumerate(sorted((data / ".prefect-cache").iterdir())):
        canary = base / f"pwned-{i}"
        path.write_bytes((pickle_record if i % 2 == 0 else prefect_json_record)(canary))
        canaries.append(canary)
    # Archives already in the lake are not even looked up in the cache: without the convert
    # step, every download's record is read, and the feature's.
    run = run_watched(first_run.fa, data, fresh_env(first_run.home, first_run.tmp), base / "run2.log",
                      "--steps", "download,features")
    assert run.returncode == 0, run.log[-3000:]
    assert [c for c in canaries if c.exists()] == []
    assert run.log.count("cache record refused") >= len(canaries), run.log[-3000:]
    # The tasks ran again and wrote their records afresh, in the lake's format.
    for path in (data / ".prefect-cache").iterdir():
        assert json.loads(path.read_bytes())["metadata"]["serializer"] == {"type": SERIALIZER_TYPE}
    assert {p: p.read_bytes() for p in (data / "lake").rglob("*.parquet")} == lake
    assert leftovers(first_run.home) == [] and leftovers(first_run.tmp) == []


@pytest.mark.slow
@pytest.mark.parametrize("api", ["temporary server", "configured API", "Dask worker processes"])
def test_a_sigkilled_cli_leaves_nothing_running_nor_behind(
    api: str, fake_archive: FakeArchive, tmp_path: Path, used_data_dir: Path, request: pytest.FixtureRequest
) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    publish(fake_archive)
    fake_archive.inject(STALLED, "stall", delay=60)  # holds the run mid-download
    extra = {"PREFECT_API_URL": request.getfixturevalue("prefect_api")} if api == "configured API" else {}
    if api == "Dask worker processes":  # a local cluster of nannies and worker processes, with the server
        extra |= {"BINANCE_LAKE_DASK_PROCESSES": "true", "BINANCE_LAKE_DASK_WORKERS": "2",
                  "BINANCE_LAKE_DASK_THREADS_PER_WORKER": "1"}
    proc = cli(fake_archive, used_data_dir, fresh_env(home, tmp, **extra), tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 120
        while not any(r.path.endswith(STALLED) for r in fake_archive.requests):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached the stalled download"
            time.sleep(0.05)
        # The guard (and the server); with worker processes, the 2 workers too, once they listen
        # (the cluster starts with the first conversion, once the verified archive has waited
        # ingest_batch_wait_s for company; a worker process still importing cannot react yet).
        want = {"temporary server": 1, "configured API": 0, "Dask worker processes": 3}[api]
        while True:
            started = [p for p in tree(proc.pid) if p.pid != proc.pid and running(p)]
            with contextlib.suppress(psutil.Error):
                if len(listening_procs(started)) >= want and started:
                    break
            assert time.monotonic() < deadline, [describe_proc(p) for p in started]
            time.sleep(0.05)
        ports = {c.laddr.port for p in started for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        entries = list(tmp.iterdir())
        assert len(entries) == 1 and entries[0].name.startswith(RUN_DIR_PREFIX), entries
        t0 = time.monotonic()
        proc.send_signal(signal.SIGKILL)  # the CLI alone, not its process group
        proc.wait()
        alive = wait_gone(started)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert started, "no guard (and no server) was started"
    assert alive == [], [describe_proc(p) for p in alive]
    assert all(port_closed(port) for port in ports), ports
    if api != "configured API":
        assert ports, "the temporary server was not listening"
    assert leftovers(tmp) == [] and leftovers(home) == []
    print(f"{api}: {len(started)} processes gone and the run folder removed {elapsed:.2f} s after SIGKILL")


@pytest.mark.slow
def test_ctrl_c_exits_130_in_one_line_leaving_nothing_running_and_the_next_run_resumes(
    fake_archive: FakeArchive, tmp_path: Path, used_data_dir: Path
) -> None:
    home, tmp, data, log = tmp_path / "home", tmp_path / "tmp", used_data_dir, tmp_path / "run.log"
    home.mkdir()
    tmp.mkdir()
    publish(fake_archive)
    fake_archive.inject(STALLED, "stall", delay=60)  # holds the run mid-download
    args = [sys.executable, "-m", "flows.full_pipeline", "--symbols", "BTCUSDT", "--start", "2024-01-01",
            "--end", f"2024-01-{DAYS:02d}", "--granularity", "daily", "--data-dir", str(data),
            "--base-url", fake_archive.base_url, "--listing-url", fake_archive.listing_url]
    with open(log, "wb") as out:  # its own process group, which a terminal's Ctrl-C signals as a whole
        proc = subprocess.Popen(args, cwd=REPO, env=fresh_env(home, tmp), stdout=out, stderr=subprocess.PIPE,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(r.path.endswith(STALLED) for r in fake_archive.requests):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        started = [p for p in tree(proc.pid) if p.pid != proc.pid]
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)  # not minutes, as the stalled download's deadline would take
        print(f"Ctrl-C mid-download: exit {proc.returncode} after {time.monotonic() - t0:.2f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    ours = [line for line in err.decode().splitlines() if line.startswith("interrupted:")]
    assert len(ours) == 1 and "Traceback" not in err.decode() + log.read_text(), err.decode()[-3000:]
    assert wait_gone(started) == [] and leftovers(tmp) == []
    fake_archive.clear_faults()
    again = cli(fake_archive, data, fresh_env(home, tmp), log)
    assert again.wait(timeout=300) == 0, log.read_text()[-3000:]
    ids = ds.dataset(data / "lake" / "trades", partitioning="hive").to_table(columns=["trade_id"])["trade_id"]
    assert sorted(ids.to_pylist()) == list(range(1, DAYS * ROWS + 1))


@pytest.mark.slow
def test_a_server_that_cannot_start_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    # `python -m uvicorn` finds this one first on PYTHONPATH: it exits at once with status 7.
    fake = tmp_path / "fake" / "uvicorn"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import sys\nsys.exit(7)\n")
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = fresh_env(home, tmp)
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), str(REPO)])
    done = subprocess.run([sys.executable, "-m", "flows.full_pipeline", "--symbols", "BTCUSDT", "--start",
                           "2024-01-01", "--end", "2024-01-01", "--data-dir", str(tmp_path / "data"),
                           # never reached (the server fails first), but not the internet were it to be
                           "--base-url", "http://127.0.0.1:9", "--listing-url", "http://127.0.0.1:9"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: temporary Prefect API server failed: http://127.0.0.1:"), done.stderr
    assert "exited with status 7" in done.stderr and "Traceback" not in done.stderr
    assert leftovers(tmp) == [] and leftovers(home) == []
