from datetime import date

from tasks.lake.inventory import SourceRef
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.plan import days_between, months_touching, plan_symbol


def d(s: str) -> date:
    return date.fromisoformat(s)


def daily(s: str) -> ArchiveSpec:
    return ArchiveSpec("um", "BTCUSDT", "daily", d(s))


def monthly(s: str) -> ArchiveSpec:
    return ArchiveSpec("um", "BTCUSDT", "monthly", d(s))


def test_months_touching() -> None:
    assert months_touching(d("2024-01-31"), d("2024-03-01")) == [d("2024-01-01"), d("2024-02-01"), d("2024-03-01")]


def test_auto_uses_monthly_for_whole_published_months_and_daily_for_the_rest() -> None:
    days = set(days_between(d("2024-01-20"), d("2024-03-10")))
    plan = plan_symbol("um", "BTCUSDT", d("2024-01-30"), d("2024-03-02"), "auto", days, {d("2024-02-01")}, {})
    assert plan.archives == [daily("2024-01-30"), daily("2024-01-31"), monthly("2024-02-01"), daily("2024-03-01"),
                             daily("2024-03-02")]
    assert plan.missing == []


def test_auto_falls_back_to_daily_when_the_month_is_not_published() -> None:
    days = set(days_between(d("2024-02-01"), d("2024-02-29"))) - {d("2024-02-10")}
    plan = plan_symbol("um", "BTCUSDT", d("2024-02-01"), d("2024-02-29"), "auto", days, set(), {})
    assert len(plan.archives) == 28 and all(a.granularity == "daily" for a in plan.archives)
    assert [(m.day, m.reason) for m in plan.missing] == [(d("2024-02-10"), "daily archive not published")]


def test_daily_days_in_the_lake_keep_their_source() -> None:
    days = set(days_between(d("2024-02-01"), d("2024-02-29")))
    lake = {d("2024-02-05"): SourceRef("k", "s", "daily", d("2024-02-05"), d("2024-02-05"), 10)}
    plan = plan_symbol("um", "BTCUSDT", d("2024-02-01"), d("2024-02-29"), "auto", days, {d("2024-02-01")}, lake)
    assert all(a.granularity == "daily" for a in plan.archives) and len(plan.archives) == 29
    # An explicit monthly request does not mix either: the dailies stay.
    plan = plan_symbol("um", "BTCUSDT", d("2024-02-01"), d("2024-02-29"), "monthly", days, {d("2024-02-01")}, lake)
    assert all(a.granularity == "daily" for a in plan.archives)


def test_days_held_by_a_monthly_archive_are_not_fetched_again_as_daily() -> None:
    days = set(days_between(d("2024-02-01"), d("2024-02-29")))
    src = SourceRef("m", "s", "monthly", d("2024-02-01"), d("2024-02-29"), 10)
    lake = {day: src for day in days}
    plan = plan_symbol("um", "BTCUSDT", d("2024-02-10"), d("2024-02-12"), "daily", days, {d("2024-02-01")}, lake)
    assert plan.archives == [] and plan.missing == []


def test_missing_days_are_reported_not_planned() -> None:
    plan = plan_symbol("spot", "BTCUSDT", d("2024-01-01"), d("2024-01-03"), "daily", {d("2024-01-01")}, set(), {})
    assert [a.period for a in plan.archives] == [d("2024-01-01")]
    assert [m.day for m in plan.missing] == [d("2024-01-02"), d("2024-01-03")]


def test_monthly_request_for_unpublished_month_reports_its_days() -> None:
    plan = plan_symbol("um", "BTCUSDT", d("2024-02-01"), d("2024-02-29"), "monthly", set(), set(), {})
    assert plan.archives == [] and len(plan.missing) == 29
