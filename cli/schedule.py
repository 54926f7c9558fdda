"""A schedule trigger's schedule: the options of `tp triggers create schedule` and `tp triggers
edit`, the schedule (or merge patch) they describe, and its one-line summary."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer

from cli.options import UsageProblem, json_option
from cli.output import cell

Cron = Annotated[str | None, typer.Option(help="A cron: 5 fields, or 6 with seconds first.")]
Hourly = Annotated[bool, typer.Option("--hourly", help="Every hour, at --minute.")]
Minute = Annotated[int | None, typer.Option(help="The minute of an hourly schedule.")]
Daily = Annotated[str | None, typer.Option(help="Every day at this time, HH:MM or HH:MM:SS.")]
Weekly = Annotated[str | None, typer.Option(help="On these days (mon,thu), at --at.")]
At = Annotated[str | None, typer.Option(help="The time of a weekly (or daily) schedule.")]
Every = Annotated[int | None, typer.Option(help="A fixed interval of --unit.")]
Unit = Annotated[
    Literal["seconds", "minutes", "hours"] | None,
    typer.Option(help="The interval's unit."),
]
Once = Annotated[str | None, typer.Option(help="Once, at this time (RFC 3339 or local time).")]
Timezone = Annotated[
    str | None, typer.Option("--timezone", "--tz", help="The IANA zone it follows (UTC).")
]
Start = Annotated[str | None, typer.Option(help="No fire before this time.")]
End = Annotated[str | None, typer.Option(help="No fire after this time.")]
Jitter = Annotated[int | None, typer.Option(help="Delay every fire by up to this many seconds.")]
DstGap = Annotated[
    Literal["shift", "skip"] | None,
    typer.Option(help="A wall time that does not exist."),
]
DstRepeat = Annotated[
    Literal["once", "twice"] | None,
    typer.Option(help="A wall time that happens twice."),
]
Misfire = Annotated[
    Literal["skip", "run_once", "run_all"] | None,
    typer.Option(
        help="Fires missed while schedulers were down or the trigger paused.",
    ),
]
CatchUpWindow = Annotated[
    int | None, typer.Option(help="Seconds: an older missed fire is never started.")
]
ScheduleJson = Annotated[
    str | None,
    typer.Option(
        "--schedule",
        help="The whole schedule (or, for edit, a merge patch) as JSON or @FILE; "
        "the options above are added to it.",
    ),
]


@dataclass(frozen=True)
class ScheduleOptions:
    """The schedule options of one command line, as given (None, False: not given)."""

    cron: str | None = None
    hourly: bool = False
    minute: int | None = None
    daily: str | None = None
    weekly: str | None = None
    at: str | None = None
    every: int | None = None
    unit: str | None = None
    once: str | None = None
    timezone: str | None = None
    start: str | None = None
    end: str | None = None
    jitter: int | None = None
    dst_gap: str | None = None
    dst_repeat: str | None = None
    misfire: str | None = None
    catch_up_window: int | None = None
    raw: str | None = None

    def body(self, *, patch: bool) -> dict[str, Any] | None:
        """The schedule (or with `patch`, the merge patch) these options describe; None when
        they name nothing."""
        schedule: dict[str, Any] = {}
        if self.raw is not None:
            given = json_option(self.raw, "--schedule")
            if not isinstance(given, dict):
                raise UsageProblem("--schedule must be a JSON object")
            schedule.update(given)
        kinds = [
            kind
            for kind, given in (
                ("cron", self.cron is not None),
                ("hourly", self.hourly or (self.minute is not None and not patch)),
                ("daily", self.daily is not None),
                ("weekly", self.weekly is not None),
                ("interval", self.every is not None),
                ("once", self.once is not None),
            )
            if given
        ]
        if len(kinds) > 1:
            raise UsageProblem(f"a schedule is one kind; got {', '.join(kinds)}")
        if kinds:
            schedule["kind"] = kinds[0]
        if self.cron is not None:
            schedule["cron"] = self.cron
        if self.daily is not None:
            schedule["at"] = self.daily
        if self.weekly is not None:
            schedule["days"] = [day.strip().lower() for day in self.weekly.split(",") if day]
        if self.once is not None:
            schedule["at"] = self.once
        if self.every is not None:
            schedule["every"] = self.every
        for name in (
            "minute",
            "at",
            "unit",
            "timezone",
            "start",
            "end",
            "jitter",
            "dst_gap",
            "dst_repeat",
            "misfire",
            "catch_up_window",
        ):
            value = getattr(self, name)
            if value is not None:
                schedule[name] = value
        return schedule or None


def schedule_summary(schedule: Mapping[str, Any]) -> str:
    kind = schedule.get("kind")
    if kind == "cron":
        text = f"cron {schedule.get('cron')}"
    elif kind == "hourly":
        text = f"hourly at :{int(schedule.get('minute', 0)):02d}"
    elif kind == "daily":
        text = f"daily at {schedule.get('at')}"
    elif kind == "weekly":
        text = f"weekly {','.join(schedule.get('days', []))} at {schedule.get('at')}"
    elif kind == "interval":
        text = f"every {schedule.get('every')} {schedule.get('unit', 'seconds')}"
    elif kind == "once":
        text = f"once at {cell(schedule.get('at'))}"
    else:
        text = str(kind)
    zone = schedule.get("timezone")
    return f"{text} ({zone})" if zone and zone != "UTC" else text
