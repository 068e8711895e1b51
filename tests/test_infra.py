"""infra/: the start/stop scripts, run for real, and the compose file, checked offline.

The slow tests start the whole one-machine set-up once (`infra/start.sh` on free loopback
ports, a temporary run dir, a temporary Prefect home), drive the pipeline through it against
the fake archive (the CLI as an operator runs it, and a deployment run by the process
worker), then `infra/stop.sh` it and prove nothing it started is left. The compose set-up
cannot run here (no container engine), so its file is checked for what would break it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.dataset as ds
import pytest
import yaml

from tests.conftest import REPO
from tests.fake_archive import FakeArchive, PublishedArchive, publish_day

# One xdist worker runs the whole module, so its module-scoped fixtures start once.
pytestmark = pytest.mark.xdist_group("test_infra")

INFRA = REPO / "infra"
README = INFRA / "README.md"
COMPONENTS = ("prefect-server", "dask-scheduler", "dask-workers", "prefect-worker")
DASK_WORKERS = 2
DAYS = 2
ROWS = 2_000


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick), so runs never collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running(pid: int) -> bool:
    """Alive and not a zombie: this machine's init does not reap orphans, and a zombie has exited."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tree(pid: int) -> list[psutil.Process]:
    """`pid` and its descendants alive now (Dask worker processes, flow-run subprocesses)."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@dataclass
class Infra:
    """The set-up started by infra/start.sh for this module."""

    run_dir: Path
    env: dict[str, str]
    api_url: str
    dask_address: str
    worker_name: str
    # Every process of ours observed alive, for the teardown's safety net. psutil.Process
    # objects, not PIDs: they know their start time, so a PID reused since is never killed.
    seen: list[psutil.Process]

    def remember(self) -> None:
        for pid in self.pids().values():
            self.seen.extend(tree(pid))

    def pids(self) -> dict[str, int]:
        """Component -> PID, from the PID files."""
        return {p.stem: int(p.read_text()) for p in self.run_dir.glob("*.pid")}

    def script(self, name: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(INFRA / name), *args], env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def logs(self) -> str:
        """The components' log tails, for assertion messages."""
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.run_dir.glob("*.log")))

    def client_env(self, home: Path) -> dict[str, str]:
        """Environment of a process that reports to this set-up's API (the CLI, `prefect deploy`)."""
        return {**self.env, "PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(home),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """infra/start.sh once for the module; infra/stop.sh always afterwards, even on failure."""
    base = tmp_path_factory.mktemp("infra")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" and not k.startswith("BINANCE_LAKE_")}
    env.update({
        "BINANCE_LAKE_RUN_DIR": str(base / "run"),
        "BINANCE_LAKE_DATA_DIR": str(base / "data"),
        # Its own database: nothing from the developer's ~/.prefect, nothing left in it.
        "PREFECT_HOME": str(base / "prefect-home"),
        "PREFECT_PORT": str(free_port()),
        "DASK_SCHEDULER_PORT": str(free_port()),
        "DASK_WORKERS": str(DASK_WORKERS),
        # Unique, so the readiness check cannot be fooled by another worker of the same name.
        "BINANCE_LAKE_WORKER_NAME": f"test-worker-{uuid.uuid4().hex[:8]}",
        # The worker picks a deployment run up within a second, not the default 10 s.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        # No scheduled runs: a deployment with a schedule (daily-update) must run only when a
        # test triggers it, not whenever the server's scheduler decides.
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "BINANCE_LAKE_STOP_TIMEOUT": "15",
        # A narrow terminal, as many CI shells declare: the scripts must still recognise their
        # processes by their full command lines (ps cuts them at $COLUMNS unless told not to).
        "COLUMNS": "40",
    })
    port = env["PREFECT_PORT"]
    ready = Infra(base / "run", env, f"http://127.0.0.1:{port}/api", f"tcp://127.0.0.1:{env['DASK_SCHEDULER_PORT']}",
                  env["BINANCE_LAKE_WORKER_NAME"], [])
    try:
        started = ready.script("start.sh")
        ready.remember()
        assert started.returncode == 0, started.stdout + started.stderr + ready.logs()
        assert f"Prefect UI:         http://127.0.0.1:{port}" in started.stdout, started.stdout
        yield ready
    finally:
        ready.remember()
        ready.script("stop.sh")
        # Safety net for the processes this fixture started: a broken stop.sh must not leave
        # servers behind on a shared machine (the stop test reports the failure itself).
        for proc in ready.seen:
            with contextlib.suppress(psutil.NoSuchProcess):
                if running(proc.pid):
                    proc.kill()  # psutil refuses if the PID now belongs to another process


def scheduler_transitions(address: str) -> int:
    """How many task transitions the scheduler has processed: grows only when tasks run there."""
    from distributed import Client

    with Client(address, timeout=10) as client:
        return int(client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter))


def publish(fa: FakeArchive, first_day: date) -> list[PublishedArchive]:
    return [publish_day(fa, "spot", "BTCUSDT", first_day + timedelta(days=i), ROWS, 1 + i * ROWS, i)
            for i in range(DAYS)]


def backfill_parameters(first_day: date) -> dict[str, Any]:
    """The back-fill's run-form parameters for DAYS daily spot archives."""
    return {"market": "spot", "symbols": ["BTCUSDT"], "start": first_day.isoformat(),
            "end": (first_day + timedelta(days=DAYS - 1)).isoformat(), "granularity": "daily"}


def backfill_env(fa: FakeArchive, data: Path) -> dict[str, Any]:
    """What the back-fill takes from the worker's environment, given to this run as job variables."""
    return {"env": {"BINANCE_LAKE_DATA_DIR": str(data), "BINANCE_LAKE_BASE_URL": fa.base_url,
                    "BINANCE_LAKE_LISTING_URL": fa.listing_url, "BINANCE_LAKE_RETRIES": "1",
                    "BINANCE_LAKE_RETRY_BASE_DELAY": "0.1"}}


def assert_lake_holds(data: Path, pubs: list[PublishedArchive]) -> None:
    """The lake holds exactly the published trades (read as a dataset: whatever the file layout)."""
    lake = ds.dataset(data / "lake" / "trades", format="parquet", partitioning="hive")
    ids = np.sort(lake.to_table(columns=["trade_id"])["trade_id"].to_numpy())
    np.testing.assert_array_equal(ids, np.sort(np.concatenate([p.expected().id for p in pubs])))


def assert_completed_with_artifact(api_url: str, flow_run_id: uuid.UUID) -> None:
    """The run is Completed in the API, ran its conversions as task runs, and left its table artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        assert run.state is not None and run.state.is_completed(), run.state
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["ingest-archives"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
        assert [a.type for a in artifacts] == ["table"], artifacts
        # Task runs reported from the Dask worker processes reached this server too.
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        ingests = [t for t in task_runs if t.name.startswith("convert ")]
        assert len(ingests) == DAYS and all(t.state is not None and t.state.is_completed() for t in ingests), [
            (t.name, t.state_name) for t in task_runs]


@pytest.mark.slow
def test_start_brings_up_every_component(infra: Infra) -> None:
    from distributed import Client

    pids = infra.pids()
    assert set(pids) == set(COMPONENTS), pids
    assert all(running(pid) for pid in pids.values()), infra.logs()
    # Nothing listens beyond loopback: a Dask worker reachable from the network runs anyone's code.
    sockets = {(c.laddr.ip, c.laddr.port) for pid in pids.values() for p in tree(pid)
               for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert len(sockets) >= 2 + 3 * DASK_WORKERS and {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets
    with urllib.request.urlopen(f"{infra.api_url}/health", timeout=5) as answer:
        assert answer.read() == b"true"
    with Client(infra.dask_address, timeout=10) as client:
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == DASK_WORKERS
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: infra.api_url}), get_client(sync_client=True) as client:
        pool = client.read_work_pool("binance-lake")
        assert pool.type == "process"
        assert infra.worker_name in [w.name for w in client.read_workers_for_work_pool("binance-lake")]
    # Starting again is a no-op: the same processes, nothing launched twice.
    again = infra.script("start.sh")
    assert again.returncode == 0, again.stderr
    assert infra.pids() == pids
    status = infra.script("status.sh", timeout=60)
    assert status.returncode == 0 and "healthy" in status.stdout, status.stdout + status.stderr


@pytest.mark.slow
def test_cli_runs_the_pipeline_through_the_infra(infra: Infra, fake_archive: FakeArchive, tmp_path: Path) -> None:
    pubs = publish(fake_archive, date(2024, 1, 1))
    data = tmp_path / "data"
    before = scheduler_transitions(infra.dask_address)
    cmd = [sys.executable, "-m", "flows.full_pipeline", "--data-dir", str(data), "--symbols", "BTCUSDT",
           "--start", "2024-01-01", "--end", f"2024-01-{DAYS:02d}", "--granularity", "daily",
           "--base-url", fake_archive.base_url, "--listing-url", fake_archive.listing_url,
           "--dask-address", infra.dask_address]
    done = subprocess.run(cmd, cwd=REPO, env=infra.client_env(tmp_path / "home"), capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_lake_holds(data, pubs)
    assert scheduler_transitions(infra.dask_address) > before  # converted on the shared cluster

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: infra.api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["full-pipeline"])))
    mine = [r for r in runs if r.parameters.get("settings", {}).get("data_dir") == str(data)]
    assert len(mine) == 1, [(r.name, r.parameters) for r in runs]
    assert_completed_with_artifact(infra.api_url, mine[0].id)


@dataclass(frozen=True)
class DeploymentCase:
    """A deployment from prefect.yaml, run by the process worker against the fake archive.

    `publish` puts on the (fresh, per test) fake archive what the run should ingest and
    returns it; `parameters(fake_archive, data_dir)` are the run's parameters. The run must
    complete with the lake holding exactly what was published. Scheduled deployments run only
    when triggered here: the test server runs no scheduler service.
    """

    name: str  # the deployment's name in prefect.yaml
    flow: str  # its flow's name: the run is addressed as "<flow>/<name>"
    publish: Callable[[FakeArchive], list[PublishedArchive]]
    parameters: Callable[[FakeArchive, Path], dict[str, Any]]
    #: The run's job variables (the process worker's environment for it), if any.
    job_variables: Callable[[FakeArchive, Path], dict[str, Any]] | None = None


BACKFILL_FROM = date(2024, 2, 1)
# The daily update replayed as of this UTC date: with an empty lake and a re-probe window of
# DAYS days it fetches the DAYS days before it.
DAILY_TODAY = date(2024, 3, 1) + timedelta(days=DAYS)
DEPLOYMENTS = [
    DeploymentCase("backfill", "backfill", lambda fa: publish(fa, BACKFILL_FROM),
                   lambda fa, data: backfill_parameters(BACKFILL_FROM), backfill_env),
    DeploymentCase("daily-update", "daily-update", lambda fa: publish(fa, DAILY_TODAY - timedelta(days=DAYS)),
                   lambda fa, data: {"data_dir": str(data), "market": "spot", "symbols": ["BTCUSDT"],
                                     "reprobe_days": DAYS, "today": DAILY_TODAY.isoformat(),
                                     "base_url": fa.base_url, "listing_url": fa.listing_url}),
]


@pytest.fixture(scope="module")
def deployed(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`prefect deploy` every case's deployment from prefect.yaml, as an operator would."""
    names = [arg for case in DEPLOYMENTS for arg in ("--name", case.name)]
    home = tmp_path_factory.mktemp("deploy-home")
    done = subprocess.run(["prefect", "--no-prompt", "deploy", *names], cwd=REPO, env=infra.client_env(home),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("deployed")
@pytest.mark.parametrize("case", DEPLOYMENTS, ids=lambda c: c.name)
def test_deployment_runs_on_the_process_worker(
    infra: Infra, case: DeploymentCase, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    pubs = case.publish(fake_archive)
    data = tmp_path / "data"
    before = scheduler_transitions(infra.dask_address)
    with temporary_settings(updates={PREFECT_API_URL: infra.api_url}):
        run = run_deployment(f"{case.flow}/{case.name}", parameters=case.parameters(fake_archive, data),
                             job_variables=case.job_variables(fake_archive, data) if case.job_variables else None,
                             timeout=150, poll_interval=1, as_subflow=False)
    assert run.state is not None and run.state.is_final(), f"{run.state}\n{infra.logs()}"
    assert run.state.is_completed(), f"{run.state}\n{infra.logs()}"
    assert_lake_holds(data, pubs)
    # The worker's BINANCE_LAKE_DASK_ADDRESS sent the run's conversions to the shared
    # cluster, rather than a private local cluster per run.
    assert scheduler_transitions(infra.dask_address) > before
    assert_completed_with_artifact(infra.api_url, run.id)


@pytest.mark.slow
def test_stop_stops_everything_and_is_idempotent(infra: Infra) -> None:
    """Last of the module (it stops the set-up the others use)."""
    pids = infra.pids()
    assert set(pids) == set(COMPONENTS)
    infra.remember()
    everything = {proc.pid for pid in pids.values() for proc in tree(pid)}
    assert len(everything) > len(pids)  # the Dask worker processes at least
    t0 = time.monotonic()
    stopped = infra.script("stop.sh")
    assert stopped.returncode == 0, stopped.stderr
    assert [pid for pid in everything if running(pid)] == []
    assert list(infra.run_dir.glob("*.pid")) == []
    # SIGTERM was enough: nothing needed the SIGKILL escalation.
    assert "SIGKILL" not in stopped.stderr and time.monotonic() - t0 < 15, stopped.stderr
    again = infra.script("stop.sh")
    assert again.returncode == 0, again.stderr
    status = infra.script("status.sh", timeout=60)
    assert status.returncode == 3 and "does not answer" in status.stdout, status.stdout


# --- fast checks: no server started --------------------------------------------------------


def script_env(run_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINANCE_LAKE_")}
    return {**env, "BINANCE_LAKE_RUN_DIR": str(run_dir), "BINANCE_LAKE_DATA_DIR": str(run_dir / "data"), **extra}


def test_stop_removes_stale_pid_files_and_never_signals_a_reused_pid(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # A reused PID: alive, but not a Prefect server (it is this very test process).
    (run_dir / "prefect-server.pid").write_text(f"{os.getpid()}\n")
    (run_dir / "dask-scheduler.pid").write_text("999999999\n")  # no such process
    (run_dir / "dask-workers.pid").write_text("garbage\n")
    done = subprocess.run([str(INFRA / "stop.sh")], env=script_env(run_dir), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert list(run_dir.glob("*.pid")) == [] and "stale PID file" in done.stderr
    # Nothing to stop at all, not even a run dir: still success.
    done = subprocess.run([str(INFRA / "stop.sh")], env=script_env(tmp_path / "none"), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_start_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        done = subprocess.run([str(INFRA / "start.sh"), "prefect-server"],
                              env=script_env(tmp_path / "run", PREFECT_PORT=port), capture_output=True, text=True,
                              timeout=60, check=False)
    assert done.returncode == 1
    assert "already in use" in done.stderr and "PREFECT_PORT" in done.stderr, done.stderr
    assert list((tmp_path / "run").glob("*.pid")) == []


def documented(name: str) -> bool:
    """The README's environment tables name each variable in backquotes."""
    return f"`{name}`" in README.read_text()


def test_scripts_parse_and_document_their_variables() -> None:
    scripts = sorted(INFRA.glob("*.sh"))
    assert {p.name for p in scripts} >= {"start.sh", "stop.sh", "status.sh", "lib.sh"}
    for path in scripts:
        subprocess.run(["bash", "-n", str(path)], check=True)
        assert "set -euo pipefail" in path.read_text() or path.name == "lib.sh", path
    # Every setting read with a default in lib.sh is in the README's table.
    settings = set(re.findall(r"^([A-Z][A-Z0-9_]+)=\"\$\{\1:-", (INFRA / "lib.sh").read_text(), re.M))
    assert len(settings) >= 10
    assert sorted(s for s in settings if not documented(s)) == []
    if shutil.which("shellcheck"):  # not in the project's requirements: checked where installed
        done = subprocess.run(["shellcheck", "-x", *map(str, scripts)], cwd=REPO, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stdout


def test_compose_file_is_complete_and_documented() -> None:
    text = (INFRA / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert set(services) >= {"postgres", "prefect-server", "prefect-worker", "dask-scheduler", "dask-worker"}
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Every variable the file reads is explained in the README (and has a default or is required).
    variables = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    assert variables, "no variables?"
    assert sorted(v for v in variables if not documented(v)) == []
    # The Dask workers write the lake the flow run plans: the data volume must be mounted at
    # the same path in the worker (where flow runs execute) and in the Dask workers.
    def data_mounts(service: str) -> set[str]:
        mounts = set()
        for volume in services[service].get("volumes", []):
            source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
            if source == "lake-data":
                mounts.add(target)
        return mounts
    worker, dask_worker = data_mounts("prefect-worker"), data_mounts("dask-worker")
    assert len(worker) == 1 and worker == dask_worker, (worker, dask_worker)
    assert "lake-data" in compose["volumes"]
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert "pip install" in dockerfile and "requirements.txt" in dockerfile
    for name in ("prefect-worker", "dask-scheduler", "dask-worker"):
        assert services[name]["build"]["dockerfile"].endswith("Dockerfile"), name


# --- Dask TLS: the certificates script, and a TLS cluster started by start.sh ---------------

CERT_FILES = ("ca.pem", "ca-key.pem", "scheduler.pem", "scheduler-key.pem", "worker.pem", "worker-key.pem",
              "client.pem", "client-key.pem")


def make_certs(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(INFRA / "make-dask-certs.sh"), str(folder)], capture_output=True, text=True,
                          timeout=60, check=False)


def verifies(ca: Path, cert: Path) -> bool:
    done = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True,
                          check=False)
    return done.returncode == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_make_dask_certs_makes_a_ca_and_key_pairs_it_signs(tmp_path: Path) -> None:
    certs, other = tmp_path / "certs", tmp_path / "other"
    done = make_certs(certs)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in certs.iterdir()) == sorted(CERT_FILES)  # no temporary left
    assert certs.stat().st_mode & 0o777 == 0o700
    for name in CERT_FILES:
        mode = (certs / name).stat().st_mode & 0o777
        assert mode == (0o600 if name.endswith("-key.pem") else 0o644), (name, oct(mode))
    for role in ("scheduler", "worker", "client"):
        assert verifies(certs / "ca.pem", certs / f"{role}.pem"), role
    # A cluster's CA is never replaced by accident.
    again = make_certs(certs)
    assert again.returncode == 1 and "refusing to replace" in again.stderr
    # Another run makes another CA: its certificates do not pass for this cluster's.
    assert make_certs(other).returncode == 0
    assert not verifies(certs / "ca.pem", other / "client.pem")


def refused(address: str, certs: Path, client_cert: bool = False) -> bool:
    """Whether a TLS client that trusts the CA of `certs`, and shows its client certificate
    only if `client_cert`, gets nothing back from `address` for a few bytes sent."""
    import ssl

    host, port = address.split("://")[1].rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.check_hostname = False
    if client_cert:
        ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client-key.pem"))
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"\x00" * 8)
            return tls.recv(1) == b""  # TLS 1.3: the server's "certificate required" alert comes here
    except (ssl.SSLError, ConnectionError):
        return True


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_tls_cluster_listens_on_loopback_and_serves_only_certificate_holders(tmp_path: Path) -> None:
    from distributed import Client
    from distributed.security import Security

    certs, other = tmp_path / "certs", tmp_path / "other"
    assert make_certs(certs).returncode == 0 and make_certs(other).returncode == 0
    run_dir = tmp_path / "run"
    port = str(free_port())
    env = script_env(run_dir, DASK_TLS_DIR=str(certs), DASK_SCHEDULER_PORT=port, DASK_WORKERS="1",
                     BINANCE_LAKE_STOP_TIMEOUT="10")
    env = {k: v for k, v in env.items() if not k.startswith("DASK_DISTRIBUTED__")}
    address = f"tls://127.0.0.1:{port}"
    seen: list[psutil.Process] = []

    def security(folder: Path) -> Any:
        return Security(tls_ca_file=str(folder / "ca.pem"), tls_client_cert=str(folder / "client.pem"),
                        tls_client_key=str(folder / "client-key.pem"), require_encryption=True)

    try:
        started = subprocess.run([str(INFRA / "start.sh"), "dask"], env=env, cwd=REPO, capture_output=True,
                                 text=True, timeout=180, check=False)
        for pid_file in run_dir.glob("*.pid"):
            seen.extend(tree(int(pid_file.read_text())))
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"Dask scheduler:     {address}" in started.stdout, started.stdout
        # Every socket of the scheduler, the nanny and the worker process is on loopback.
        sockets = {(c.laddr.ip, c.laddr.port) for p in seen for c in p.net_connections("inet")
                   if c.status == psutil.CONN_LISTEN}
        assert len(sockets) >= 5 and {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets
        with Client(address, security=security(certs), timeout=10) as client:
            workers = list(client.scheduler_info(n_workers=-1)["workers"])
            assert len(workers) == 1
            assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6  # a holder runs work
        # Nobody else does: no certificate, another CA's, or plain TCP, on the scheduler and the worker.
        for target in (address, workers[0]):
            assert refused(target, certs), target
            assert not refused(target, certs, client_cert=True), target  # the probe itself works
        with pytest.raises(OSError):
            Client(address, security=security(other), timeout=5)
        with pytest.raises(OSError):
            Client(f"tcp://127.0.0.1:{port}", timeout=5)
        status = subprocess.run([str(INFRA / "status.sh")], env=env, capture_output=True, text=True, timeout=60,
                                check=False)
        assert f"Dask scheduler: {address}, 1 workers" in status.stdout, status.stdout + status.stderr
    finally:
        stopped = subprocess.run([str(INFRA / "stop.sh")], env=env, capture_output=True, text=True, timeout=120,
                                 check=False)
        for proc in seen:
            with contextlib.suppress(psutil.NoSuchProcess):
                if running(proc.pid):
                    proc.kill()
    assert stopped.returncode == 0, stopped.stderr
