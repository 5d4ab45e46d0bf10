"""The supervisor's weekly summary: figures of a seeded week (asserted), the chart, the CSV
register, the mail's structure and sending once per week — on SQLite and PostgreSQL."""
from __future__ import annotations

import csv
import email
import io
from datetime import date, datetime, timedelta
from email import policy as email_policy
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from inbox_bot import summary
from inbox_bot.store import Case, CaseEvent, LabelCorrection, Outbox, Store
from tests.test_digests import BOSS, make_cfg, policy

JST = ZoneInfo("Asia/Tokyo")
WEEK = "2026-W48"                      # Monday 2026-11-23 (a holiday in Japan) .. Sunday 11-29


def at(month: int, day: int, hour: int = 0, minute: int = 0, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=JST)


def add_case(s, ref: str, *, labels: list[str], received: datetime, due: date, language: str = "en",
             changes: list[tuple[datetime, str]] = (), status: str | None = None,
             closed_at: datetime | None = None, **extra) -> Case:
    """A case with its status events (kind "status", as cases.set_status writes them)."""
    final = changes[-1][1] if changes else (status or "new")
    if closed_at is None and final in summary.TERMINAL_STATES and changes:
        closed_at = changes[-1][0]
    case = Case(ref=ref, requester=f"{ref.lower()}@requester.example", received_at=received,
                receipt_date=received.astimezone(JST).date(), due_date=due,
                first_due_date=extra.pop("first_due_date", due), status=final, labels=list(labels),
                language=language, closed_at=closed_at, **extra)
    s.add(case)
    s.flush()
    previous = "new"
    for when, new in changes:
        s.add(CaseEvent(case_id=case.id, at=when, actor="inbox-bot", kind="status",
                        old={"status": previous}, new={"status": new}))
        previous = new
    return case


def add_ack(s, case: Case, sent_at: datetime | None) -> None:
    s.add(Outbox(message_id=f"ack-{case.id}@ikaclo.example.jp", kind="ack", dedupe_key=f"ack:case:{case.id}",
                 case_id=case.id, recipient=case.requester, sender="inquiries@ikaclo.example.jp",
                 raw=b"Subject: ack\r\n\r\nack\r\n", status="sent" if sent_at else "queued",
                 sent_at=sent_at, created_at=case.received_at))


def add_correction(s, case: Case, when: datetime, old: list[str], new: list[str]) -> None:
    s.add(LabelCorrection(case_id=case.id, at=when, actor="aiko@ikaclo.example.jp", old_labels=old,
                          new_labels=new, language=case.language))


def seed_week(store: Store) -> None:
    """Week 2026-W48 and the weeks before it; the expected figures are in the tests below."""
    with store.session() as s, s.begin():
        # received in the week
        a = add_case(s, "PRIV-2026-00101", labels=["disclosure"], language="ja", received=at(11, 23),
                     due=date(2026, 12, 7), changes=[(at(11, 23, 0, 5), "acknowledged"),
                                                     (at(11, 25, 10), "answered"),
                                                     (at(11, 26, 10), "closed")])
        b = add_case(s, "PRIV-2026-00102", labels=["deletion"], received=at(11, 24, 9),
                     due=date(2026, 12, 8), changes=[(at(11, 24, 10), "acknowledged"),
                                                     (at(11, 25, 9), "in_progress")])
        c = add_case(s, "PRIV-2026-00103", labels=["complaint"], language="ja", received=at(11, 25, 12),
                     due=date(2026, 12, 9), changes=[(at(11, 25, 14), "acknowledged"),
                                                     (at(11, 26, 9), "awaiting_identity")])
        d = add_case(s, "PRIV-2026-00104", labels=["deletion", "gdpr_request"], received=at(11, 27, 8),
                     due=date(2026, 12, 28), changes=[(at(11, 27, 8, 30), "acknowledged"),
                                                      (at(11, 28, 8), "rejected")])
        e = add_case(s, "PRIV-2026-00105", labels=["other"], received=at(11, 29, 23), due=date(2026, 12, 14))
        for case, sent in ((a, at(11, 23, 0, 5)), (b, at(11, 24, 10)), (c, at(11, 25, 14)),
                           (d, at(11, 27, 8, 30)), (e, None)):
            add_ack(s, case, sent)
        # received earlier
        f = add_case(s, "PRIV-2026-00090", labels=["disclosure"], language="ja", received=at(11, 2, 10),
                     due=date(2026, 11, 16), changes=[(at(11, 2, 10, 5), "acknowledged"),
                                                      (at(11, 24, 12), "closed")])
        add_ack(s, f, at(11, 2, 10, 5))
        add_case(s, "PRIV-2026-00080", labels=["revision"], language="ja", received=at(10, 20, 10),
                 due=date(2026, 11, 20), changes=[(at(10, 20, 11), "acknowledged"),
                                                  (at(10, 25, 9), "awaiting_identity"),
                                                  (at(11, 1, 9), "in_progress")])
        add_case(s, "PRIV-2026-00085", labels=["deletion"], received=at(11, 10, 10),
                 due=date(2027, 2, 10), first_due_date=date(2026, 11, 24), extended_due=date(2027, 2, 10),
                 extension_reason="three systems",
                 changes=[(at(11, 10, 11), "acknowledged"), (at(11, 15, 9), "awaiting_identity"),
                          (at(11, 24, 9), "in_progress"), (at(11, 25, 9), "extended")])
        add_case(s, "PRIV-2026-00088", labels=["other"], received=at(11, 5, 10), due=date(2026, 12, 20),
                 identity_requested_on=date(2026, 11, 12),
                 changes=[(at(11, 5, 11), "acknowledged"), (at(11, 12, 9), "awaiting_identity")])
        k = add_case(s, "PRIV-2026-00095", labels=["disclosure"], received=at(11, 16, 10),
                     due=date(2026, 12, 10), changes=[(at(11, 16, 11), "acknowledged"),
                                                      (at(11, 30, 0), "closed")])   # the next week
        # no status events at all (imported): the row's status and closed_at are used
        add_case(s, "PRIV-2026-00070", labels=["disclosure"], received=at(10, 5, 10), due=date(2026, 10, 19),
                 status="closed", closed_at=at(10, 10, 10))
        # the next week: counted nowhere
        add_case(s, "PRIV-2026-00110", labels=["other"], received=at(11, 30, 0), due=date(2026, 12, 14))
        add_correction(s, a, at(11, 23, 9), ["other"], ["disclosure"])
        add_correction(s, k, at(11, 24, 9), ["other"], ["disclosure"])
        add_correction(s, d, at(11, 27, 9), ["deletion"], ["deletion", "gdpr_request"])
        add_correction(s, b, at(11, 20, 9), ["other"], ["deletion"])           # the week before
        add_correction(s, b, at(11, 30, 0), ["deletion"], ["revision"])        # the week after


@pytest.fixture()
def seeded(db_url):
    store = Store(db_url)
    store.migrate()
    seed_week(store)
    yield store
    store.dispose()


def figures(store: Store) -> summary.SummaryFigures:
    with store.session() as s:
        return summary.compute_summary(s, make_cfg(), policy(), WEEK)


# -- weeks ------------------------------------------------------------------------------------

def test_week_bounds_run_from_monday_midnight_local_to_the_next_monday():
    start, end = summary.week_bounds("2026-W48", JST)
    assert start == datetime(2026, 11, 23, tzinfo=JST) and end == datetime(2026, 11, 30, tzinfo=JST)
    assert summary.week_bounds("2026-W53", JST)[0].date() == date(2026, 12, 28)   # 2026 has 53


@pytest.mark.parametrize("bad", ["2025-W53", "2026-48", "2026-W00", "last week", ""])
def test_a_week_that_does_not_exist_is_refused(bad):
    with pytest.raises(ValueError):
        summary.week_bounds(bad, JST)


def test_the_default_week_is_the_last_complete_one():
    assert summary.last_complete_week(at(11, 30, 9), JST) == "2026-W48"      # Monday morning
    assert summary.last_complete_week(at(11, 29, 23, 59), JST) == "2026-W47"  # Sunday night
    assert summary.last_complete_week(datetime(2026, 1, 5, 0, 30, tzinfo=JST), JST) == "2026-W01"


def test_percentile_interpolates_between_ranks():
    assert summary.percentile([5, 30, 60, 120], 0.5) == 45
    assert summary.percentile([5, 30, 60, 120], 0.9) == pytest.approx(102)
    assert summary.percentile([7], 0.9) == 7


# -- figures ----------------------------------------------------------------------------------

def test_counts_received_closed_and_open_per_category_and_language(seeded):
    f = figures(seeded)
    assert (f.received, f.closed, f.open) == (5, 3, 7)
    by_label = {k: (v.received, v.closed, v.open) for k, v in f.by_label.items()}
    assert by_label == {"disclosure": (1, 2, 1), "revision": (0, 0, 1), "deletion": (2, 1, 2),
                        "gdpr_request": (1, 1, 0), "complaint": (1, 0, 1), "other": (1, 0, 2)}
    by_language = {k: (v.received, v.closed, v.open) for k, v in f.by_language.items()}
    assert by_language == {"en": (3, 1, 5), "ja": (2, 2, 2)}
    assert f.open_by_status == {"in_progress": 2, "awaiting_identity": 2, "new": 1, "extended": 1,
                                "acknowledged": 1}


def test_on_time_rate_counts_resolutions_in_the_week_against_their_due_date(seeded):
    f = figures(seeded)
    # answered (then closed: one resolution), rejected, and one closed eight days late
    assert (f.on_time, f.closed) == (2, 3)
    assert f.on_time_rate == pytest.approx(2 / 3)


def test_time_to_acknowledge_and_to_answer_median_and_90th_percentile(seeded):
    f = figures(seeded)
    assert f.ack_count == 4                                     # 5, 60, 120, 30 minutes; one unsent
    assert f.ack_median == timedelta(minutes=45)
    assert f.ack_p90 == timedelta(minutes=102)
    assert f.answer_count == 3                                  # 58 h, 24 h, 530 h
    assert f.answer_median == timedelta(hours=58)
    assert f.answer_p90 == timedelta(hours=435, minutes=36)


def test_overdue_extended_and_paused_cases(seeded):
    f = figures(seeded)
    assert [c.ref for c in f.overdue] == ["PRIV-2026-00080"]
    late = f.overdue[0]
    assert (late.days_overdue, late.working_days_overdue) == (10, 5)   # 11-23 is a holiday
    assert [c.ref for c in f.extended] == ["PRIV-2026-00085"] and f.extended_open == 1
    assert [c.ref for c in f.paused] == ["PRIV-2026-00085", "PRIV-2026-00088", "PRIV-2026-00103"]
    assert {c.ref: c.since for c in f.paused}["PRIV-2026-00088"] == date(2026, 11, 12)
    assert [c.ref for c in f.id_pending_long] == ["PRIV-2026-00088"]
    assert [c.ref for c in f.complaints] == ["PRIV-2026-00103"]


def test_reclassifications_by_staff_in_the_week_with_from_to_counts(seeded):
    f = figures(seeded)
    assert (f.reclassifications, f.reclassified_cases) == (3, 3)
    assert f.reclassification_pairs == [("other", "disclosure", 2), ("deletion", "deletion,gdpr_request", 1)]


def test_oldest_open_cases_and_the_eight_week_trend(seeded):
    f = figures(seeded)
    assert [c.ref for c in f.oldest_open] == ["PRIV-2026-00080", "PRIV-2026-00088", "PRIV-2026-00085",
                                             "PRIV-2026-00095", "PRIV-2026-00102", "PRIV-2026-00103",
                                             "PRIV-2026-00105"]
    assert f.oldest_open[0].age_days == 41
    assert [(w.week, w.received, w.closed) for w in f.trend] == [
        ("2026-W41", 1, 1), ("2026-W42", 0, 0), ("2026-W43", 1, 0), ("2026-W44", 0, 0),
        ("2026-W45", 2, 0), ("2026-W46", 1, 0), ("2026-W47", 1, 0), ("2026-W48", 5, 3)]


def test_an_empty_week_has_no_rates_rather_than_a_division_by_zero(seeded):
    with seeded.session() as s:
        f = summary.compute_summary(s, make_cfg(), policy(), "2026-W42")
    assert (f.received, f.closed, f.on_time_rate, f.ack_median, f.answer_p90) == (0, 0, None, None, None)
    with seeded.session() as s:
        mail = summary.build_summary(s, make_cfg(), policy(), "2026-W42")
    assert "0 received" in mail.subject


# -- chart and register -----------------------------------------------------------------------

def test_the_trend_chart_is_a_valid_png(seeded):
    png = summary.trend_chart_png(figures(seeded).trend)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(io.BytesIO(png)) as img:
        img.verify()
    import matplotlib.image
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.shape[0] > 200 and pixels.shape[1] > 500
    assert pixels.reshape(-1, pixels.shape[-1]).std(axis=0).max() > 0.05   # not blank


def test_the_register_has_one_row_per_case_received_in_the_week(seeded):
    with seeded.session() as s:
        data = summary.register_csv(summary.register_rows(s, make_cfg(), WEEK))
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert [r["case_id"] for r in rows] == ["PRIV-2026-00101", "PRIV-2026-00102", "PRIV-2026-00103",
                                            "PRIV-2026-00104", "PRIV-2026-00105"]
    assert list(rows[0]) == list(summary.REGISTER_COLUMNS)
    first = rows[0]
    assert first["received"] == "2026-11-23T00:00:00+09:00" and first["receipt_date"] == "2026-11-23"
    assert first["status"] == "closed" and first["closed_at"] == "2026-11-25T10:00:00+09:00"
    assert first["on_time"] == "yes" and first["language"] == "ja"
    assert rows[3]["labels"] == "deletion;gdpr_request" and rows[3]["status"] == "rejected"
    assert (rows[1]["status"], rows[1]["closed_at"], rows[1]["on_time"]) == ("in_progress", "", "")
    assert "requester.example" not in data.decode("utf-8-sig")


# -- the mail ---------------------------------------------------------------------------------

def test_the_summary_mail_has_the_chart_inline_and_the_register_attached(seeded):
    with seeded.session() as s:
        mail = summary.build_summary(s, make_cfg(), policy(), WEEK)
    raw = mail.build().as_bytes()
    msg = email.message_from_bytes(raw, policy=email_policy.default)
    assert msg["To"] == BOSS and msg.get_content_type() == "multipart/mixed"
    html = msg.get_body(("html",))
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    image = next(p for p in related.iter_parts() if p.get_content_type() == "image/png")
    cid = image["Content-ID"].strip("<>")
    assert f'src="cid:{cid}"' in html.get_content()
    assert image.get_content()[:8] == b"\x89PNG\r\n\x1a\n"
    attachment = next(msg.iter_attachments())
    assert attachment.get_filename() == f"register-{WEEK}.csv"
    assert attachment.get_content_charset() == "utf-8"
    rows = list(csv.DictReader(io.StringIO(attachment.get_payload(decode=True).decode("utf-8-sig"))))
    assert len(rows) == 5
    text = msg.get_body(("plain",)).get_content()
    assert "Received:                 5" in text and "67%" in text and "PRIV-2026-00080" in text
    assert b"requester.example" not in raw
    standalone = mail.html_with_embedded_images()
    assert "data:image/png;base64," in standalone and "cid:" not in standalone


def test_the_summary_is_in_the_supervisors_language(seeded):
    cfg = make_cfg(languages={BOSS: "ja"})
    with seeded.session() as s:
        mail = summary.build_summary(s, cfg, policy(), WEEK)
    assert mail.subject.startswith("週次サマリー 2026-W48") and "受付:" in mail.text
    assert mail.template == "weekly_summary.ja"


# -- once per week ----------------------------------------------------------------------------

def summaries_queued(store: Store) -> int:
    with store.session() as s:
        return s.execute(select(func.count(Outbox.id)).where(Outbox.kind == "summary")).scalar_one()


def test_the_summary_is_queued_once_per_week_also_after_a_restart(seeded, db_url):
    monday = at(11, 30, 9)
    assert summary.send_summary(seeded, make_cfg(), policy(), monday) is True
    assert summary.send_summary(seeded, make_cfg(), policy(), monday + timedelta(hours=2)) is False
    restarted = Store(db_url)
    restarted.migrate()
    try:
        assert summary.send_summary(restarted, make_cfg(), policy(), monday + timedelta(days=1)) is False
        assert summaries_queued(restarted) == 1
        # the next week is a new period
        assert summary.send_summary(restarted, make_cfg(), policy(), monday + timedelta(days=7)) is True
        assert summaries_queued(restarted) == 2
    finally:
        restarted.dispose()
    with seeded.session() as s:
        keys = set(s.execute(select(Outbox.dedupe_key).where(Outbox.kind == "summary")).scalars())
    assert keys == {f"summary:2026-W48:{BOSS}", f"summary:2026-W49:{BOSS}"}


def test_no_supervisor_means_no_summary(seeded):
    assert summary.send_summary(seeded, make_cfg(supervisor=""), policy(), at(11, 30, 9)) is False
    assert summaries_queued(seeded) == 0


def test_summary_due_after_the_configured_weekday_and_time():
    cfg = make_cfg(summary_weekday="mon", summary_time="09:00")
    assert not summary.summary_due(cfg, at(11, 30, 8, 59))
    assert summary.summary_due(cfg, at(11, 30, 9, 0))
    assert summary.summary_due(cfg, at(12, 2, 7, 0))        # a Wednesday catch-up
