"""Due dates and the lifecycle end to end through Dovecot and SMTP, time driven by --now."""
from __future__ import annotations

import json
import sqlite3
from datetime import date, datetime, timedelta, timezone

import pytest

from tests import mailgen
from inbox_bot.app import build_app
from tests.e2e import cli, load, parsed, text_part, write_config

pytestmark = pytest.mark.e2e

JST = timezone(timedelta(hours=9))
ARRIVAL = datetime(2026, 1, 15, 10, 0, tzinfo=JST)          # deadlines.md G1


def erasure_request() -> bytes:
    return mailgen._utf8("anna.schmidt@example.de", "Anna Schmidt", "Löschung meiner Daten (Art. 17 DSGVO)",
                         "Sehr geehrte Damen und Herren,\n\nich verlange die Löschung aller meiner "
                         "personenbezogenen Daten nach Art. 17 DSGVO.\n\nAnna Schmidt",
                         "erasure@mail.example.de")


def at(day: date, hour: int = 10) -> str:
    return datetime(day.year, day.month, day.day, hour, 0, tzinfo=JST).isoformat()


@pytest.fixture
def gdpr_case(tmp_path, dovecot_user, smtp_server):
    dovecot_user.server.append(dovecot_user.username, "INBOX", erasure_request(), internaldate=ARRIVAL)
    config = write_config(tmp_path, dovecot_user, smtp_server)
    text = config.read_text() + """
[staff]
addresses = ["hana.staff@ikaclo.example.jp"]
supervisor = "boss@ikaclo.example.jp"
token_secret = "test-secret"
"""
    config.write_text(text.replace("[bot]\n", "[bot]\n").replace("horizon_days = 30", "horizon_days = 0"))
    cli(config, "run", "--once", "--now", at(date(2026, 1, 15), 11))
    smtp_server.wait_for(1, timeout=10)
    case = json.loads(cli(config, "cases", "list", "--json").stdout.splitlines()[0])
    return config, case


def test_gdpr_erasure_ack_states_the_due_date_and_extension_moves_it(gdpr_case, smtp_server):
    config, case = gdpr_case
    expected = json.loads(cli(config, "due", "--received", ARRIVAL.isoformat(),
                              "--labels", ",".join(case["labels"])).stdout)
    assert case["due_date"] == expected["due"]
    assert "gdpr_request" in case["labels"] and "deletion" in case["labels"]
    ack = parsed(smtp_server.messages[0].raw)
    due = date.fromisoformat(case["due_date"])
    assert due.strftime("%d.%m.%Y") in text_part(ack)          # German acknowledgement

    out = cli(config, "cases", "extend", case["id"], "--reason", "Complex request across three systems",
              "--actor", "hana.staff@ikaclo.example.jp", "--now", at(due - timedelta(days=2)), "--json")
    result = json.loads(out.stdout)
    assert result["due_date"] > case["due_date"]
    smtp_server.wait_for(2, timeout=10)
    notice = parsed(smtp_server.messages[1].raw)
    assert notice["To"].addresses[0].addr_spec == "anna.schmidt@example.de"
    assert "Complex request across three systems" in text_part(notice)
    assert f"<{'erasure@mail.example.de'}>" in notice["References"]
    shown = json.loads(cli(config, "cases", "show", case["id"], "--json").stdout)
    assert shown["status"] == "extended" and shown["due_date"] == result["due_date"]
    assert any(e["kind"] == "extended" and e["actor"] == "hana.staff@ikaclo.example.jp" for e in shown["events"])


def test_an_extension_after_the_due_date_is_refused_with_a_clear_message(gdpr_case, smtp_server):
    config, case = gdpr_case
    due = date.fromisoformat(case["due_date"])
    out = cli(config, "cases", "extend", case["id"], "--reason", "late", "--now", at(due + timedelta(days=1)),
              check=False)
    assert out.returncode == 1
    assert "has passed" in out.stderr and case["due_date"] in out.stderr
    assert len(smtp_server.messages) == 1


def test_reminders_and_overdue_escalation_arrive_once_each_across_restarts(gdpr_case, smtp_server, classifier):
    config, case = gdpr_case
    due = date.fromisoformat(case["due_date"])
    cfg = load(config)
    day = date(2026, 1, 15)
    while day <= due + timedelta(days=8):
        for hour in (9, 15):
            # Each pass is a restarted worker: a fresh app and database engine, time injected.
            now = datetime.fromisoformat(at(day, hour))
            app = build_app(cfg, clock=lambda now=now: now, classifier=classifier)
            app.run_once()
            app.store.dispose()
        day += timedelta(days=1)
    cli(config, "run", "--once", "--now", at(day, 9))           # and one real process start
    mails = [parsed(m.raw) for m in smtp_server.messages[1:]]
    to_staff = [m for m in mails if m["To"].addresses[0].addr_spec == "hana.staff@ikaclo.example.jp"]
    to_boss = [m for m in mails if m["To"].addresses[0].addr_spec == "boss@ikaclo.example.jp"]
    assert len(to_staff) >= 2 and len(to_boss) >= 1
    subjects = [str(m["Subject"]) for m in mails]
    assert len(subjects) == len(set(subjects)), "a reminder or escalation arrived twice"
    assert any("OVERDUE" in s for s in subjects)
    shown = json.loads(cli(config, "cases", "show", case["id"], "--json").stdout)
    assert sum(1 for e in shown["events"] if e["kind"] in ("reminder", "escalation")) == len(mails)


def test_audit_verify_passes_untouched_and_names_an_edited_event(gdpr_case, tmp_path):
    config, case = gdpr_case
    ok = cli(config, "audit", "verify", "--json")
    assert json.loads(ok.stdout)["ok"] is True
    db = sqlite3.connect(tmp_path / "inbox-bot.sqlite3")
    event_id = db.execute("SELECT id FROM case_events WHERE kind = 'opened'").fetchone()[0]
    db.execute("UPDATE case_events SET reason = 'edited' WHERE id = ?", (event_id,))
    db.commit()
    db.close()
    bad = cli(config, "audit", "verify", check=False)
    assert bad.returncode == 1
    assert f"event {event_id}" in bad.stdout and "edited" in bad.stdout
