"""What the Prefect UI shows of a run: artifacts, task run names, the back-fill's run form, the schedule.

The flow runs for real (fake archive over HTTP, real Prefect API, real Dask cluster), and
everything is read back through the Prefect client, as the UI reads it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pyarrow.dataset as ds
import pytest
import yaml
from prefect.utilities.callables import parameter_schema

from flows.artifacts import MAX_GAP_ROWS, gap_findings, gap_rows, markdown_table, summary_markdown
from flows.backfill import backfill, backfill_settings
from flows.full_pipeline import full_pipeline
from flows.runtime import dask_runner, dask_runner_for
from tasks.labels import batch_label, day_runs
from tasks.lake.gaps import GapReport
from tasks.report import ArchiveOutcome, PipelineReport
from tasks.settings import Settings
from tasks.source.archive_spec import ArchiveSpec
from tests.conftest import REPO
from tests.fake_archive import FakeArchive, publish_day

#: The back-fill's run form: what a user sets per run, and nothing else.
FORM = {"market", "symbols", "start", "end", "granularity", "steps", "features", "datasets"}
N = 1500  # trades a day: four digits, so separators show


def publish_week(fa: FakeArchive) -> dict[str, Any]:
    """BTCUSDT 2024-01-01..07 with 01-03..05 never published (their ids skipped), an id gap inside
    01-06 and 01-07 ending at noon; ETHUSDT 01-01..02 with a wrong checksum on the 2nd."""
    first = 3_350_000_000
    pubs = [publish_day(fa, "spot", "BTCUSDT", "2024-01-01", N, first, 1)]
    pubs.append(publish_day(fa, "spot", "BTCUSDT", "2024-01-02", N, pubs[-1].last_id + 1, 2))
    after = pubs[-1].last_id
    jan6 = after + 1 + 3 * N
    pubs.append(publish_day(fa, "spot", "BTCUSDT", "2024-01-06", N, jan6, 3, gaps=[(jan6 + 700, jan6 + 709)]))
    pubs.append(publish_day(fa, "spot", "BTCUSDT", "2024-01-07", N, pubs[-1].last_id + 1, 4,
                            end=datetime(2024, 1, 7, 12, tzinfo=UTC)))
    eth = publish_day(fa, "spot", "ETHUSDT", "2024-01-01", N, 2_250_000_000, 5)
    bad = publish_day(fa, "spot", "ETHUSDT", "2024-01-02", N, eth.last_id + 1, 6, bad_checksum=True)
    return {"btc": pubs, "eth": eth, "bad": bad, "after": after, "jan6": jan6}


def settings_for(fa: FakeArchive, data: Path, dask_address: str, **kw: Any) -> Settings:
    return Settings(data_dir=data, base_url=fa.base_url, listing_url=fa.listing_url, dask_address=dask_address,
                    retries=1, retry_base_delay=0.01, read_timeout=5, **kw)


def read_back(flow_run_id: Any) -> tuple[dict[str, Any], list[str]]:
    """The run's artifacts by key (their data decoded) and its task run names, from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(flow_run_filter=runs)
        tasks = client.read_task_runs(flow_run_filter=runs)
    data = {a.key: (json.loads(a.data) if a.type == "table" and isinstance(a.data, str) else a.data)
            for a in arts if a.key}
    return data, [t.name for t in tasks]


@pytest.mark.slow
def test_run_artifacts_name_changes_failures_gaps_and_task_runs(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path
) -> None:
    world = publish_week(fake_archive)
    started = datetime.now(UTC).date()
    settings = settings_for(fake_archive, tmp_path / "data", dask_address, market="spot",
                            symbols=("BTCUSDT", "ETHUSDT"), start=date(2024, 1, 1), end=date(2024, 1, 7),
                            granularity="daily")
    state = full_pipeline.with_options(task_runner=dask_runner(settings))(settings=settings, return_state=True)
    result = state.result(raise_on_failure=False)
    assert state.is_failed() and isinstance(result, PipelineReport) and not result.ok  # a Failed state, no raise
    report = result
    arts, task_names = read_back(state.state_details.flow_run_id)
    assert {"run-summary", "ingest-archives", "lake-files", "features", "lake-gaps"} <= set(arts)

    # run-summary: a markdown report, not the terminal text in a code block; what changed and
    # what failed first, then the gaps, then the timings.
    md = arts["run-summary"]
    assert "```" not in md
    landed = 5  # four BTCUSDT days, one ETHUSDT day
    assert md.startswith(f"**Run failed: 1 problem**: {landed} archives landed in the lake ({landed * N:,} rows), "
                         "2 lake files written, 2 feature runs wrote bars.")
    heads = [line for line in md.splitlines() if line.startswith("### ")]
    assert heads[:2] == ["### What changed", "### Failed or refused"]
    assert heads.index("### Gaps (details: the lake-gaps artifact)") < heads.index(
        "### Timings (wall clock; stages overlap)")
    assert f"| archives landed in the lake (new rows) | {landed} | {landed * N:,} |" in md
    assert "| refused | ETHUSDT-trades-2024-01-02 | checksum mismatch" in md
    bytes_written = sum(c.bytes_written for c in report.compactions)
    assert bytes_written > 999 and f"| lake files written | 2 | {landed * N:,} | {bytes_written:,} |" in md
    # The gaps' overview counts by kind (with separators), one row per symbol.
    assert ("| spot/BTCUSDT | 2024-01-01..2024-01-07 | 4 of 7 | 3 days not published; 1 day maybe truncated; "
            f"2 trade-id gaps ({3 * N + 10:,} ids) |") in md
    for stage in ("download", "convert", "merge", "validate", "gaps", "features"):
        assert re.search(rf"^\| {stage} \| [0-9,]+\.\d\d \| [0-9,]+\.\d\d \| [0-9,]+\.\d\d \|$", md, re.M), stage

    # lake-gaps: three short columns; days by name (runs of days as ranges), and each gap's size.
    gaps = arts["lake-gaps"]
    assert all(set(r) == {"symbol", "days", "gap"} for r in gaps)
    assert max(len(str(r["symbol"])) + len(str(r["days"])) for r in gaps) <= 40
    btc = [(r["days"], r["gap"]) for r in gaps if r["symbol"] == "BTCUSDT"]
    assert btc == [
        ("2024-01-02..2024-01-06", f"{3 * N:,} trade ids missing after id {world['after']:,} "
                                   f"(before id {world['jan6']:,})"),
        ("2024-01-03..2024-01-05 (3 days)", "not published"),
        ("2024-01-06", "10 trade ids missing inside the day (1 gap)"),
        ("2024-01-07", btc[3][1]),
    ]
    assert re.fullmatch(r"truncated\? trades only from 00:0\d:\d\d to 11:\d\d:\d\d UTC", str(btc[3][1]))
    assert {"symbol": "spot/BTCUSDT", "days": "2024-01-01..2024-01-07",
            "gap": "4 of 7 days in the lake; 4 gaps"} in gaps
    eth = [(r["days"], r["gap"]) for r in gaps if r["symbol"] == "ETHUSDT"]
    assert [d for d, _ in eth] == ["2024-01-02", "2024-01-03..2024-01-07 (5 days)"] and eth[1][1] == "not published"
    assert str(eth[0][1]).startswith("refused ETHUSDT-trades-2024-01-02: checksum mismatch")

    # The other tables: numbers with thousands separators.
    archives = {r["archive"]: r for r in arts["ingest-archives"]}
    good = archives[world["eth"].key]
    assert good["status"] == "ingested" and good["rows"] == f"{N:,}" and good["bytes"] == f"{world['eth'].zip_size:,}"
    assert archives[world["bad"].key]["status"] == "refused"
    assert {r["symbol"]: r["rows"] for r in arts["lake-files"]} == {"spot/BTCUSDT": f"{4 * N:,}",
                                                                      "spot/ETHUSDT": f"{N:,}"}
    assert all(re.fullmatch(r"\d{1,3}(,\d{3})*", str(r["trades"])) for r in arts["features"])

    # Task runs are named for what they hold, symbol and days first; no archive path.
    assert not [n for n in task_names if "data/" in n]
    for pub in [*world["btc"], world["eth"], world["bad"]]:
        assert f"download {pub.spec.symbol} {pub.spec.label}" in task_names
    converts = [n for n in task_names if n.startswith("convert ")]
    # Which archives share a batch depends on when their downloads end: two symbols' archives of
    # one day are one day with a count ("BTCUSDT, ETHUSDT 2024-01-01 (2 archives)").
    batch = r"(BTCUSDT|ETHUSDT|BTCUSDT, ETHUSDT) 2024-01-0\d(\.\.2024-01-0\d)?( \(\d+ archives\))?"
    assert converts and all(re.fullmatch("convert " + batch, n) for n in converts), converts
    held = sum(int(m.group(1)) if (m := re.search(r"\((\d+) archives\)", n)) else 1 for n in converts)
    assert held == landed  # the refused archive failed its checksum: never converted
    assert {"optimize trades spot/BTCUSDT", "optimize trades spot/ETHUSDT", "validate trades spot/BTCUSDT",
            "gaps trades spot/ETHUSDT", "discover spot trades", "fetch checksums",
            "features spot/BTCUSDT ema_dollar_imbalance"} <= set(task_names)

    # Run again: the same archive refused again under the same published checksum is a known
    # refusal. The run succeeds, and the summary says so first, with nothing new changed.
    again = full_pipeline.with_options(task_runner=dask_runner(settings))(settings=settings, return_state=True)
    assert again.is_completed(), again.message
    arts, _ = read_back(again.state_details.flow_run_id)
    md = arts["run-summary"]
    since = {r["archive"]: r["known since"] for r in arts["ingest-archives"]}[world["bad"].key]
    assert since in {str(started), str(datetime.now(UTC).date())}  # the first refusal's day (UTC)
    assert md.startswith("**Run OK** (1 known refusal, not failing the run): no new archives.")
    assert f"| refused again (known since {since}) | ETHUSDT-trades-2024-01-02 | checksum mismatch" in md
    assert ("### What changed\n\nNothing: the lake was already up to date.\n\nAlready in the lake, left as they "
            f"were: {landed} archives ({landed * N:,} rows).") in md


def test_summary_and_gap_tables_from_a_report() -> None:
    """The plain functions alone: ranges with their day counts, gap sizes, a cap on long tables."""
    g = GapReport("spot", "BTCUSDT", date(2024, 1, 1), date(2024, 1, 31), days_in_lake=27,
                  not_published=[date(2024, 1, 3), date(2024, 1, 4), date(2024, 1, 5), date(2024, 1, 9)],
                  id_gaps_between=[{"after": "2024-01-06", "before": "2024-01-07", "after_id": 99, "before_id": 1334,
                                    "missing_ids": 1234}])
    assert gap_findings(g) == [
        ("2024-01-03..2024-01-05 (3 days)", "not published"),
        ("2024-01-06..2024-01-07", "1,234 trade ids missing after id 99 (before id 1,334)"),
        ("2024-01-09", "not published"),
    ]
    # Every other day missing for a long range: one row per run of days, capped, the last row saying so.
    days = [date(2020, 1, 1) + timedelta(days=2 * i) for i in range(400)]
    long = GapReport("spot", "ETHUSDT", days[0], days[-1], not_published=days)
    rows = gap_rows(PipelineReport(gap_reports=[long]))
    assert len(rows) == MAX_GAP_ROWS and rows[-1]["gap"] == f"{400 + 1 - MAX_GAP_ROWS + 1:,} more rows: see " \
        "reports/gaps/ in the data dir"
    md = summary_markdown(PipelineReport(gap_reports=[g]))
    assert md.startswith("**Run OK**: no new archives.")
    assert "Nothing: the lake was already up to date." in md
    assert "| spot/BTCUSDT | 2024-01-01..2024-01-31 | 27 of 31 | 4 days not published; 1 trade-id gap (1,234 ids) |" \
        in md
    assert markdown_table(["a"], [["x | y\nz"]]).splitlines()[-1] == "| x \\| y z |"
    # After --steps download: what this run verified, apart from what earlier runs did.
    key = "data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-0{}.zip"
    md = summary_markdown(PipelineReport(outcomes=[
        ArchiveOutcome(key.format(1), "cached", bytes=1000, where="downloads"),
        ArchiveOutcome(key.format(2), "downloaded", bytes=2000, where="downloads"),
        ArchiveOutcome(key.format(3), "cached", rows=5000, bytes=3000, where="lake")]))
    assert md.startswith("**Run OK**: 1 archive downloaded and verified.")
    assert "| archives downloaded and verified, not converted | 1 |  | 2,000 |\n\nAlready in the lake, left as " \
        "they were: 1 archive (5,000 rows). Already downloaded and verified by an earlier run: 1 archive." in md


def test_batch_labels_name_symbols_and_days() -> None:
    def spec(symbol: str, day: str, granularity: Any = "daily") -> ArchiveSpec:
        return ArchiveSpec("spot", symbol, granularity, date.fromisoformat(day))

    week = [spec("BTCUSDT", f"2024-01-0{d}") for d in range(1, 8)]
    assert batch_label(week) == "BTCUSDT 2024-01-01..2024-01-07 (7 archives)"
    assert batch_label(week[2:3]) == "BTCUSDT 2024-01-03"
    assert batch_label([spec("ETHUSDT", "2024-01-02"), spec("BTCUSDT", "2024-01-01")]) == \
        "BTCUSDT, ETHUSDT 2024-01-01..2024-01-02 (2 archives)"
    months = [spec("BTCUSDT", "2024-03-01", "monthly"), spec("BTCUSDT", "2024-01-01", "monthly")]
    assert batch_label(months) == "BTCUSDT 2024-01..2024-03 (2 archives)"
    assert batch_label([spec(s, "2024-01-01") for s in ("AUSDT", "BUSDT", "CUSDT")]) == \
        "AUSDT +2 symbols 2024-01-01 (3 archives)"
    assert day_runs([date(2024, 1, 2), date(2024, 1, 1), date(2024, 1, 4)]) == [
        (date(2024, 1, 1), date(2024, 1, 2)), (date(2024, 1, 4), date(2024, 1, 4))]


def _schema_problems(node: Any, path: str = "") -> list[str]:
    """Entries the UI's form cannot render: a `None` type, a reference to a nested model, an anyOf."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "type" and value in ("null", "None", None):
                found.append(f"{path}: type {value!r}")
            if key in ("$ref", "anyOf", "allOf", "oneOf"):
                found.append(f"{path}: {key}")
            found.extend(_schema_problems(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_schema_problems(value, f"{path}/{i}"))
    return found


def test_backfill_run_form_shows_only_the_users_parameters() -> None:
    schema = parameter_schema(backfill.fn).model_dump()
    props = schema["properties"]
    assert set(props) == FORM and set(schema["required"]) == {"symbols", "start", "end"}
    assert not schema.get("definitions") and not _schema_problems(schema)
    for name, prop in props.items():
        assert prop.get("type") and prop.get("title") and len(prop.get("description", "")) > 10, (name, prop)
    assert props["market"]["enum"] == ["spot", "um", "cm"] and props["granularity"]["enum"] == [
        "auto", "daily", "monthly"]
    assert props["start"]["format"] == "date" and props["symbols"]["items"] == {"type": "string"}
    assert "cleanup" in props["steps"]["items"]["enum"] and "cleanup" not in props["steps"]["default"]
    # prefect.yaml's defaults fit it (the server's copy of the schema: the slow test below).
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    [entry] = [d for d in config["deployments"] if d["name"] == "backfill"]
    assert entry["entrypoint"] == "flows.backfill:backfill" and set(entry["parameters"]) <= FORM
    backfill.validate_parameters(entry["parameters"])
    assert not [d for d in config["deployments"] if "settings" in (d.get("parameters") or {})]


def test_backfill_settings_come_from_the_form_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINANCE_LAKE_DATA_DIR", "/srv/lake")
    monkeypatch.setenv("BINANCE_LAKE_CONCURRENCY", "3")
    s = backfill_settings(["BTCUSDT"], date(2024, 1, 1), date(2024, 1, 2), "um", "daily", ("download",), ())
    assert (s.data_dir, s.concurrency, s.market, s.symbols, s.steps) == (Path("/srv/lake"), 3, "um", ("BTCUSDT",),
                                                                         ("download",))
    monkeypatch.delenv("BINANCE_LAKE_DATA_DIR")
    assert backfill_settings(["BTCUSDT"], date(2024, 1, 1), date(2024, 1, 1), "spot", "auto", ("gaps",),
                             ()).data_dir == Path("data")
    with pytest.raises(ValueError, match=r"^parameter symbols: .*'btc usdt'.*; parameter end: ") as info:
        backfill_settings(["btc usdt"], date(2024, 1, 2), date(2099, 12, 31) + timedelta(days=1), "spot", "auto",
                          ("gaps",), ())
    assert "\n" not in str(info.value)
    monkeypatch.setenv("BINANCE_LAKE_CONCURRENCY", "0")
    with pytest.raises(ValueError, match=r"^BINANCE_LAKE_CONCURRENCY: "):
        backfill_settings(["BTCUSDT"], date(2024, 1, 1), date(2024, 1, 1), "spot", "auto", ("gaps",), ())


@pytest.mark.slow
def test_backfill_flow_runs_the_pipeline_from_its_form(
    prefect_api: str, dask_address: str, fake_archive: FakeArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = publish_week(fake_archive)
    data = tmp_path / "data"
    for name, value in (("DATA_DIR", str(data)), ("BASE_URL", fake_archive.base_url),
                        ("LISTING_URL", fake_archive.listing_url), ("RETRIES", "1")):
        monkeypatch.setenv(f"BINANCE_LAKE_{name}", value)
    run = backfill.with_options(task_runner=dask_runner_for(dask_address))
    state = run(symbols=["BTCUSDT"], start=date(2024, 1, 1), end=date(2024, 1, 2), granularity="daily",
                steps=("download", "convert", "merge", "validate"), return_state=True)
    assert state.is_completed(), state.message
    assert ds.dataset(data / "lake" / "trades", format="parquet", partitioning="hive").count_rows() == 2 * N
    arts, names = read_back(state.state_details.flow_run_id)
    assert arts["run-summary"].startswith(f"**Run OK**: 2 archives landed in the lake ({2 * N:,} rows)")
    assert f"download BTCUSDT {world['btc'][0].spec.label}" in names

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    assert set(flow_run.parameters) <= FORM and flow_run.parameters["symbols"] == ["BTCUSDT"]
    # The deployment as the server holds it (what the UI's run form is drawn from).
    from deployments.serve import build

    [deployment] = [d for d in build(str(data), "spot", ["BTCUSDT"]) if d.name == "backfill"]
    deployment_id = cast(Any, deployment).apply()
    with get_client(sync_client=True) as client:
        held = client.read_deployment(deployment_id)
    assert set(held.parameter_openapi_schema["properties"]) == FORM
    assert not _schema_problems(held.parameter_openapi_schema)
    # A bad parameter: the run fails naming it, before anything is fetched.
    bad = run(symbols=["btcusdt"], start=date(2024, 1, 1), end=date(2024, 1, 2), return_state=True)
    assert bad.is_failed() and "parameter symbols: " in str(bad.message)


def test_schedule_says_utc() -> None:
    from deployments.serve import DAILY_CRON, build

    daily = next(d for d in build("./data", "spot", ["BTCUSDT"]) if d.name == "daily-update")
    [schedule] = daily.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (DAILY_CRON, "UTC")
    assert "06:30 UTC" in str(daily.description)
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    [entry] = [d for d in config["deployments"] if d["name"] == "daily-update"]
    assert [s["timezone"] for s in entry["schedules"]] == ["UTC"] and "06:30 UTC" in entry["description"]
