"""Property tests for the deadline engine: invariants that must hold for any receipt instant."""
from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from inbox_bot.deadlines import (
    DEFAULT_POLICY,
    CalendarSpec,
    IdentityPause,
    Policy,
    add_working_days,
    compute_due,
    get_calendar,
    working_days_between,
)

# The `holidays` package covers JP only up to 2099; keep three months of headroom.
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 6, 30), timezones=st.just(timezone.utc)
)
calendar_specs = st.sampled_from(
    [CalendarSpec("DE"), CalendarSpec("JP"), CalendarSpec("DE", "BY"), CalendarSpec("FR")]
)
timezones = st.sampled_from(["Asia/Tokyo", "Europe/Berlin", "UTC", "America/Los_Angeles"])
label_sets = st.lists(
    st.sampled_from(["disclosure", "revision", "deletion", "gdpr_request", "complaint", "other",
                     "gdpr"]),
    min_size=1, max_size=4,
)
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


@st.composite
def policies(draw: st.DrawFn, near: datetime | None = None) -> Policy:
    """A policy with random calendars, margin and closure days around the receipt."""
    anchor = (near or datetime(2026, 1, 1, tzinfo=timezone.utc)).date()
    closure_offsets = draw(st.lists(st.integers(-3, 100), max_size=12))
    return replace(
        DEFAULT_POLICY,
        controller_timezone=draw(timezones),
        gdpr_calendar=draw(calendar_specs),
        controller_calendar=draw(calendar_specs),
        company_closed_days=tuple(sorted({anchor + timedelta(days=k) for k in closure_offsets})),
        internal_margin_bd=draw(st.integers(0, 10)),
    )


@PROPERTY_SETTINGS
@given(received_at=instants, data=st.data())
def test_gdpr_due_is_at_least_28_days_after_receipt_and_a_gdpr_working_day(received_at, data):
    policy = data.draw(policies(received_at))
    result = compute_due(received_at, ["gdpr_request"], policy)
    assert result.due >= result.receipt_date + timedelta(days=28)
    assert policy.gdpr_holidays().is_working_day(result.due)
    assert result.extended_due is not None and result.extended_due >= result.due
    assert policy.gdpr_holidays().is_working_day(result.extended_due)


@PROPERTY_SETTINGS
@given(first=instants, second=instants, spec=calendar_specs, tz=timezones)
def test_gdpr_due_is_non_decreasing_in_receipt_instant(first, second, spec, tz):
    earlier, later = sorted((first, second))
    policy = replace(DEFAULT_POLICY, gdpr_calendar=spec, controller_timezone=tz)
    a = compute_due(earlier, ["gdpr_request"], policy)
    b = compute_due(later, ["gdpr_request"], policy)
    assert a.receipt_date <= b.receipt_date
    assert a.due <= b.due
    assert a.extended_due <= b.extended_due


@PROPERTY_SETTINGS
@given(received_at=instants, data=st.data())
def test_company_closures_never_change_the_gdpr_legal_due(received_at, data):
    policy = data.draw(policies(received_at))
    without = replace(policy, company_closed_days=())
    assert (compute_due(received_at, ["gdpr_request"], policy).due
            == compute_due(received_at, ["gdpr_request"], without).due)


@PROPERTY_SETTINGS
@given(received_at=instants, labels=label_sets, data=st.data())
def test_internal_sla_dues_fall_on_controller_working_days(received_at, labels, data):
    policy = data.draw(policies(received_at))
    result = compute_due(received_at, labels, policy)
    controller = policy.controller_holidays()
    for name, due in result.per_label.items():
        assert due > result.receipt_date
        is_gdpr_date = due == result.gdpr_due and policy.gdpr_holidays().is_working_day(due)
        # A GDPR-flagged APPI request may take the (earlier) GDPR legal date instead.
        assert controller.is_working_day(due) or is_gdpr_date, (name, due)


@PROPERTY_SETTINGS
@given(received_at=instants, labels=label_sets, data=st.data())
def test_case_dates_are_ordered(received_at, labels, data):
    policy = data.draw(policies(received_at))
    result = compute_due(received_at, labels, policy)
    assert result.due == min(result.per_label.values())
    assert result.receipt_date <= result.internal_target <= result.due
    assert result.unsuspended_due == result.due  # no identity pause given
    if result.extended_due is not None:
        assert result.extended_due >= result.due
    if result.appi_two_weeks is not None:
        assert result.appi_two_weeks >= result.receipt_date + timedelta(days=13)


@PROPERTY_SETTINGS
@given(
    received_at=instants,
    request_delay=st.integers(0, 10),
    reply_delay=st.integers(0, 60),
    mode=st.sampled_from(["none", "suspend_for_identity", "restart_on_identity"]),
)
def test_identity_pause_never_makes_the_due_earlier(received_at, request_delay, reply_delay, mode):
    policy = replace(DEFAULT_POLICY, clock_mode=mode)
    receipt = compute_due(received_at, ["gdpr_request"], policy).receipt_date
    requested = receipt + timedelta(days=request_delay)
    pause = IdentityPause(requested_on=requested, received_on=requested + timedelta(reply_delay),
                          reason="sender differs from account email")
    result = compute_due(received_at, ["gdpr_request"], policy, identity=pause)
    assert result.due >= result.unsuspended_due
    assert result.internal_target <= result.due
    assert policy.gdpr_holidays().is_working_day(result.due)


@PROPERTY_SETTINGS
@given(start=st.dates(date(2000, 1, 1), date(2098, 1, 1)), n=st.integers(-40, 40),
       spec=calendar_specs)
def test_add_working_days_and_working_days_between_are_inverse(start, n, spec):
    calendar = get_calendar(spec.country, spec.subdiv)
    end = add_working_days(start, n, calendar)
    assert working_days_between(start, end, calendar) == n
    if n != 0:
        assert calendar.is_working_day(end)


@settings(max_examples=60, deadline=None)
@given(policy=st.sampled_from([DEFAULT_POLICY,
                               replace(DEFAULT_POLICY, controller_timezone="Europe/Berlin",
                                       conservative_tz=("America/Los_Angeles", "UTC"))]),
       day=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2030, 12, 31),
                        timezones=st.just(timezone.utc)),
       cases=st.lists(st.tuples(st.integers(0, 3 * 24 * 60), label_sets), min_size=1, max_size=25))
def test_the_date_planner_gives_what_computing_each_case_gives(policy, day, cases):
    # Receipt times within three days of each other, so that the planner's memo is hit
    # across midnights in every time zone the policy looks at.
    from inbox_bot.cases import DatePlanner, compute_dates, first_notice
    planner = DatePlanner(policy)
    for minutes, labels in cases:
        received_at = day + timedelta(minutes=minutes)
        dues = compute_dates(received_at, labels, policy)
        assert planner.plan(received_at, labels) == (dues, first_notice(received_at, labels, dues, policy))
