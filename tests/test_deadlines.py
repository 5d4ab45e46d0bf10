"""Deadline engine against the worked vectors of docs/deadlines.md §6 and the §8 policy."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime, time, timezone
from zoneinfo import ZoneInfo

import holidays
import pytest

from inbox_bot.deadlines import (
    DEFAULT_POLICY,
    CalendarSpec,
    IdentityPause,
    Policy,
    add_months,
    add_working_days,
    compute_due,
    deadline_instant,
    escalation_dates,
    get_calendar,
    reminder_dates,
    roll_forward,
    working_days_between,
)

TOKYO = ZoneInfo("Asia/Tokyo")
JP_GDPR_POLICY = replace(DEFAULT_POLICY, gdpr_calendar=CalendarSpec("JP"))


def d(iso: str) -> date:
    return date.fromisoformat(iso)


def noon_jst(iso: str) -> datetime:
    return datetime.combine(d(iso), time(12, 0), tzinfo=TOKYO)


def utc(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(timezone.utc)


# --- §6.1 GDPR one month ----
# (id, received, raw +1M, due DE, due JP or None if the doc leaves it unchecked,
#  ext +3M DE, ext with the JP calendar where the doc states it)
G_VECTORS = [
    ("G1", "2026-01-15", "2026-02-15", "2026-02-16", "2026-02-16", "2026-04-15", None),
    ("G2", "2026-01-31", "2026-02-28", "2026-03-02", "2026-03-02", "2026-04-30", None),
    ("G3", "2026-01-28", "2026-02-28", "2026-03-02", "2026-03-02", "2026-04-28", None),
    ("G4", "2026-01-29", "2026-02-28", "2026-03-02", "2026-03-02", "2026-04-29", "2026-04-30"),
    ("G5", "2028-01-31", "2028-02-29", "2028-02-29", "2028-02-29", "2028-05-02", "2028-05-01"),
    ("G6", "2026-03-31", "2026-04-30", "2026-04-30", "2026-04-30", "2026-06-30", None),
    ("G7", "2026-05-31", "2026-06-30", "2026-06-30", "2026-06-30", "2026-08-31", None),
    ("G8", "2026-10-31", "2026-11-30", "2026-11-30", "2026-11-30", "2027-02-01", None),
    ("G9", "2026-03-03", "2026-04-03", "2026-04-07", "2026-04-03", "2026-06-03", None),
    ("G10", "2026-03-06", "2026-04-06", "2026-04-07", "2026-04-06", "2026-06-08", None),
    ("G11", "2026-04-14", "2026-05-14", "2026-05-15", "2026-05-14", "2026-07-14", None),
    ("G12", "2026-04-24", "2026-05-24", "2026-05-26", "2026-05-25", "2026-07-24", None),
    ("G13", "2026-05-22", "2026-06-22", "2026-06-22", "2026-06-22", "2026-08-24", None),
    ("G14", "2026-09-03", "2026-10-03", "2026-10-05", "2026-10-05", "2026-12-03", None),
    ("G15", "2026-11-25", "2026-12-25", "2026-12-28", "2026-12-25", "2027-02-25", None),
    ("G16", "2026-11-26", "2026-12-26", "2026-12-28", "2026-12-28", "2027-02-26", None),
    ("G17", "2026-12-01", "2027-01-01", "2027-01-04", "2027-01-04", "2027-03-01", None),
    ("G18", "2026-12-24", "2027-01-24", "2027-01-25", "2027-01-25", "2027-03-24", None),
    ("G19", "2026-12-31", "2027-01-31", "2027-02-01", "2027-02-01", "2027-03-31", None),
    ("G20", "2026-04-06", "2026-05-06", "2026-05-06", "2026-05-07", "2026-07-06", None),
    ("G21", "2026-08-21", "2026-09-21", "2026-09-21", "2026-09-24", "2026-11-23", "2026-11-24"),
    ("G22", "2026-07-01", "2026-08-01", "2026-08-03", "2026-08-03", "2026-10-01", None),
    ("G23", "2026-06-30", "2026-07-30", "2026-07-30", "2026-07-30", "2026-09-30", None),
    ("G24", "2027-04-30", "2027-05-30", "2027-05-31", None, "2027-07-30", None),
    ("G25", "2027-11-30", "2027-12-30", "2027-12-30", None, "2028-02-29", None),
]
G_IDS = [row[0] for row in G_VECTORS]


@pytest.mark.parametrize("vid, received, raw, due_de, due_jp, ext_de, ext_jp", G_VECTORS,
                         ids=G_IDS)
def test_gdpr_one_month_raw_date_matches_vector(vid, received, raw, due_de, due_jp, ext_de,
                                                ext_jp):
    assert add_months(d(received), 1) == d(raw)


@pytest.mark.parametrize("vid, received, raw, due_de, due_jp, ext_de, ext_jp", G_VECTORS,
                         ids=G_IDS)
def test_gdpr_due_and_extension_on_de_calendar_match_vector(vid, received, raw, due_de, due_jp,
                                                            ext_de, ext_jp):
    result = compute_due(noon_jst(received), ["gdpr_request"])
    assert result.receipt_date == d(received)
    assert result.due == d(due_de)
    assert result.gdpr_due == d(due_de)
    assert result.extended_due == d(ext_de)
    assert result.unsuspended_due == d(due_de)


@pytest.mark.parametrize(
    "vid, received, raw, due_de, due_jp, ext_de, ext_jp",
    [row for row in G_VECTORS if row[4] is not None], ids=[r[0] for r in G_VECTORS if r[4]],
)
def test_gdpr_due_on_jp_calendar_matches_vector(vid, received, raw, due_de, due_jp, ext_de,
                                                ext_jp):
    result = compute_due(noon_jst(received), ["gdpr_request"], JP_GDPR_POLICY)
    assert result.due == d(due_jp)
    if ext_jp is not None:
        assert result.extended_due == d(ext_jp)


def test_gdpr_rule_text_names_source_raw_date_and_roll():
    result = compute_due(noon_jst("2026-01-15"), ["gdpr_request"])
    assert ("gdpr: 1182/71 Art.3(2)(c) one month from 2026-01-15 = 2026-02-15 (Sun) "
            "-> rolled to 2026-02-16 (DE)") in result.rules


def test_january_receipts_collide_on_the_same_march_due():
    dues = {compute_due(noon_jst(f"2026-01-{day}"), ["gdpr_request"]).due
            for day in (28, 29, 30, 31)}
    assert dues == {d("2026-03-02")}


def test_company_closures_never_move_the_gdpr_legal_due():
    closed = replace(DEFAULT_POLICY, gdpr_calendar=CalendarSpec("JP"),
                     company_closed_days=(d("2026-12-25"),))
    # G15 on the JP calendar: 25 Dec is not a public holiday, so the closure must not roll it.
    result = compute_due(noon_jst("2026-11-25"), ["gdpr_request"], closed)
    assert result.due == d("2026-12-25")
    assert result.internal_target < d("2026-12-25")


# --- §6.2 timezones ----


@pytest.mark.parametrize(
    "vid, arrival_utc, receipt, due",
    [
        ("T1", "2026-06-30T23:30Z", "2026-07-01", "2026-08-03"),
        ("T2", "2026-03-31T16:30Z", "2026-04-01", "2026-05-04"),
        ("T3", "2026-12-24T15:05Z", "2026-12-25", "2027-01-25"),
        ("T4", "2026-11-20T02:00Z", "2026-11-20", "2026-12-21"),
    ],
)
def test_timezone_vector_uses_controller_local_receipt_date(vid, arrival_utc, receipt, due):
    result = compute_due(utc(arrival_utc), ["gdpr_request"])
    assert result.receipt_date == d(receipt)
    assert result.due == d(due)


def test_t1_utc_dating_would_have_given_the_earlier_g23_due():
    utc_policy = replace(DEFAULT_POLICY, controller_timezone="UTC")
    result = compute_due(utc("2026-06-30T23:30Z"), ["gdpr_request"], utc_policy)
    assert (result.receipt_date, result.due) == (d("2026-06-30"), d("2026-07-30"))


def test_t2_jp_calendar_keeps_may_first():
    result = compute_due(utc("2026-03-31T16:30Z"), ["gdpr_request"], JP_GDPR_POLICY)
    assert result.due == d("2026-05-01")


def test_t2_conservative_berlin_date_sets_internal_target_without_margin():
    no_margin = replace(DEFAULT_POLICY, internal_margin_bd=0)
    result = compute_due(utc("2026-03-31T16:30Z"), ["gdpr_request"], no_margin)
    assert result.due == d("2026-05-04")             # legal due stays on Asia/Tokyo
    assert result.internal_target == d("2026-04-30")  # Berlin receipt 31 Mar -> 30 Apr
    assert any(rule.startswith("conservative: received 2026-03-31 in Europe/Berlin")
               for rule in result.rules)


def test_t2_default_margin_counts_two_jp_working_days_back_over_showa_day():
    result = compute_due(utc("2026-03-31T16:30Z"), ["gdpr_request"])
    # 30 Apr, minus 2 BD skipping 29 Apr (昭和の日): 28 Apr, 27 Apr.
    assert result.internal_target == d("2026-04-27")


def test_without_conservative_tz_the_internal_target_follows_the_tokyo_date():
    policy = replace(DEFAULT_POLICY, internal_margin_bd=0, conservative_tz=())
    result = compute_due(utc("2026-03-31T16:30Z"), ["gdpr_request"], policy)
    assert result.internal_target == d("2026-05-01")


def test_naive_received_at_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        compute_due(datetime(2026, 1, 15, 12, 0), ["gdpr_request"])


def test_deadline_instant_is_last_microsecond_of_the_local_day():
    instant = deadline_instant(d("2026-02-16"), "Asia/Tokyo")
    assert instant == datetime(2026, 2, 16, 23, 59, 59, 999999, tzinfo=TOKYO)
    assert instant.utcoffset().total_seconds() == 9 * 3600


# --- §6.3 clock modes ----

RECEIVED_C = noon_jst("2026-01-15")
ID_REQUEST = IdentityPause(requested_on=d("2026-01-16"), received_on=d("2026-01-26"),
                           reason="account email differs from the sender")


def test_c1_clock_mode_none_ignores_the_identity_request():
    result = compute_due(RECEIVED_C, ["gdpr_request"], identity=ID_REQUEST)
    assert result.due == d("2026-02-16")
    assert result.paused_days == 0


def test_c2_suspend_for_identity_adds_paused_days_before_rolling():
    policy = replace(DEFAULT_POLICY, clock_mode="suspend_for_identity")
    result = compute_due(RECEIVED_C, ["gdpr_request"], policy, identity=ID_REQUEST)
    assert result.paused_days == 10
    assert result.due == d("2026-02-25")
    assert result.unsuspended_due == d("2026-02-16")
    assert result.extended_due == d("2026-04-27")  # 15 Apr + 10 days = Sat 25 Apr -> Mon


def test_c3_identity_request_after_the_grace_period_does_not_pause():
    policy = replace(DEFAULT_POLICY, clock_mode="suspend_for_identity")
    late = replace(ID_REQUEST, requested_on=d("2026-01-22"), received_on=d("2026-01-30"))
    result = compute_due(RECEIVED_C, ["gdpr_request"], policy, identity=late)
    assert result.due == d("2026-02-16")
    assert any("beyond the 3 BD grace" in rule for rule in result.rules)


@pytest.mark.parametrize("mode", ["none", "suspend_for_identity", "restart_on_identity"])
def test_c4_scope_clarification_never_pauses(mode):
    policy = replace(DEFAULT_POLICY, clock_mode=mode)
    scope = IdentityPause(requested_on=d("2026-01-16"), received_on=d("2026-01-26"),
                          reason="which data?", purpose="scope")
    assert compute_due(RECEIVED_C, ["gdpr_request"], policy, identity=scope).due == d("2026-02-16")


def test_identity_request_without_recorded_reason_does_not_pause():
    policy = replace(DEFAULT_POLICY, clock_mode="suspend_for_identity")
    result = compute_due(RECEIVED_C, ["gdpr_request"], policy,
                         identity=replace(ID_REQUEST, reason="  "))
    assert result.due == d("2026-02-16")


def test_open_identity_request_keeps_the_unpaused_due_until_the_reply():
    policy = replace(DEFAULT_POLICY, clock_mode="suspend_for_identity")
    result = compute_due(RECEIVED_C, ["gdpr_request"], policy,
                         identity=replace(ID_REQUEST, received_on=None))
    assert result.due == d("2026-02-16")


def test_restart_on_identity_counts_from_the_reply_day():
    policy = replace(DEFAULT_POLICY, clock_mode="restart_on_identity")
    result = compute_due(RECEIVED_C, ["gdpr_request"], policy, identity=ID_REQUEST)
    assert result.due == d("2026-02-26")            # 26 Jan + 1 month, a Thursday
    assert result.unsuspended_due == d("2026-02-16")


def test_identity_reply_before_request_is_invalid():
    with pytest.raises(ValueError):
        IdentityPause(requested_on=d("2026-01-16"), received_on=d("2026-01-15"), reason="x")


# --- §6.4 APPI ----


@pytest.mark.parametrize(
    "vid, arrival, two_weeks, sla_due",
    [
        ("A1", "2026-04-22", "2026-05-06", "2026-05-07"),
        ("A2", "2026-09-08", "2026-09-22", "2026-09-24"),
        ("A3", "2026-12-18", "2027-01-01", "2027-01-04"),
    ],
)
def test_appi_sla_is_arrival_plus_14_days_rolled_to_jp_working_day(vid, arrival, two_weeks,
                                                                   sla_due):
    result = compute_due(noon_jst(arrival), ["disclosure"])
    assert result.appi_two_weeks == d(two_weeks)
    assert result.per_label["disclosure"] == d(sla_due)
    assert result.due == d(sla_due)
    assert result.extended_due is not None and result.extended_due > result.due
    assert result.gdpr_due is None


def test_a3_company_closure_on_4_january_moves_the_appi_target():
    policy = Policy.from_mapping({"company_closed_days": ["2027-01-04"]})
    result = compute_due(noon_jst("2026-12-18"), ["deletion"], policy)
    assert result.due == d("2027-01-05")
    assert result.appi_two_weeks == d("2027-01-01")  # the Art. 39 date is legal: unchanged


def test_gdpr_flagged_disclosure_takes_the_earlier_of_appi_and_gdpr():
    flagged = compute_due(noon_jst("2026-04-22"), ["disclosure", "gdpr"])
    assert flagged.gdpr_due == d("2026-05-22")
    assert flagged.due == d("2026-05-07")
    assert flagged.gdpr_flagged


def test_gdpr_flag_with_pause_lets_appi_stay_earliest():
    policy = replace(DEFAULT_POLICY, clock_mode="suspend_for_identity")
    result = compute_due(RECEIVED_C, ["revision", "gdpr"], policy, identity=ID_REQUEST)
    assert result.gdpr_due == d("2026-02-25")
    assert result.due == d("2026-01-29")  # 15 Jan + 14 days, a Thursday


# --- internal SLAs and case-level earliest ----


def test_complaint_sla_is_ten_jp_working_days():
    result = compute_due(noon_jst("2026-01-15"), ["complaint"])
    assert result.due == d("2026-01-29")
    assert result.internal_target == result.due
    assert result.extended_due is None


def test_other_triage_is_two_working_days_and_default_for_no_category():
    assert compute_due(noon_jst("2026-05-01"), ["other"]).due == d("2026-05-08")  # GW holidays
    assert compute_due(noon_jst("2026-05-01"), []).per_label == {"other": d("2026-05-08")}


def test_case_due_is_the_earliest_label_due():
    result = compute_due(noon_jst("2026-01-15"), ["gdpr_request", "complaint"])
    assert result.per_label == {"gdpr_request": d("2026-02-16"), "complaint": d("2026-01-29")}
    assert result.due == d("2026-01-29")
    assert result.extended_due == d("2026-04-15")
    assert any(rule.startswith("due: earliest of") for rule in result.rules)


def test_company_closures_lengthen_internal_slas():
    policy = Policy.from_mapping({"company_closed_days": ["2026-01-16", "2026-01-19"]})
    assert compute_due(noon_jst("2026-01-15"), ["complaint"], policy).due == d("2026-02-02")


def test_unknown_label_is_refused_with_its_name():
    with pytest.raises(ValueError, match="'spam'"):
        compute_due(noon_jst("2026-01-15"), ["spam"])


def test_to_dict_is_json_ready_with_iso_dates():
    result = compute_due(noon_jst("2026-01-15"), ["disclosure", "gdpr"]).to_dict()
    json.dumps(result)
    assert result["receipt_date"] == "2026-01-15"
    assert result["due"] == "2026-01-29"
    assert result["per_label"] == {"disclosure": "2026-01-29"}
    assert {"receipt_date", "due", "internal_target", "extended_due", "rules",
            "per_label"} <= result.keys()


# --- reminders and escalations ----


def test_gdpr_reminders_start_with_the_answer_or_extend_decision():
    dues = compute_due(noon_jst("2026-01-15"), ["gdpr_request"])
    reminders = reminder_dates(dues, ["gdpr_request"])
    # Due 16 Feb; JP calendar skips 11 Feb (建国記念の日).
    assert [when for when, _ in reminders] == [
        d("2026-01-30"), d("2026-02-06"), d("2026-02-12"), d("2026-02-13")]
    assert "decide: answer or extend" in reminders[0][1]


def test_reminders_against_the_extended_due():
    dues = compute_due(noon_jst("2026-01-15"), ["gdpr_request"])
    reminders = reminder_dates(dues, ["gdpr_request"], extended=True)
    assert reminders[-1][0] == d("2026-04-14")


def test_short_sla_reminder_is_clamped_to_receipt():
    policy = Policy.from_mapping({"categories": {"other": {"reminders_bd": [5]}}})
    dues = compute_due(noon_jst("2026-01-15"), ["other"], policy)
    assert reminder_dates(dues, ["other"], policy) == [
        (d("2026-01-15"), "other: T-5 BD reminder, due 2026-01-19")]


def test_disclosure_escalates_on_due_and_five_working_days_later():
    dues = compute_due(noon_jst("2026-04-22"), ["disclosure"])
    assert [when for when, _ in escalation_dates(dues, ["disclosure"])] == [
        d("2026-05-07"), d("2026-05-14")]


# --- calendars and working days ----


def test_working_days_between_counts_the_half_open_interval():
    jp = get_calendar("JP")
    assert working_days_between(d("2026-01-15"), d("2026-01-22"), jp) == 5
    assert working_days_between(d("2026-01-22"), d("2026-01-15"), jp) == -5
    assert working_days_between(d("2026-01-15"), d("2026-01-15"), jp) == 0


def test_add_working_days_skips_weekends_and_holidays_both_ways():
    jp = get_calendar("JP")
    assert add_working_days(d("2026-01-09"), 1, jp) == d("2026-01-13")   # 12 Jan 成人の日
    assert add_working_days(d("2026-01-13"), -1, jp) == d("2026-01-09")
    assert add_working_days(d("2026-01-10"), 0, jp) == d("2026-01-10")


def test_roll_forward_over_german_easter():
    assert roll_forward(d("2026-04-03"), get_calendar("DE")) == d("2026-04-07")


def test_subdivision_calendar_adds_regional_holidays():
    bavaria = get_calendar("DE", "BY")
    assert not bavaria.is_working_day(d("2026-01-06"))  # Epiphany, Bavaria only
    assert get_calendar("DE").is_working_day(d("2026-01-06"))


def test_calendar_refuses_years_the_package_does_not_cover():
    with pytest.raises(ValueError, match="no data for 2100"):
        get_calendar("JP").is_working_day(d("2100-01-04"))


def test_unknown_country_is_a_value_error():
    with pytest.raises(ValueError, match="XX"):
        get_calendar("XX")


# §6 preamble: holiday sets typed in by hand, checked against the `holidays` package.
DOC_HOLIDAYS = {
    ("DE", 2026): ["2026-01-01", "2026-04-03", "2026-04-06", "2026-05-01", "2026-05-14",
                   "2026-05-25", "2026-10-03", "2026-12-25", "2026-12-26"],
    ("DE", 2027): ["2027-01-01", "2027-03-26", "2027-03-29", "2027-05-01", "2027-05-06",
                   "2027-05-17", "2027-10-03", "2027-12-25", "2027-12-26"],
    ("JP", 2026): ["2026-01-01", "2026-01-12", "2026-02-11", "2026-02-23", "2026-03-20",
                   "2026-04-29", "2026-05-03", "2026-05-04", "2026-05-05", "2026-05-06",
                   "2026-07-20", "2026-08-11", "2026-09-21", "2026-09-22", "2026-09-23",
                   "2026-10-12", "2026-11-03", "2026-11-23"],
}


@pytest.mark.parametrize("country, year", sorted(DOC_HOLIDAYS))
def test_doc_holiday_list_matches_holidays_package(country, year):
    package = set(holidays.country_holidays(country, years=year))
    assert package == {d(x) for x in DOC_HOLIDAYS[(country, year)]}


def test_doc_2028_german_anchors_match_holidays_package():
    de_2028 = holidays.country_holidays("DE", years=2028)
    assert d("2028-04-17") in de_2028 and d("2028-05-01") in de_2028  # Easter Mon, Labour Day
    assert d("2028-05-01").weekday() == 0


# --- Policy ----


def test_default_policy_is_the_section_8_table():
    cats = DEFAULT_POLICY.categories
    assert cats["complaint"].sla_bd == 10 and cats["complaint"].reminders_bd == (3, 1)
    assert cats["other"].sla_bd == 2
    assert cats["disclosure"].sla_days == 14 and cats["disclosure"].reminders_bd == (5, 2, 1)
    assert cats["gdpr_request"].reminders_bd == (10, 5, 2, 1)
    assert DEFAULT_POLICY.internal_margin_bd == 2
    assert DEFAULT_POLICY.conservative_tz == ("Europe/Berlin",)
    assert DEFAULT_POLICY.gdpr_calendar == CalendarSpec("DE", None)
    assert DEFAULT_POLICY.controller_calendar == CalendarSpec("JP", None)


def test_policy_from_mapping_overrides_only_what_it_names():
    policy = Policy.from_mapping({
        "controller_timezone": "Europe/Berlin",
        "gdpr_calendar": {"country": "de", "subdiv": "BY"},
        "controller_calendar": {"country": "JP"},
        "company_closed_days": ["2026-12-29", date(2026, 12, 30)],
        "internal_margin_bd": 3,
        "conservative_tz": ["Europe/Paris"],
        "clock_mode": "suspend_for_identity",
        "categories": {"complaint": {"sla_bd": 5, "reminders_bd": [2]}},
    })
    assert policy.controller_timezone == "Europe/Berlin"
    assert policy.gdpr_calendar == CalendarSpec("DE", "BY")
    assert policy.company_closed_days == (d("2026-12-29"), d("2026-12-30"))
    assert policy.internal_margin_bd == 3
    assert policy.conservative_tz == ("Europe/Paris",)
    assert policy.clock_mode == "suspend_for_identity"
    assert policy.categories["complaint"].sla_bd == 5
    assert policy.categories["complaint"].reminders_bd == (2,)
    assert policy.categories["complaint"].escalations_bd == (0,)  # untouched
    assert policy.categories["other"] == DEFAULT_POLICY.categories["other"]
    assert DEFAULT_POLICY.categories["complaint"].sla_bd == 10   # defaults not mutated


@pytest.mark.parametrize(
    "mapping, key",
    [
        ({"controler_timezone": "Asia/Tokyo"}, "controler_timezone"),
        ({"controller_timezone": "Mars/Olympus"}, "controller_timezone"),
        ({"internal_margin_bd": -1}, "internal_margin_bd"),
        ({"internal_margin_bd": True}, "internal_margin_bd"),
        ({"clock_mode": "pause"}, "clock_mode"),
        ({"gdpr_calendar": {"country": "XX"}}, "gdpr_calendar"),
        ({"gdpr_calendar": {"country": "DE", "region": "BY"}}, "gdpr_calendar.region"),
        ({"company_closed_days": ["2026-13-01"]}, "company_closed_days[0]"),
        ({"conservative_tz": "Europe/Berlin"}, "conservative_tz"),
        ({"categories": {"complaints": {"sla_bd": 5}}}, "categories.complaints"),
        ({"categories": {"complaint": {"sla": 5}}}, "categories.complaint.sla"),
        ({"categories": {"other": {"sla_bd": 0}}}, "categories.other.sla_bd"),
        ({"categories": {"other": {"reminders_bd": [1, "x"]}}}, "categories.other.reminders_bd[1]"),
        ({"categories": {"other": {"due_rule": "weekly"}}}, "categories.other.due_rule"),
        ({"categories": {"complaint": {"due_rule": "appi_days"}}}, "categories.complaint"),
    ],
)
def test_policy_from_mapping_names_the_bad_key(mapping, key):
    with pytest.raises(ValueError) as excinfo:
        Policy.from_mapping(mapping)
    assert key in str(excinfo.value)
