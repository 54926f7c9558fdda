"""Day of month and day of week together: either one matching is enough (POSIX), in every form."""

from calendar import monthrange
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest

from contracts.registry import CronSchedule
from shared.schedules import occurrences, validate


def is_last_day(day: date) -> bool:
    return day.day == monthrange(day.year, day.month)[1]


def nth_weekday(day: date) -> int:
    return (day.day - 1) // 7 + 1


MONDAY, FRIDAY = 0, 4
CASES: list[tuple[str, Callable[[date], bool]]] = [
    # The expression, and which days it fires on, written independently of the code.
    ("0 9 1 * MON#1", lambda d: d.day == 1 or (d.weekday() == MONDAY and nth_weekday(d) == 1)),
    ("0 9 15 * MON#1", lambda d: d.day == 15 or (d.weekday() == MONDAY and nth_weekday(d) == 1)),
    ("0 9 L * FRI", lambda d: is_last_day(d) or d.weekday() == FRIDAY),
    ("0 0 1 * MON", lambda d: d.day == 1 or d.weekday() == MONDAY),
    (
        "0 0 1,15 * L5",  # croniter's "last Friday of the month"
        lambda d: d.day in (1, 15) or (d.weekday() == FRIDAY and (d + timedelta(7)).day < 8),
    ),
    ("0 0 30 2 MON", lambda d: d.month == 2 and d.weekday() == MONDAY),  # 30 Feb never exists
    ("0 0 29 * TUE#5", lambda d: d.day == 29 or (d.weekday() == 1 and nth_weekday(d) == 5)),
]
START, END = date(2026, 1, 1), date(2028, 1, 1)


@pytest.mark.parametrize(("cron", "fires_on"), CASES)
def test_a_day_matches_when_either_its_day_of_month_or_its_day_of_week_does(
    cron: str, fires_on: Callable[[date], bool]
):
    assert validate(CronSchedule(cron=cron)) is None
    hour = int(cron.split()[1])
    expected = [
        datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
        for day in (START + timedelta(days=n) for n in range((END - START).days))
        if fires_on(day)
    ]
    found = []
    for occurrence in occurrences(
        CronSchedule(cron=cron), datetime(2025, 12, 31, 23, 59, tzinfo=UTC)
    ):
        if occurrence.scheduled_at.date() >= END:
            break
        found.append(occurrence.scheduled_at)
    assert found == expected


def test_a_day_of_week_alone_still_restricts_the_days():
    expected = [date(2026, 1, 5), date(2026, 1, 12)]
    found = occurrences(CronSchedule(cron="0 0 * * MON"), datetime(2026, 1, 1, tzinfo=UTC))
    assert [next(found).scheduled_at.date() for _ in expected] == expected


def test_an_expression_whose_days_never_exist_is_still_refused():
    assert "never fires" in (validate(CronSchedule(cron="0 0 30 2 *")) or "")


def test_random_values_are_refused_because_replicas_would_disagree():
    problem = validate(CronSchedule(cron="0 0 R * *"))
    assert problem == "cron '0 0 R * *': the day-of-month field 'R' uses R, which is not supported"
    assert validate(CronSchedule(cron="0 0 * MAR FRI")) is None  # the R of MAR and FRI is fine
