"""Case lifecycle: transitions, extensions, refusals, identity pauses, reclassification,
reminders and the audit trail — on SQLite and PostgreSQL, with an injected clock."""
from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text

from inbox_bot import lifecycle
from inbox_bot.cases import verify_chain
from inbox_bot.lifecycle import LifecycleRefused
from inbox_bot.store import Case, CaseEvent, LabelCorrection, Outbox
from tests import mailgen
from tests.test_pipeline import deliver, make_app

JST = timezone(timedelta(hours=9))
RECEIVED = datetime(2026, 1, 15, 10, 0, tzinfo=JST)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def open_gdpr_erasure(tmp_path, db_url, clock: Clock, **deadline_policy):
    app, transport, box = make_app(tmp_path, db_url)
    app.clock = app.intake.clock = clock
    # The mail "arrived" in January while the clock may say March: no first-connection horizon.
    app.cfg = replace(app.cfg, bot=replace(app.cfg.bot, horizon_days=0))
    app.intake.cfg = app.cfg
    if deadline_policy:
        from inbox_bot.cases import policy_from
        app.cfg = replace(app.cfg, deadlines=deadline_policy)
        app.intake.cfg = app.cfg
        app.intake.policy = policy_from(deadline_policy, app.cfg.bot.timezone)
    raw = mailgen._utf8("anna@example.de", "Anna", "Löschung nach Art. 17 DSGVO",
                        "Please delete my data under the GDPR.", "erase1@example.de")
    key = deliver(box, raw)
    import os
    os.utime(os.path.join(box._path, "new", key), (RECEIVED.timestamp(), RECEIVED.timestamp()))
    report = app.run_once()
    assert report.cases_opened == ["PRIV-2026-00001"]
    return app, transport


def act(app, fn):
    with app.store.session() as s, s.begin():
        case = s.execute(select(Case)).scalars().first()
        return fn(s, case)


def test_extension_before_the_due_date_moves_it_and_notifies_the_requester(tmp_path, db_url):
    clock = Clock(datetime(2026, 1, 20, 9, 0, tzinfo=JST))
    app, transport = open_gdpr_erasure(tmp_path, db_url, clock)
    before = act(app, lambda s, c: c.due_date)
    result = act(app, lambda s, c: lifecycle.extend(s, app.cfg, app.intake.policy, c, actor="staff@x",
                                                     reason="Complex request across three systems", now=clock()))
    assert "extended" in result.message
    app.send()
    notice = mailgen_parsed(transport.sent[-1][2])
    assert "Complex request across three systems" in notice.get_body(("plain",)).get_content()
    with app.store.session() as s:
        case = s.execute(select(Case)).scalar_one()
        assert case.status == "extended" and case.due_date > before
        ev = s.execute(select(CaseEvent).where(CaseEvent.kind == "extended")).scalar_one()
        assert ev.actor == "staff@x" and ev.old["due_date"] == before.isoformat()
    app.store.dispose()


def test_extension_after_the_due_date_is_refused_with_the_reason(tmp_path, db_url):
    clock = Clock(datetime(2026, 3, 20, 9, 0, tzinfo=JST))
    app, transport = open_gdpr_erasure(tmp_path, db_url, clock)
    with pytest.raises(LifecycleRefused, match="has passed"):
        act(app, lambda s, c: lifecycle.extend(s, app.cfg, app.intake.policy, c, actor="staff@x",
                                                reason="too late", now=clock()))
    with pytest.raises(LifecycleRefused, match="needs a reason"):
        act(app, lambda s, c: lifecycle.extend(s, app.cfg, app.intake.policy, c, actor="staff@x",
                                                reason=" ", now=clock()))
    app.store.dispose()


def test_refusal_notice_states_reasons_the_right_to_complain_and_to_a_court(tmp_path, db_url):
    clock = Clock(datetime(2026, 1, 20, 9, 0, tzinfo=JST))
    app, transport = open_gdpr_erasure(tmp_path, db_url, clock)
    act(app, lambda s, c: lifecycle.reject(s, app.cfg, c, actor="staff@x",
                                           reason="We hold no data about this address.", now=clock()))
    app.send()
    body = mailgen_parsed(transport.sent[-1][2]).get_body(("plain",)).get_content()
    assert "We hold no data about this address." in body
    assert "Article 77" in body and "Article 79" in body and "Article 12(4)" in body
    with pytest.raises(LifecycleRefused):   # a rejected case cannot be extended
        act(app, lambda s, c: lifecycle.extend(s, app.cfg, app.intake.policy, c, actor="staff@x",
                                                reason="x", now=clock()))
    app.store.dispose()


def test_a_closed_case_cannot_be_answered_and_transitions_are_checked(tmp_path, db_url):
    clock = Clock(datetime(2026, 1, 20, 9, 0, tzinfo=JST))
    app, _ = open_gdpr_erasure(tmp_path, db_url, clock)
    act(app, lambda s, c: lifecycle.close(s, c, actor="staff@x", reason="done"))
    with pytest.raises(LifecycleRefused, match="cannot become answered"):
        act(app, lambda s, c: lifecycle.answered(s, c, actor="staff@x", reason=""))
    with pytest.raises(LifecycleRefused, match="needs a reason"):
        act(app, lambda s, c: lifecycle.close(s, c, actor="staff@x", reason=""))
    app.store.dispose()


def test_suspend_for_identity_moves_the_due_date_by_the_paused_days(tmp_path, db_url):
    # deadlines.md C2 on a GDPR-only case: ID asked 2026-01-16, received 2026-01-26 -> 2026-02-25.
    clock = Clock(datetime(2026, 1, 16, 9, 0, tzinfo=JST))
    app, _ = open_gdpr_erasure(tmp_path, db_url, clock, clock_mode="suspend_for_identity")
    act(app, lambda s, c: lifecycle.reclassify(s, app.intake.policy, c, ["gdpr_request"], actor="staff@x",
                                               reason="objection only"))
    assert act(app, lambda s, c: c.due_date) == date(2026, 2, 16)
    act(app, lambda s, c: lifecycle.pause_for_identity(s, app.cfg, app.intake.policy, c, actor="staff@x",
                                                       reason="name differs from the account", now=clock()))
    clock.now = datetime(2026, 1, 26, 9, 0, tzinfo=JST)
    act(app, lambda s, c: lifecycle.resume(s, app.cfg, app.intake.policy, c, actor="staff@x",
                                           reason="ID received", now=clock()))
    assert act(app, lambda s, c: (c.status, c.due_date)) == ("in_progress", date(2026, 2, 25))
    app.store.dispose()


def test_a_requester_reply_on_the_thread_ends_the_pause(tmp_path, db_url):
    clock = Clock(datetime(2026, 1, 16, 9, 0, tzinfo=JST))
    app, transport = open_gdpr_erasure(tmp_path, db_url, clock)
    act(app, lambda s, c: lifecycle.pause_for_identity(s, app.cfg, app.intake.policy, c, actor="staff@x",
                                                       reason="need ID", now=clock()))
    ack = transport.sent[0][2]
    box = __import__("mailbox").Maildir(str(tmp_path / "mailbox"))
    deliver(box, mailgen.reply_to(ack, "anna@example.de", body="Here is my ID."))
    report = app.run_once()
    assert report.dispositions == {"follow_up": 1}
    assert act(app, lambda s, c: c.status) == "in_progress"
    app.store.dispose()


def test_reclassifying_recomputes_dates_from_the_original_receipt_and_stores_the_correction(tmp_path, db_url):
    clock = Clock(datetime(2026, 2, 1, 9, 0, tzinfo=JST))
    app, _ = open_gdpr_erasure(tmp_path, db_url, clock)
    act(app, lambda s, c: lifecycle.reclassify(s, app.intake.policy, c, ["complaint"], actor="staff@x",
                                               reason="really a complaint"))
    with app.store.session() as s:
        case = s.execute(select(Case)).scalar_one()
        assert case.receipt_date == date(2026, 1, 15)
        assert case.due_date == date(2026, 1, 29)          # 10 JP working days from 15 Jan
        corr = s.execute(select(LabelCorrection)).scalar_one()
        assert corr.old_labels == ["deletion", "gdpr_request"] and corr.new_labels == ["complaint"]
    with pytest.raises(LifecycleRefused, match="cannot be combined"):
        act(app, lambda s, c: lifecycle.reclassify(s, app.intake.policy, c, ["other", "complaint"],
                                                   actor="staff@x", reason=""))
    app.store.dispose()


def test_reminders_and_overdue_escalation_go_out_once_each_across_restarts(tmp_path, db_url):
    clock = Clock(datetime(2026, 1, 15, 12, 0, tzinfo=JST))
    app, transport = open_gdpr_erasure(tmp_path, db_url, clock)
    app.cfg = replace(app.cfg, staff=replace(app.cfg.staff, addresses=["staff@ikaclo.example.jp"],
                                             supervisor="boss@ikaclo.example.jp", token_secret="s"))
    app.intake.cfg = app.cfg
    for day in range(0, 30):
        clock.now = datetime(2026, 1, 15, 12, 0, tzinfo=JST) + timedelta(days=day)
        for _ in range(2):                                  # twice a day, like a restarted worker
            app.remind()
            app.send()
    with app.store.session() as s:
        rows = s.execute(select(Outbox).where(Outbox.kind.in_(["reminder", "escalation"]))
                         .order_by(Outbox.id)).scalars().all()
        keys = [r.dedupe_key for r in rows]
        assert len(keys) == len(set(keys))
        kinds = [(r.kind, r.recipient) for r in rows]
    assert ("reminder", "staff@ikaclo.example.jp") in kinds
    assert ("escalation", "boss@ikaclo.example.jp") in kinds
    received = [m for m in transport.sent if m[1][0] in ("staff@ikaclo.example.jp", "boss@ikaclo.example.jp")]
    assert len(received) == len(rows)
    app.store.dispose()


def test_audit_verify_detects_an_edited_event_naming_it(tmp_path, db_url):
    clock = Clock(datetime(2026, 1, 20, 9, 0, tzinfo=JST))
    app, _ = open_gdpr_erasure(tmp_path, db_url, clock)
    with app.store.session() as s:
        assert verify_chain(s) == []
        ev_id = s.execute(select(CaseEvent.id).where(CaseEvent.kind == "opened")).scalar_one()
    with app.store.engine.begin() as conn:
        conn.execute(text("UPDATE case_events SET reason = 'nothing to see' WHERE id = :i"), {"i": ev_id})
    with app.store.session() as s:
        problems = verify_chain(s)
    assert problems and f"event {ev_id}" in problems[0]
    app.store.dispose()


def mailgen_parsed(raw: bytes):
    import email
    import email.policy
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_a_staff_correction_becomes_a_training_example(tmp_path, db_url):
    from inbox_bot.corrections import corrections_from_store
    clock = Clock(datetime(2026, 1, 20, 9, 0, tzinfo=JST))
    app, _ = open_gdpr_erasure(tmp_path, db_url, clock)
    act(app, lambda s, c: lifecycle.reclassify(s, app.intake.policy, c, ["complaint", "deletion"],
                                               actor="staff@x", reason="angry"))
    examples = list(corrections_from_store(app.store))
    assert len(examples) == 1
    ex = examples[0]
    assert ex.labels == ("deletion", "complaint") or set(ex.labels) == {"deletion", "complaint"}
    assert "delete my data" in ex.body and "Art. 17" in ex.subject
    app.store.dispose()
