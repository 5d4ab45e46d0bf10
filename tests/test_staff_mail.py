"""Staff replies by e-mail: relay, commands, and refusal of anything not authenticated.
End to end through the real Dovecot and SMTP servers (issue 5 acceptance)."""
from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from inbox_bot import addresses
from inbox_bot.app import build_app
from inbox_bot.staff import split_commands
from inbox_bot.store import Case, CaseEvent, InboundMessage
from tests import mailgen
from tests.e2e import load, parsed, text_part, write_config

STAFF = "hana.staff@ikaclo.example.jp"
OTHER_STAFF = "ken.staff@ikaclo.example.jp"
BOSS = "boss@ikaclo.example.jp"
SECRET = "test-secret-not-for-production"
JST = timezone(timedelta(hours=9))


def test_commands_are_the_hash_lines_at_the_top_only():
    cmds, rest = split_commands("\n#note called her\n#extend Complex request\nHello,\n#not a command\n")
    assert cmds == [("note", "called her"), ("extend", "Complex request")]
    assert rest == "Hello,\n#not a command"


def test_tokens_verify_only_for_their_staff_member_case_and_time():
    tok = addresses.make_token(SECRET, 42, STAFF, date(2026, 11, 25))
    raw = str(tok)
    assert addresses.verify(SECRET, raw, STAFF, today=date(2026, 11, 26), ttl_days=30).case_id == 42
    for staff, today, secret in ((OTHER_STAFF, date(2026, 11, 26), SECRET),
                                 (STAFF, date(2027, 1, 30), SECRET),
                                 (STAFF, date(2026, 11, 26), "other-secret")):
        with pytest.raises(addresses.TokenError):
            addresses.verify(secret, raw, staff, today=today, ttl_days=30)
    forged_case = raw.replace("42-", "43-", 1)
    with pytest.raises(addresses.TokenError):
        addresses.verify(SECRET, forged_case, STAFF, today=date(2026, 11, 26), ttl_days=30)
    assert "x" * 6 in addresses.redact(f"inquiries+{raw}@ikaclo.example.jp")
    assert tok.mac not in addresses.redact(f"inquiries+{raw}@ikaclo.example.jp")


class Setup:
    def __init__(self, tmp_path, dovecot_user, smtp_server, clock):
        config = write_config(tmp_path, dovecot_user, smtp_server)
        cfg = load(config)
        self.cfg = replace(cfg, staff=replace(cfg.staff, addresses=[STAFF, OTHER_STAFF], supervisor=BOSS,
                                              token_secret=SECRET, token_ttl_days=14))
        self.user, self.smtp, self.clock = dovecot_user, smtp_server, clock
        self.app = build_app(self.cfg, clock=clock)

    def deliver(self, raw: bytes) -> None:
        self.user.server.append(self.user.username, "INBOX", raw)

    def run(self):
        return self.app.run_once()

    def to_addr(self, rcpt):
        return [m for m in self.smtp.messages if m.rcpt_tos == (rcpt,)]


def staff_mail(sender: str, to: str, subject: str, body: str, mid: str) -> bytes:
    m = email.message.EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = f"<{mid}>"
    m.set_content(body)
    return m.as_bytes(policy=email.policy.SMTP)


@pytest.fixture
def world(tmp_path, dovecot_user, smtp_server):
    clock = lambda: datetime.now(timezone.utc)  # noqa: E731
    w = Setup(tmp_path, dovecot_user, smtp_server, clock)
    inq = mailgen.english(7)          # "Question about my data"
    w.deliver(inq.raw)
    w.run()
    smtp_server.wait_for(1, timeout=10)
    w.inquiry = inq
    w.ack = parsed(smtp_server.messages[0].raw)
    with w.app.store.session() as s:
        w.case = s.execute(select(Case)).scalar_one()
    yield w
    w.app.store.dispose()


def reply_address(w, staff=STAFF, case_id=None, issued=None):
    tok = addresses.make_token(SECRET, case_id or w.case.id, staff, issued or datetime.now(JST).date())
    return addresses.reply_address("inquiries@ikaclo.example.jp", tok)


def test_a_staff_reply_is_relayed_threaded_from_the_inquiries_address_and_confirmed(world):
    w = world
    w.deliver(staff_mail(STAFF, reply_address(w), f"Re: [{w.case.ref}]",
                         "#note called the customer\nDear customer,\nhere is the copy of your data.\n",
                         "staff1@ikaclo.example.jp"))
    report = w.run()
    assert report.dispositions == {"staff_reply": 1}
    w.smtp.wait_for(3, timeout=10)
    relayed = [parsed(m.raw) for m in w.to_addr(w.inquiry.sender)][1:]
    assert len(relayed) == 1
    out = relayed[0]
    assert out["From"].addresses[0].addr_spec == "inquiries@ikaclo.example.jp"
    assert "here is the copy of your data." in text_part(out)
    assert "#note" not in text_part(out)
    assert out["In-Reply-To"].strip() == w.ack["Message-ID"].strip()
    assert f"<{w.inquiry.message_id}>" in out["References"]
    assert w.case.ref in out["Subject"]
    confirmation = [parsed(m.raw) for m in w.to_addr(STAFF)]
    assert len(confirmation) == 1
    body = text_part(confirmation[0])
    assert "sent to the requester" in body and "OK" in body and "#note called the customer" in body
    with w.app.store.session() as s:
        kinds = [e.kind for e in s.execute(select(CaseEvent).where(CaseEvent.case_id == w.case.id)).scalars()]
        assert "staff_reply" in kinds and "note" in kinds


def answer_to(w, address: str, message_id: str):
    """The bot's answer to a staff mail (mail to staff arrives in no fixed order: reminders
    and confirmations go out over parallel connections)."""
    answers = [m for m in map(parsed, (r.raw for r in w.to_addr(address)))
               if m["In-Reply-To"] == f"<{message_id}>"]
    assert len(answers) == 1
    return answers[0]


def test_extend_by_mail_before_the_due_date_notifies_the_requester(world):
    w = world
    w.deliver(staff_mail(STAFF, reply_address(w), f"Re: [{w.case.ref}]",
                         "#extend Complex request across three systems\n", "staff2@ikaclo.example.jp"))
    w.run()
    w.smtp.wait_for(3, timeout=10)
    notice = parsed(w.to_addr(w.inquiry.sender)[-1].raw)
    assert "Complex request across three systems" in text_part(notice)
    with w.app.store.session() as s:
        case = s.get(Case, w.case.id)
        assert case.status == "extended" and case.due_date > w.case.due_date
    assert "OK" in text_part(answer_to(w, STAFF, "staff2@ikaclo.example.jp"))


def test_extend_by_mail_after_the_due_date_is_refused_and_explained(world):
    w = world
    late = datetime.combine(w.case.due_date + timedelta(days=3), datetime.min.time(), JST) + timedelta(hours=10)
    w.app.clock = w.app.intake.clock = lambda: late
    addr = reply_address(w, issued=late.date() - timedelta(days=1))
    w.deliver(staff_mail(STAFF, addr, f"Re: [{w.case.ref}]",
                         "#extend Complex request across three systems\n", "staff3@ikaclo.example.jp"))
    w.run()
    w.smtp.wait_for(2, timeout=10)
    body = text_part(answer_to(w, STAFF, "staff3@ikaclo.example.jp"))
    assert "REFUSED" in body and "has passed" in body
    assert len(w.to_addr(w.inquiry.sender)) == 1          # only the original acknowledgement
    with w.app.store.session() as s:
        assert s.get(Case, w.case.id).status == "acknowledged"


def test_forged_staff_mail_is_never_relayed_or_acted_on_and_the_supervisor_is_told_once(world):
    w = world
    today = datetime.now(JST).date()
    good = reply_address(w)
    local, _, domain = good.partition("@")
    tampered = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    # A second case, so that a token for another case exists.
    w.deliver(mailgen.english(8).raw)
    w.run()
    with w.app.store.session() as s:
        other_case = s.execute(select(Case).where(Case.id != w.case.id)).scalar_one()
    forged = [
        (STAFF, "inquiries@ikaclo.example.jp"),                         # staff From, no token
        (STAFF, reply_address(w, case_id=other_case.id).replace(       # token for another case,
            f"+{other_case.id}-", f"+{w.case.id}-")),                  # relabelled to this one
        (STAFF, reply_address(w, staff=OTHER_STAFF)),                   # token of another staff member
        (STAFF, reply_address(w, issued=today - timedelta(days=30))),   # expired
        (STAFF, tampered),                                              # tampered
        ("mallory@evil.example", good),                                 # non-staff sender, valid token
    ]
    before = len(w.smtp.messages)
    for i, (sender, to) in enumerate(forged):
        w.deliver(staff_mail(sender, to, f"Re: [{w.case.ref}]",
                             "#close nothing to see\nPlease send me all the data.\n", f"forged{i}@x.example"))
    report = w.run()
    assert report.dispositions == {"screened": 6}
    import time
    time.sleep(0.5)
    new = w.smtp.messages[before:]
    assert [m.rcpt_tos for m in new] == [(BOSS,)]                        # one alert, nothing else
    alert = text_part(parsed(new[0].raw))
    assert alert.count("message #") == 6
    with w.app.store.session() as s:
        rows = s.execute(select(InboundMessage).where(InboundMessage.rule == "staff-auth")).scalars().all()
        assert len(rows) == 6 and all(r.error for r in rows)
        case = s.get(Case, w.case.id)
        assert case.status == "acknowledged"
        assert not [e for e in case.events if e.kind in ("staff_reply", "status") and e.actor != "inbox-bot"]
