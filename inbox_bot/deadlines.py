"""Due dates for privacy requests: pure date rules, no I/O.

The specification, with its sources and test vectors, is docs/deadlines.md (shared docs). The
section numbers in comments (§2.2, §8 ...) refer to it. Nothing here reads a clock, a file or
the network: callers pass the receipt instant and the policy, and get back dates plus the
human-readable rules that produced them, so every due date can be explained to staff.

Vocabulary:
- receipt date: the calendar date of the receipt instant in the controller's timezone (§7.2).
- legal dates (GDPR one month, APPI Art. 39) use public holidays only; company closure days
  move internal SLAs and internal targets, never a legal date (§2.3).
- a case's due date is the earliest date any of its labels produces (§8).
"""
from __future__ import annotations

import calendar as _stdlib_calendar
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays


GDPR_FLAG = "gdpr"  # label meaning "the requester is in the EU/EEA or invokes the GDPR" (§8)

CLOCK_NONE = "none"
CLOCK_SUSPEND = "suspend_for_identity"
CLOCK_RESTART = "restart_on_identity"
CLOCK_MODES = (CLOCK_NONE, CLOCK_SUSPEND, CLOCK_RESTART)

RULE_APPI_DAYS = "appi_days"        # arrival + N calendar days, rolled to a controller BD
RULE_GDPR_MONTH = "gdpr_month"      # 1182/71 one month, rolled on the GDPR calendar
RULE_WORKING_DAYS = "working_days"  # N working days after receipt (internal SLA)
DUE_RULES = (RULE_APPI_DAYS, RULE_GDPR_MONTH, RULE_WORKING_DAYS)

APPI_ART39_DAYS = 14  # 「その到達した日から二週間」: law, not policy, so not configurable

_WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _fmt(d: date) -> str:
    """ISO date with an English weekday; strftime('%a') would depend on the locale."""
    return f"{d.isoformat()} ({_WEEKDAY_NAMES[d.weekday()]})"


# --------------------------------------------------------------------------------------------
# Calendars
# --------------------------------------------------------------------------------------------


class Calendar:
    """Working days: Monday to Friday minus one country's public holidays and extra closed days.

    Public holidays come from the `holidays` package and are cached per year. The object is
    immutable from the outside; the cache only memoises what the package would return anyway.
    """

    def __init__(
        self, country: str, subdiv: str | None = None, closed_days: Iterable[date] = ()
    ) -> None:
        self.country = country.upper()
        self.subdiv = subdiv
        self.closed_days: frozenset[date] = frozenset(closed_days)
        try:
            probe = holidays.country_holidays(self.country, subdiv=subdiv)
        except NotImplementedError as exc:  # the package's way of saying "unknown"
            raise ValueError(f"holiday calendar {self.label!r}: {exc}") from None
        # Outside this range the package silently returns no holidays; refuse instead.
        # (older `holidays` releases lack these attributes: then no range check)
        self._first_year: int = getattr(probe, "start_year", date.min.year)
        self._last_year: int = getattr(probe, "end_year", date.max.year)
        self._by_year: dict[int, dict[date, str]] = {}

    @property
    def label(self) -> str:
        name = self.country if not self.subdiv else f"{self.country}-{self.subdiv}"
        return f"{name} + company closures" if self.closed_days else name

    def __repr__(self) -> str:
        return f"Calendar({self.label!r})"

    def without_closures(self) -> Calendar:
        return get_calendar(self.country, self.subdiv)

    def public_holidays(self, year: int) -> Mapping[date, str]:
        cached = self._by_year.get(year)
        if cached is None:
            if not self._first_year <= year <= self._last_year:
                raise ValueError(
                    f"holiday calendar {self.label!r} has no data for {year} "
                    f"(covers {self._first_year}-{self._last_year})"
                )
            found = holidays.country_holidays(self.country, subdiv=self.subdiv, years=year)
            cached = {d: str(name) for d, name in found.items()}
            self._by_year[year] = cached
        return cached

    def holiday_name(self, d: date) -> str | None:
        """Why `d` is not a working day, or None if it is one."""
        public = self.public_holidays(d.year).get(d)
        if public is not None:
            return public
        if d in self.closed_days:
            return "company closure"
        if d.weekday() >= 5:
            return _WEEKDAY_NAMES[d.weekday()]
        return None

    def is_working_day(self, d: date) -> bool:
        return (
            d.weekday() < 5
            and d not in self.closed_days
            and d not in self.public_holidays(d.year)
        )


@lru_cache(maxsize=64)
def _cached_calendar(country: str, subdiv: str | None, closed_days: frozenset[date]) -> Calendar:
    return Calendar(country, subdiv, closed_days)


def get_calendar(
    country: str, subdiv: str | None = None, closed_days: Iterable[date] = ()
) -> Calendar:
    """A shared Calendar, so the per-year holiday cache survives across calls."""
    return _cached_calendar(country.upper(), subdiv, frozenset(closed_days))


# --------------------------------------------------------------------------------------------
# Date arithmetic (§2.2)
# --------------------------------------------------------------------------------------------


def receipt_date_of(received_at: datetime, tz: str | ZoneInfo) -> date:
    """The calendar date of `received_at` in `tz` (§7.2). Naive datetimes are refused."""
    if received_at.tzinfo is None or received_at.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware (store it in UTC)")
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    return received_at.astimezone(zone).date()


def add_months(d: date, n: int) -> date:
    """Same date n months later, clamped to the month's last day (1182/71 Art. 3(2)(c))."""
    month_index = d.year * 12 + (d.month - 1) + n
    year, month0 = divmod(month_index, 12)
    last_day = _stdlib_calendar.monthrange(year, month0 + 1)[1]
    return date(year, month0 + 1, min(d.day, last_day))


def roll_forward(d: date, calendar: Calendar) -> date:
    """`d`, or the next working day if `d` is a weekend or holiday (1182/71 Art. 3(4))."""
    while not calendar.is_working_day(d):
        d += timedelta(days=1)
    return d


def roll_back(d: date, calendar: Calendar) -> date:
    """`d`, or the latest working day before it (for conservative internal targets)."""
    while not calendar.is_working_day(d):
        d -= timedelta(days=1)
    return d


def add_working_days(d: date, n: int, calendar: Calendar) -> date:
    """The n-th working day after `d` (`d` itself not counted); n < 0 counts backwards.

    n == 0 returns `d` unchanged, even when `d` is not a working day.
    """
    step = timedelta(days=1 if n > 0 else -1)
    remaining = abs(n)
    while remaining:
        d += step
        if calendar.is_working_day(d):
            remaining -= 1
    return d


def working_days_between(a: date, b: date, calendar: Calendar) -> int:
    """Signed count of working days landed on when walking from `a` to `b`, `a` excluded.

    Forwards that is the working days in (a, b]; backwards, minus those in [b, a). So
    `working_days_between(a, add_working_days(a, n, cal), cal) == n` for any n.
    """
    step = timedelta(days=1 if b >= a else -1)
    sign = 1 if b >= a else -1
    count = 0
    d = a
    while d != b:
        d += step
        if calendar.is_working_day(d):
            count += sign
    return count


def deadline_instant(due: date, tz: str | ZoneInfo) -> datetime:
    """The last instant of `due` in `tz`: "expiry of the last hour" (1182/71 Art. 3(2)(c))."""
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    return datetime.combine(due, time(23, 59, 59, 999999), tzinfo=zone)


def gdpr_due(receipt_date: date, calendar: Calendar) -> date:
    """One month from receipt, rolled forward (§2.2)."""
    return roll_forward(add_months(receipt_date, 1), calendar)


def gdpr_extended_due(receipt_date: date, calendar: Calendar) -> date:
    """Three months counted from receipt, rolled once; never chained from the first due (§2.4)."""
    return roll_forward(add_months(receipt_date, 3), calendar)


# --------------------------------------------------------------------------------------------
# Policy (§8)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalendarSpec:
    country: str
    subdiv: str | None = None


@dataclass(frozen=True)
class CategoryPolicy:
    """One classifier category's row of the §8 table.

    `reminders_bd`: working days before the due date (T-n). `escalations_bd`: working days
    relative to the due date, negative before it, 0 on it, positive after it.
    """

    due_rule: str
    sla_days: int | None = None         # calendar days, for appi_days
    sla_bd: int | None = None           # working days, for working_days
    extension_days: int | None = None   # appi_days: calendar days on top of sla_days
    extension_bd: int | None = None     # working_days: working days on top of sla_bd
    reminders_bd: tuple[int, ...] = ()
    escalations_bd: tuple[int, ...] = ()
    decide_extension_bd: int | None = None  # the reminder that says "decide: answer or extend"

    def __post_init__(self) -> None:
        if self.due_rule not in DUE_RULES:
            raise ValueError(f"due_rule must be one of {DUE_RULES}, not {self.due_rule!r}")
        if self.due_rule == RULE_APPI_DAYS and (self.sla_days is None or self.sla_days < 0):
            raise ValueError("due_rule appi_days needs sla_days >= 0")
        if self.due_rule == RULE_WORKING_DAYS and (self.sla_bd is None or self.sla_bd < 1):
            raise ValueError("due_rule working_days needs sla_bd >= 1")


_APPI_REQUEST = CategoryPolicy(
    due_rule=RULE_APPI_DAYS,
    sla_days=14,
    extension_days=14,           # one internal extension of up to +14 days, supervisor approval
    reminders_bd=(5, 2, 1),
    escalations_bd=(0, 5),       # T+5 BD: the Art. 39 suit window is open
)

DEFAULT_CATEGORIES: dict[str, CategoryPolicy] = {
    "disclosure": _APPI_REQUEST,
    "revision": _APPI_REQUEST,
    "deletion": _APPI_REQUEST,
    "gdpr_request": CategoryPolicy(
        due_rule=RULE_GDPR_MONTH,
        reminders_bd=(10, 5, 2, 1),
        escalations_bd=(-2, 0),  # no answer and no extension notice by T-2: supervisor
        decide_extension_bd=10,
    ),
    "complaint": CategoryPolicy(
        due_rule=RULE_WORKING_DAYS, sla_bd=10, reminders_bd=(3, 1), escalations_bd=(0,)
    ),
    "other": CategoryPolicy(
        due_rule=RULE_WORKING_DAYS, sla_bd=2, reminders_bd=(1,), escalations_bd=(0,)
    ),
}


def _validate_timezone(name: str, key: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"{key}: unknown timezone {name!r}") from None


@dataclass(frozen=True)
class Policy:
    """Deadline policy; the defaults are the §8 table and the §2.3/§3/§7 recommendations."""

    controller_timezone: str = "Asia/Tokyo"
    appi_timezone: str = "Asia/Tokyo"   # APPI 到達 date is a JST date (§4 bot rule 1)
    gdpr_calendar: CalendarSpec = CalendarSpec("DE")
    controller_calendar: CalendarSpec = CalendarSpec("JP")
    company_closed_days: tuple[date, ...] = ()
    internal_margin_bd: int = 2
    conservative_tz: tuple[str, ...] = ("Europe/Berlin",)
    clock_mode: str = CLOCK_NONE
    id_request_grace_bd: int = 3
    categories: Mapping[str, CategoryPolicy] = field(
        default_factory=lambda: dict(DEFAULT_CATEGORIES)
    )

    def __post_init__(self) -> None:
        _validate_timezone(self.controller_timezone, "controller_timezone")
        _validate_timezone(self.appi_timezone, "appi_timezone")
        for tz in self.conservative_tz:
            _validate_timezone(tz, "conservative_tz")
        if self.clock_mode not in CLOCK_MODES:
            raise ValueError(f"clock_mode must be one of {CLOCK_MODES}, not {self.clock_mode!r}")
        if self.internal_margin_bd < 0:
            raise ValueError("internal_margin_bd must be >= 0")
        if self.id_request_grace_bd < 0:
            raise ValueError("id_request_grace_bd must be >= 0")

    # Calendars -------------------------------------------------------------------------

    def gdpr_holidays(self) -> Calendar:
        """Legal GDPR calendar: public holidays only, never company closures (§2.3)."""
        return get_calendar(self.gdpr_calendar.country, self.gdpr_calendar.subdiv)

    def controller_holidays(self) -> Calendar:
        """Controller calendar including company closures: internal SLAs, APPI targets."""
        return get_calendar(
            self.controller_calendar.country,
            self.controller_calendar.subdiv,
            self.company_closed_days,
        )

    def controller_public_holidays(self) -> Calendar:
        """Controller calendar without company closures (for conditions of a legal pause)."""
        return get_calendar(self.controller_calendar.country, self.controller_calendar.subdiv)

    # Overrides ---------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], base: Policy | None = None) -> Policy:
        """A policy with the values in `d` (e.g. a TOML table) laid over `base` (the defaults).

        Raises ValueError naming the offending key, in dotted form ("categories.other.sla_bd").
        """
        return _policy_from_mapping(d, base if base is not None else cls())


# --- from_mapping helpers: each names the key it checks ---


def _expect_mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}: expected a table, got {type(value).__name__}")
    return value


def _reject_unknown(keys: Iterable[str], allowed: Iterable[str], prefix: str) -> None:
    allowed_set = set(allowed)
    for key in keys:
        if key not in allowed_set:
            raise ValueError(f"unknown policy key '{prefix}{key}'")


def _parse_int(value: Any, key: str, minimum: int | None = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key}: must be >= {minimum}, got {value}")
    return value


def _parse_optional_int(value: Any, key: str, minimum: int = 0) -> int | None:
    return None if value is None else _parse_int(value, key, minimum)


def _parse_int_list(value: Any, key: str, minimum: int | None = 0) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{key}: expected a list of integers, got {value!r}")
    return tuple(_parse_int(item, f"{key}[{i}]", minimum) for i, item in enumerate(value))


def _parse_str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key}: expected a non-empty string, got {value!r}")
    return value.strip()


def _parse_timezone(value: Any, key: str) -> str:
    name = _parse_str(value, key)
    _validate_timezone(name, key)
    return name


def _parse_date(value: Any, key: str) -> date:
    if isinstance(value, datetime):  # a datetime is a date subclass, but not a day
        raise ValueError(f"{key}: expected a date, got a datetime {value!r}")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{key}: expected an ISO date (YYYY-MM-DD), got {value!r}")


def _parse_calendar_spec(value: Any, key: str) -> CalendarSpec:
    table = _expect_mapping(value, key)
    _reject_unknown(table, ("country", "subdiv"), f"{key}.")
    if "country" not in table:
        raise ValueError(f"{key}.country: missing")
    country = _parse_str(table["country"], f"{key}.country").upper()
    subdiv_raw = table.get("subdiv")
    subdiv = None if subdiv_raw is None else _parse_str(subdiv_raw, f"{key}.subdiv")
    try:
        get_calendar(country, subdiv)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    return CalendarSpec(country, subdiv)


_CATEGORY_PARSERS = {
    "due_rule": lambda v, k: _parse_choice(v, k, DUE_RULES),
    "sla_days": lambda v, k: _parse_optional_int(v, k, 0),
    "sla_bd": lambda v, k: _parse_optional_int(v, k, 1),
    "extension_days": lambda v, k: _parse_optional_int(v, k, 0),
    "extension_bd": lambda v, k: _parse_optional_int(v, k, 0),
    "reminders_bd": lambda v, k: _parse_int_list(v, k, 0),
    "escalations_bd": lambda v, k: _parse_int_list(v, k, None),
    "decide_extension_bd": lambda v, k: _parse_optional_int(v, k, 0),
}


def _parse_categories(
    value: Any, base: Mapping[str, CategoryPolicy]
) -> dict[str, CategoryPolicy]:
    table = _expect_mapping(value, "categories")
    merged = dict(base)
    for name, overrides in table.items():
        prefix = f"categories.{name}"
        if name not in merged:
            raise ValueError(f"unknown policy key '{prefix}': not a known category")
        fields = _expect_mapping(overrides, prefix)
        _reject_unknown(fields, _CATEGORY_PARSERS, f"{prefix}.")
        changes = {k: _CATEGORY_PARSERS[k](v, f"{prefix}.{k}") for k, v in fields.items()}
        try:
            merged[name] = replace(merged[name], **changes)
        except ValueError as exc:
            raise ValueError(f"{prefix}: {exc}") from None
    return merged


def _policy_from_mapping(d: Mapping[str, Any], base: Policy) -> Policy:
    table = _expect_mapping(d, "policy")
    top_level: dict[str, Any] = {
        "controller_timezone": _parse_timezone,
        "appi_timezone": _parse_timezone,
        "gdpr_calendar": _parse_calendar_spec,
        "controller_calendar": _parse_calendar_spec,
        "company_closed_days": lambda v, k: tuple(
            sorted({_parse_date(x, f"{k}[{i}]") for i, x in enumerate(_as_list(v, k))})
        ),
        "internal_margin_bd": lambda v, k: _parse_int(v, k, 0),
        "conservative_tz": lambda v, k: tuple(
            _parse_timezone(x, f"{k}[{i}]") for i, x in enumerate(_as_list(v, k))
        ),
        "clock_mode": lambda v, k: _parse_choice(v, k, CLOCK_MODES),
        "id_request_grace_bd": lambda v, k: _parse_int(v, k, 0),
        "categories": lambda v, k: _parse_categories(v, base.categories),
    }
    _reject_unknown(table, top_level, "")
    changes = {key: top_level[key](value, key) for key, value in table.items()}
    return replace(base, **changes)


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{key}: expected a list, got {value!r}")
    return list(value)


def _parse_choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    chosen = _parse_str(value, key)
    if chosen not in choices:
        raise ValueError(f"{key}: must be one of {choices}, got {chosen!r}")
    return chosen


DEFAULT_POLICY = Policy()


# --------------------------------------------------------------------------------------------
# Identity requests (§3)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityPause:
    """A staff request for more information, as recorded on the case.

    `purpose` is "identity" (Art. 12(6)) or "scope" (clarification; never pauses, §3.4).
    `reason` is the recorded necessity; without one the clock does not pause.
    `received_on` is None while the requester has not replied.
    """

    requested_on: date
    received_on: date | None = None
    reason: str = ""
    purpose: str = "identity"

    def __post_init__(self) -> None:
        if self.purpose not in ("identity", "scope"):
            raise ValueError(f"purpose must be 'identity' or 'scope', not {self.purpose!r}")
        if self.received_on is not None and self.received_on < self.requested_on:
            raise ValueError("received_on is before requested_on")


@dataclass(frozen=True)
class _ClockStart:
    count_from: date   # the date the one-month period runs from
    paused_days: int   # calendar days added before rolling


def _clock_start(
    receipt: date, policy: Policy, identity: IdentityPause | None, rules: list[str]
) -> _ClockStart:
    """Apply clock_mode to an identity request, only when every §3.3 condition holds."""
    unchanged = _ClockStart(receipt, 0)
    if identity is None:
        return unchanged
    if identity.requested_on < receipt:
        raise ValueError("identity request is dated before the receipt date")
    asked = identity.requested_on.isoformat()
    if policy.clock_mode == CLOCK_NONE:
        rules.append(f"clock: mode none; the request of {asked} does not move the due date (§3)")
        return unchanged
    if identity.purpose != "identity":
        rules.append(f"clock: the request of {asked} asked about scope; never pauses (§3.4)")
        return unchanged
    # Counted on public holidays only: company closures must not stretch a legal condition.
    delay_bd = working_days_between(receipt, identity.requested_on,
                                    policy.controller_public_holidays())
    if delay_bd > policy.id_request_grace_bd:
        rules.append(
            f"clock: ID requested {asked}, {delay_bd} BD after receipt, beyond the "
            f"{policy.id_request_grace_bd} BD grace; no pause (§3.3a)"
        )
        return unchanged
    if not identity.reason.strip():
        rules.append(f"clock: ID requested {asked} without a recorded reason; no pause (§3.3b)")
        return unchanged
    if identity.received_on is None:
        rules.append(
            f"clock: ID requested {asked}, no reply yet; due shown without the pause "
            f"until the reply arrives ({policy.clock_mode})"
        )
        return unchanged
    replied = identity.received_on.isoformat()
    if policy.clock_mode == CLOCK_RESTART:
        rules.append(f"clock: restart_on_identity; counted from the ID reply on {replied}")
        return _ClockStart(identity.received_on, 0)
    paused = (identity.received_on - identity.requested_on).days
    first_paused = (identity.requested_on + timedelta(days=1)).isoformat()
    rules.append(
        f"clock: suspend_for_identity; paused {paused} calendar days "
        f"({first_paused} to {replied}) added before rolling (§3.3)"
    )
    return _ClockStart(receipt, paused)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _iso(d: date | None) -> str | None:
    return None if d is None else d.isoformat()


@dataclass(frozen=True)
class DueDates:
    receipt_date: date
    due: date                          # earliest due among the labels (legal or SLA)
    internal_target: date              # what reminders aim at; always <= due
    extended_due: date | None          # earliest extended due among extendable labels
    unsuspended_due: date              # `due` as if no identity pause had applied
    appi_two_weeks: date | None        # end of the Art. 39 two weeks; suit possible next day
    gdpr_due: date | None              # also the extension-notice and Art. 12(4) deadline
    per_label: dict[str, date]
    extended_per_label: dict[str, date]
    rules: tuple[str, ...]
    labels: tuple[str, ...] = ()       # categories used, in input order
    gdpr_flagged: bool = False
    clock_mode: str = CLOCK_NONE
    paused_days: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values: dates as ISO strings, None kept as None."""
        return {
            "receipt_date": self.receipt_date.isoformat(),
            "due": self.due.isoformat(),
            "internal_target": self.internal_target.isoformat(),
            "extended_due": _iso(self.extended_due),
            "unsuspended_due": self.unsuspended_due.isoformat(),
            "appi_two_weeks": _iso(self.appi_two_weeks),
            "gdpr_due": _iso(self.gdpr_due),
            "per_label": {k: v.isoformat() for k, v in self.per_label.items()},
            "extended_per_label": {k: v.isoformat() for k, v in self.extended_per_label.items()},
            "rules": list(self.rules),
            "labels": list(self.labels),
            "gdpr_flagged": self.gdpr_flagged,
            "clock_mode": self.clock_mode,
            "paused_days": self.paused_days,
        }


@dataclass(frozen=True)
class _LabelDates:
    due: date
    unsuspended_due: date
    internal_target: date
    extended_due: date | None


@dataclass(frozen=True)
class _GdprDates:
    due: date
    unsuspended_due: date
    extended_due: date
    earliest_raw: date   # un-rolled same-date result, earliest over conservative timezones
    paused_days: int


def _roll_note(raw: date, rolled: date, calendar: Calendar) -> str:
    if rolled == raw:
        return f", a working day ({calendar.label})"
    return f" -> rolled to {rolled.isoformat()} ({calendar.label})"


def _gdpr_dates(
    received_at: datetime,
    receipt: date,
    policy: Policy,
    identity: IdentityPause | None,
    rules: list[str],
) -> _GdprDates:
    calendar = policy.gdpr_holidays()
    raw = add_months(receipt, 1)
    unsuspended = roll_forward(raw, calendar)
    rules.append(
        f"gdpr: 1182/71 Art.3(2)(c) one month from {receipt.isoformat()} = {_fmt(raw)}"
        f"{_roll_note(raw, unsuspended, calendar)}"
    )
    start = _clock_start(receipt, policy, identity, rules)
    shift = timedelta(days=start.paused_days)
    effective_raw = add_months(start.count_from, 1) + shift
    due = roll_forward(effective_raw, calendar)
    if due != unsuspended:
        rules.append(f"gdpr: with the clock adjustment {_fmt(effective_raw)}"
                     f"{_roll_note(effective_raw, due, calendar)}")
    extended_raw = add_months(start.count_from, 3) + shift
    extended = roll_forward(extended_raw, calendar)
    rules.append(
        f"gdpr: Art.12(3) extension, three months from {start.count_from.isoformat()}"
        + (f" plus {start.paused_days} paused days" if start.paused_days else "")
        + f" = {_fmt(extended_raw)}{_roll_note(extended_raw, extended, calendar)}"
        " (not chained from the first due, §2.4; notice with reasons due by the one-month date)"
    )
    earliest_raw = effective_raw
    for tz in policy.conservative_tz:
        other_receipt = receipt_date_of(received_at, tz)
        if other_receipt == receipt or start.count_from != receipt:
            continue  # same date, or restarted from the ID reply: nothing earlier to find
        other_raw = add_months(other_receipt, 1) + shift
        if other_raw < earliest_raw:
            rules.append(
                f"conservative: received {other_receipt.isoformat()} in {tz}; "
                f"one month = {_fmt(other_raw)} (internal target only, §7.4)"
            )
            earliest_raw = other_raw
    return _GdprDates(due, unsuspended, extended, earliest_raw, start.paused_days)


def _internal_target(anchor: date, policy: Policy, who: str, rules: list[str]) -> date:
    """Latest controller working day at or before the un-rolled anchor, minus the margin."""
    calendar = policy.controller_holidays()
    latest = roll_back(anchor, calendar)
    target = add_working_days(latest, -policy.internal_margin_bd, calendar)
    rules.append(
        f"internal_target({who}): latest {calendar.label} working day at or before "
        f"{_fmt(anchor)} = {latest.isoformat()}, minus {policy.internal_margin_bd} BD "
        f"= {_fmt(target)} (§2.3)"
    )
    return target


def _appi_label_dates(
    name: str,
    category: CategoryPolicy,
    arrival: date,
    gdpr: _GdprDates | None,
    policy: Policy,
    rules: list[str],
) -> _LabelDates:
    calendar = policy.controller_holidays()
    days = category.sla_days or 0
    raw = arrival + timedelta(days=days)
    appi_due = roll_forward(raw, calendar)
    rules.append(
        f"{name}: APPI internal SLA {days} days from arrival {arrival.isoformat()} = {_fmt(raw)}"
        f"{_roll_note(raw, appi_due, calendar)}"
    )
    extended: date | None = None
    if category.extension_days is not None:
        ext_raw = raw + timedelta(days=category.extension_days)
        extended = roll_forward(ext_raw, calendar)
        rules.append(
            f"{name}: internal extension +{category.extension_days} days = {_fmt(ext_raw)}"
            f"{_roll_note(ext_raw, extended, calendar)} (supervisor approval, §8)"
        )
    due, unsuspended, anchor = appi_due, appi_due, raw
    if gdpr is not None:  # GDPR-flagged: the earlier of APPI and GDPR wins (§8)
        due, unsuspended = min(appi_due, gdpr.due), min(appi_due, gdpr.unsuspended_due)
        anchor = min(raw, gdpr.earliest_raw)
        extended = gdpr.extended_due if extended is None else min(extended, gdpr.extended_due)
        rules.append(f"{name}: GDPR-flagged; earlier of APPI {appi_due.isoformat()} and "
                     f"GDPR {gdpr.due.isoformat()} = {due.isoformat()}")
    target = _internal_target(anchor, policy, name, rules)
    return _LabelDates(due, unsuspended, target, extended)


def _gdpr_label_dates(name: str, gdpr: _GdprDates, policy: Policy,
                      rules: list[str]) -> _LabelDates:
    target = _internal_target(gdpr.earliest_raw, policy, name, rules)
    return _LabelDates(gdpr.due, gdpr.unsuspended_due, target, gdpr.extended_due)


def _working_day_label_dates(
    name: str, category: CategoryPolicy, receipt: date, policy: Policy, rules: list[str]
) -> _LabelDates:
    calendar = policy.controller_holidays()
    sla_bd = category.sla_bd or 1
    due = add_working_days(receipt, sla_bd, calendar)
    rules.append(f"{name}: internal SLA {sla_bd} BD from {receipt.isoformat()} = {_fmt(due)} "
                 f"({calendar.label})")
    extended: date | None = None
    if category.extension_bd is not None:
        extended = add_working_days(receipt, sla_bd + category.extension_bd, calendar)
        rules.append(f"{name}: internal extension +{category.extension_bd} BD = {_fmt(extended)}")
    # An internal SLA is already an internal target: no extra margin on top.
    return _LabelDates(due, due, due, extended)


def split_labels(labels: Iterable[str], policy: Policy = DEFAULT_POLICY) -> tuple[
    tuple[str, ...], bool
]:
    """(categories in input order without duplicates, GDPR-flagged?). Unknown labels raise."""
    categories: list[str] = []
    flagged = False
    for raw_label in labels:
        label = raw_label.strip().lower()
        if label == GDPR_FLAG:
            flagged = True
        elif label in policy.categories:
            if label not in categories:
                categories.append(label)
        else:
            raise ValueError(f"unknown label {raw_label!r}; known: "
                             f"{sorted(policy.categories)} and {GDPR_FLAG!r}")
    return tuple(categories), flagged


def _gdpr_applies(categories: Iterable[str], flagged: bool, policy: Policy) -> bool:
    """GDPR Art. 12 periods apply to gdpr_request, and to APPI requests when GDPR-flagged."""
    for name in categories:
        rule = policy.categories[name].due_rule
        if rule == RULE_GDPR_MONTH or (rule == RULE_APPI_DAYS and flagged):
            return True
    return False


def receipt_rule(received_at: datetime, receipt: date, policy: Policy) -> str:
    """The first line of every ``DueDates.rules``: the only one that names the exact time."""
    return f"receipt: {received_at.isoformat()} is {_fmt(receipt)} in {policy.controller_timezone}"


def receipt_dates(received_at: datetime, policy: Policy) -> tuple[date, ...]:
    """Every calendar date of ``received_at`` that ``compute_due`` looks at (the controller's,
    the APPI and the conservative time zones): its result depends on the time only
    through these and ``receipt_rule``."""
    return (receipt_date_of(received_at, policy.controller_timezone),
            receipt_date_of(received_at, policy.appi_timezone),
            *(receipt_date_of(received_at, tz) for tz in policy.conservative_tz))


def compute_due(
    received_at: datetime,
    labels: Iterable[str],
    policy: Policy = DEFAULT_POLICY,
    *,
    identity: IdentityPause | None = None,
) -> DueDates:
    """All due dates of a case received at `received_at` with these labels.

    `labels` are classifier categories (see `policy.categories`) plus optionally the flag
    "gdpr". No category means "other" (triage). The case due is the earliest label due.
    """
    receipt = receipt_date_of(received_at, policy.controller_timezone)
    rules: list[str] = [receipt_rule(received_at, receipt, policy)]
    categories, flagged = split_labels(labels, policy)
    if not categories:
        categories = ("other",)
        rules.append("labels: no category; treated as 'other' (triage)")
    gdpr = (_gdpr_dates(received_at, receipt, policy, identity, rules)
            if _gdpr_applies(categories, flagged, policy) else None)
    if flagged and gdpr is None:
        rules.append("gdpr: flag set, but no Art. 15-22 category among the labels")

    uses_appi = any(policy.categories[n].due_rule == RULE_APPI_DAYS for n in categories)
    arrival = receipt_date_of(received_at, policy.appi_timezone)
    appi_two_weeks = arrival + timedelta(days=APPI_ART39_DAYS) if uses_appi else None
    if appi_two_weeks is not None:
        rules.append(
            f"appi: Art.39 two weeks from arrival {arrival.isoformat()} end with "
            f"{_fmt(appi_two_weeks)}; suit possible from "
            f"{(appi_two_weeks + timedelta(days=1)).isoformat()}"
        )

    by_label: dict[str, _LabelDates] = {}
    for name in categories:
        category = policy.categories[name]
        if category.due_rule == RULE_GDPR_MONTH:
            assert gdpr is not None
            by_label[name] = _gdpr_label_dates(name, gdpr, policy, rules)
        elif category.due_rule == RULE_APPI_DAYS:
            by_label[name] = _appi_label_dates(name, category, arrival,
                                               gdpr if flagged else None, policy, rules)
        else:
            by_label[name] = _working_day_label_dates(name, category, receipt, policy, rules)

    per_label = {name: d.due for name, d in by_label.items()}
    due = min(per_label.values())
    if len(per_label) > 1:
        listed = ", ".join(f"{n} {d.isoformat()}" for n, d in per_label.items())
        rules.append(f"due: earliest of {listed} = {due.isoformat()}")
    earliest_target = min(d.internal_target for d in by_label.values())
    # Clamp: a large margin must not put the target before the request arrived.
    internal_target = min(max(earliest_target, receipt), due)
    if internal_target != earliest_target:
        rules.append(f"internal_target: {earliest_target.isoformat()} clamped to "
                     f"{internal_target.isoformat()}")
    extended_per_label = {n: d.extended_due for n, d in by_label.items()
                          if d.extended_due is not None}
    return DueDates(
        receipt_date=receipt,
        due=due,
        internal_target=internal_target,
        extended_due=min(extended_per_label.values()) if extended_per_label else None,
        unsuspended_due=min(d.unsuspended_due for d in by_label.values()),
        appi_two_weeks=appi_two_weeks,
        gdpr_due=gdpr.due if gdpr is not None else None,
        per_label=per_label,
        extended_per_label=extended_per_label,
        rules=tuple(rules),
        labels=categories,
        gdpr_flagged=flagged,
        clock_mode=policy.clock_mode,
        paused_days=gdpr.paused_days if gdpr is not None else 0,
    )


# --------------------------------------------------------------------------------------------
# Reminders and escalations (§8)
# --------------------------------------------------------------------------------------------


def _target_for(dues: DueDates, name: str, extended: bool) -> date | None:
    if name not in dues.per_label:
        raise ValueError(f"label {name!r} was not part of the computed due dates")
    return dues.extended_per_label.get(name) if extended else dues.per_label[name]


def reminder_dates(
    dues: DueDates,
    labels: Iterable[str],
    policy: Policy = DEFAULT_POLICY,
    *,
    extended: bool = False,
) -> list[tuple[date, str]]:
    """Staff reminders (T-n BD on the controller calendar), sorted by date.

    With `extended=True` the same schedule runs against the extended due dates (§8); labels
    without an extension are skipped. Reminders that would fall before receipt are moved to
    the receipt date, so a short SLA still gets its reminder.
    """
    calendar = policy.controller_holidays()
    categories, _ = split_labels(labels, policy)
    out: list[tuple[date, str]] = []
    for name in categories:
        target = _target_for(dues, name, extended)
        if target is None:
            continue
        category = policy.categories[name]
        which = "extended due" if extended else "due"
        for n in category.reminders_bd:
            when = max(add_working_days(target, -n, calendar), dues.receipt_date)
            note = ("decide: answer or extend; "
                    if n == category.decide_extension_bd and not extended else "")
            out.append((when, f"{name}: T-{n} BD reminder, {note}{which} {target.isoformat()}"))
    return sorted(out)


def escalation_dates(
    dues: DueDates,
    labels: Iterable[str],
    policy: Policy = DEFAULT_POLICY,
    *,
    extended: bool = False,
) -> list[tuple[date, str]]:
    """Escalations relative to each label's due (negative: before it), sorted by date."""
    calendar = policy.controller_holidays()
    categories, _ = split_labels(labels, policy)
    out: list[tuple[date, str]] = []
    for name in categories:
        target = _target_for(dues, name, extended)
        if target is None:
            continue
        for n in policy.categories[name].escalations_bd:
            when = max(add_working_days(target, n, calendar), dues.receipt_date)
            out.append((when, f"{name}: escalate at T{n:+d} BD, due {target.isoformat()}"))
    return sorted(out)
