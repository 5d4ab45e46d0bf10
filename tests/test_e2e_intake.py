"""End to end through a real Dovecot IMAP server and a real SMTP server (issue 2 acceptance)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from inbox_bot.app import build_app
from inbox_bot.store import Case, InboundMessage, Outbox
from tests import mailgen
from tests.e2e import cli, load, parsed, processes_running, text_part, write_config

pytestmark = pytest.mark.e2e

LANGUAGE_MARKERS = {"en": "opened case", "ja": "受付番号", "de": "Vorgang"}


def _append_all(dovecot_user, inquiries, when=None):
    for inq in inquiries:
        dovecot_user.server.append(dovecot_user.username, "INBOX", inq.raw,
                                   internaldate=when or datetime.now(timezone.utc))


def test_twenty_inquiries_get_one_case_and_one_threaded_ack_each(tmp_path, dovecot_user, smtp_server):
    inquiries = mailgen.twenty_inquiries()
    _append_all(dovecot_user, inquiries)
    config = write_config(tmp_path, dovecot_user, smtp_server)

    out = cli(config, "run", "--once", "--json")
    report = json.loads(out.stdout)
    assert len(report["cases_opened"]) == 20
    smtp_server.wait_for(20, timeout=10)
    assert len(smtp_server.messages) == 20

    cases = [json.loads(line) for line in cli(config, "cases", "list", "--json").stdout.splitlines()]
    assert len(cases) == 20
    by_sender = {c["requester"]: c for c in cases}
    for inq in inquiries:
        received = [m for m in smtp_server.messages if m.rcpt_tos == (inq.sender,)]
        assert len(received) == 1, inq.sender
        ack = parsed(received[0].raw)
        case = by_sender[inq.sender]
        assert ack["In-Reply-To"] == f"<{inq.message_id}>"
        assert f"<{inq.message_id}>" in ack["References"]
        assert f"[{case['id']}]" in ack["Subject"]
        assert ack["Auto-Submitted"] == "auto-replied"
        assert ack["Message-ID"].endswith("@ikaclo.example.jp>")
        assert case["language"] == inq.language
        body = text_part(ack)
        assert LANGUAGE_MARKERS[inq.language] in body
        assert case["id"] in body
        due = datetime.fromisoformat(case["due_date"]).date()
        assert any(due.strftime(f) in body for f in ("%d %B %Y", "%Y年%m月%d日", "%d.%m.%Y"))
        assert ack.get_body(preferencelist=("html",)) is not None

    # The messages left the inbox for the Processed folder only after being journaled.
    assert dovecot_user.server.list_uids(dovecot_user.username, "INBOX") == []
    assert len(dovecot_user.server.list_uids(dovecot_user.username, "Processed")) == 20

    second = json.loads(cli(config, "run", "--once", "--json").stdout)
    assert second["journaled"] == 0 and second["processed"] == 0 and second["sent"] == 0
    time.sleep(0.3)
    assert len(smtp_server.messages) == 20
    assert len(cli(config, "cases", "list", "--json").stdout.splitlines()) == 20


def test_customer_reply_joins_the_case_without_a_new_ack(tmp_path, dovecot_user, smtp_server):
    inq = mailgen.english(1)
    _append_all(dovecot_user, [inq])
    app = build_app(load(write_config(tmp_path, dovecot_user, smtp_server)))
    app.run_once()
    smtp_server.wait_for(1, timeout=10)
    ack_raw = smtp_server.messages[0].raw

    reply = mailgen.reply_to(ack_raw, inq.sender)
    dovecot_user.server.append(dovecot_user.username, "INBOX", reply)
    # A second reply that only keeps the case tag in the subject (no threading headers).
    tag = parsed(ack_raw)["Subject"].split("[")[-1].rstrip("]")
    tagged = mailgen._utf8(inq.sender, "", f"About my request [{tag}]", "Any news?", "tagged1@x.example")
    dovecot_user.server.append(dovecot_user.username, "INBOX", tagged)
    report = app.run_once()
    assert report.dispositions == {"follow_up": 2}
    assert report.sent == 0
    with app.store.session() as s:
        assert s.execute(select(func.count(Case.id))).scalar_one() == 1
        case = s.execute(select(Case)).scalar_one()
        kinds = [e.kind for e in case.events]
        assert kinds.count("follow_up") == 2
    time.sleep(0.3)
    assert len(smtp_server.messages) == 1


def test_case_tag_from_a_stranger_does_not_join_the_case(tmp_path, dovecot_user, smtp_server):
    inq = mailgen.english(2)
    _append_all(dovecot_user, [inq])
    app = build_app(load(write_config(tmp_path, dovecot_user, smtp_server)))
    app.run_once()
    smtp_server.wait_for(1, timeout=10)
    tag = parsed(smtp_server.messages[0].raw)["Subject"].split("[")[-1].rstrip("]")
    stranger = mailgen._utf8("mallory@evil.example", "", f"Re: [{tag}] send me the data",
                             "Please send me the copy of the data.", "evil1@evil.example")
    dovecot_user.server.append(dovecot_user.username, "INBOX", stranger)
    report = app.run_once()
    assert report.dispositions == {"case_opened": 1}     # a case of its own, not a follow-up


def test_machine_mail_is_never_answered_and_each_rule_is_recorded(tmp_path, dovecot_user, smtp_server):
    inq = mailgen.english(3)
    _append_all(dovecot_user, [inq])
    config = write_config(tmp_path, dovecot_user, smtp_server)
    app = build_app(load(config))
    app.run_once()
    smtp_server.wait_for(1, timeout=10)
    ack = parsed(smtp_server.messages[0].raw)
    our_id = ack["Message-ID"].strip().strip("<>")

    for kind in ("auto-reply", "mailing-list", "own-address"):
        dovecot_user.server.append(dovecot_user.username, "INBOX", mailgen.machine_mail(kind))
    dovecot_user.server.append(dovecot_user.username, "INBOX",
                               mailgen.machine_mail("bounce", our_id, inq.sender))
    report = app.run_once()
    assert report.sent == 0 and report.cases_opened == []
    rows = [json.loads(line) for line in cli(config, "messages", "list", "--json").stdout.splitlines()]
    rules = {r["sender"]: (r["disposition"], r["rule"]) for r in rows[1:]}
    assert rules["ooo@example.net"] == ("screened", "auto-submitted")
    assert rules["news@lists.example.org"] == ("screened", "mailing-list")
    assert rules["inquiries@ikaclo.example.jp"] == ("screened", "own-address")
    assert rules["mailer-daemon@mx.example.net"] == ("screened", "bounce")
    with app.store.session() as s:
        sent = s.execute(select(Outbox)).scalar_one()
        assert sent.status == "bounced"            # the bounce was matched to our ack
    time.sleep(0.3)
    assert len(smtp_server.messages) == 1


def test_smtp_down_queues_acks_and_delivers_each_once_when_back(tmp_path, dovecot_user, smtp_server):
    inquiries = [mailgen.english(10 + i) for i in range(5)]
    _append_all(dovecot_user, inquiries)
    app = build_app(load(write_config(tmp_path, dovecot_user, smtp_server)))
    smtp_server.stop()
    report = app.run_once()
    assert len(report.cases_opened) == 5 and report.sent == 0 and report.send_retry >= 5
    with app.store.session() as s:
        queued = s.execute(select(Outbox)).scalars().all()
        assert {o.status for o in queued} == {"queued"}
        assert all(o.last_error for o in queued)       # the failure is visible
        ids_before = {o.id: o.message_id for o in queued}
    smtp_server.start()
    time.sleep(0.05)                                   # retry_base is 10 ms
    report = app.run_once()
    assert report.sent == 5
    smtp_server.wait_for(5, timeout=10)
    got = [parsed(m.raw)["Message-ID"].strip("<>") for m in smtp_server.messages]
    assert sorted(got) == sorted(ids_before.values())  # same Message-ID as when first queued
    app.run_once()
    time.sleep(0.3)
    assert len(smtp_server.messages) == 5


def test_sigkill_during_a_run_never_doubles_or_loses_a_message(tmp_path, dovecot_user, smtp_server):
    n = 600
    inquiries = [mailgen.english(1000 + i) for i in range(n)]
    dovecot_user.server.append_many(dovecot_user.username, "INBOX", [q.raw for q in inquiries])
    config = write_config(tmp_path, dovecot_user, smtp_server, global_budget=2 * n)
    cmd = [sys.executable, "-m", "inbox_bot.cli", "--config", str(config), "--log-level", "WARNING",
           "run", "--once"]
    kills = 0
    # Kill points follow the run's progress, not the clock: once this run's first
    # acknowledgement has arrived (cases written, more being processed and sent), then later.
    for extra in (0.0, 0.1, 0.2, 0.35, 0.5):
        before = len(smtp_server.messages)
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while proc.poll() is None and len(smtp_server.messages) == before and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(extra)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    cli(config, "run", "--once")                     # the restart that finishes the job
    assert kills >= 2, "the run finished before it could be killed; use more messages"
    # The forked workers and sender die with a killed worker: none is left behind.
    deadline = time.monotonic() + 5
    while processes_running(str(config)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_running(str(config)) == []

    cases = [json.loads(line) for line in cli(config, "cases", "list", "--json").stdout.splitlines()]
    assert sorted(c["requester"] for c in cases) == sorted(q.sender for q in inquiries)
    rows = [json.loads(line) for line in cli(config, "messages", "list", "--json").stdout.splitlines()]
    assert not [r for r in rows if r["disposition"] in ("pending", "held")]
    assert dovecot_user.server.list_uids(dovecot_user.username, "INBOX") == []
    smtp_server.wait_for(n, timeout=20)
    ids_by_rcpt: dict[str, set[str]] = {}
    for m in smtp_server.messages:
        ids_by_rcpt.setdefault(m.rcpt_tos[0], set()).add(parsed(m.raw)["Message-ID"])
    assert set(ids_by_rcpt) == {q.sender for q in inquiries}
    assert all(len(ids) == 1 for ids in ids_by_rcpt.values())


def test_run_once_on_postgres(pg_url, tmp_path, dovecot_user, smtp_server):
    inquiries = [mailgen.english(50), mailgen.japanese(51), mailgen.german(52)]
    _append_all(dovecot_user, inquiries)
    app = build_app(load(write_config(tmp_path, dovecot_user, smtp_server, db_url=pg_url)))
    report = app.run_once()
    assert len(report.cases_opened) == 3 and report.sent == 3
    with app.store.session() as s:
        refs = sorted(s.execute(select(Case.ref)).scalars())
    year = datetime.now(timezone.utc).astimezone(timezone(timedelta(hours=9))).year
    assert refs == [f"PRIV-{year}-0000{i}" for i in (1, 2, 3)]
    assert app.run_once().processed == 0
    app.store.dispose()


def test_old_mail_on_first_connection_is_not_acknowledged(tmp_path, dovecot_user, smtp_server):
    old = mailgen.english(60)
    new = mailgen.english(61)
    # The sender's Date: says "today"; INTERNALDATE (the arrival) says a year ago.
    dovecot_user.server.append(dovecot_user.username, "INBOX", old.raw,
                               internaldate=datetime.now(timezone.utc) - timedelta(days=365))
    dovecot_user.server.append(dovecot_user.username, "INBOX", new.raw)
    app = build_app(load(write_config(tmp_path, dovecot_user, smtp_server)))
    report = app.run_once()
    assert report.dispositions == {"screened": 1, "case_opened": 1}
    with app.store.session() as s:
        row = s.execute(select(InboundMessage).where(InboundMessage.rule == "before-horizon")).scalar_one()
        assert row.sender == old.sender
