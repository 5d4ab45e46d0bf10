"""The outbox: safe headers, escaped templates, one row per dedupe key, retries that keep the
Message-ID, budgets, and the SMTP transport against a real server (none / STARTTLS / TLS, AUTH)."""
from __future__ import annotations

import base64
import email
from datetime import date, datetime, timedelta
from email import policy
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import func, select

from inbox_bot import outbox
from inbox_bot.outbox import OutgoingMail, automatic_mail_allowed, enqueue, render, retry_delay, send_due
from inbox_bot.parse import parse
from inbox_bot.store import Outbox, Store, Suppression, utcnow
from inbox_bot.transports import FileTransport, MemoryTransport, SmtpTransport, TransportError
from tests.servers import SmtpServer

BOT = "inquiries@ikaclo.example.jp"
DOMAIN = "ikaclo.example.jp"
# The headers build() writes for a text-only automatic mail with a parent; nothing else may appear.
EXPECTED_HEADERS = {"from", "to", "subject", "date", "message-id", "in-reply-to", "references",
                    "auto-submitted", "x-auto-response-suppress", "x-loop", "content-type",
                    "content-transfer-encoding", "mime-version"}


def make_mail(**overrides) -> OutgoingMail:
    values = dict(kind="ack", sender=BOT, sender_name="Ikaclo Privacy", recipient="taro@example.com",
                  recipient_name="", subject="Re: Delete my data [PRIV-2026-00001]",
                  text="We have received your message.\n", html=None, domain=DOMAIN,
                  id_hint="PRIV-2026-00001", in_reply_to="inq-1@mail.example.com",
                  references=["inq-0@mail.example.com"], template="ack_new_case.en")
    values.update(overrides)
    return OutgoingMail(**values)


def header_block(raw: bytes) -> list[str]:
    return raw.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n")


def top_level_header_names(raw: bytes) -> set[str]:
    return {k.lower() for k in email.message_from_bytes(raw, policy=policy.default).keys()}


def assert_no_injected_header(raw: bytes) -> None:
    assert top_level_header_names(raw) <= EXPECTED_HEADERS
    assert not any(line.lower().startswith(("bcc:", "x-evil:")) for line in header_block(raw))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'outbox.sqlite3'}")
    s.migrate()
    yield s
    s.dispose()


def count_rows(store: Store) -> int:
    with store.session() as s:
        return s.execute(select(func.count(Outbox.id))).scalar_one()


def get_row(store: Store, oid: int) -> Outbox:
    with store.session() as s:
        return s.get(Outbox, oid)


def queue(store: Store, now: datetime | None = None, **overrides) -> int:
    with store.session() as s, s.begin():
        return enqueue(s, make_mail(**overrides), now=now).id


# --------------------------------------------------------------------------- header safety

def test_clean_header_turns_line_breaks_and_controls_into_single_spaces():
    assert outbox.clean_header("Hi\r\nBcc: evil@example.net\x00\u2028x") == "Hi Bcc: evil@example.net x"
    assert len(outbox.clean_header("x" * 500, 200)) == 200


@pytest.mark.parametrize("field,value", [
    ("subject", "Hello\r\nBcc: evil@example.net"),
    ("subject", "Hello\nX-Evil: 1\n\n<html>body</html>"),
    ("subject", "Hello\rBcc: evil@example.net"),
    ("recipient_name", "Taro\r\nBcc: evil@example.net"),
    ("sender_name", "Ikaclo\r\nX-Evil: 1"),
    ("in_reply_to", "inq-1@mail.example.com>\r\nBcc: <evil@example.net"),
    ("references", ["a@example.com>\r\nX-Evil: <1"]),
])
def test_a_line_break_in_a_header_value_never_produces_an_extra_header(field, value):
    assert_no_injected_header(make_mail(**{field: value}).build().as_bytes())


def test_a_line_break_in_an_attachment_name_stays_inside_its_part():
    mail = make_mail(attachments=[("notes\r\nBcc: evil@example.net.txt", "text/plain", b"x")])
    raw = mail.build().as_bytes()
    assert not any(line.lower().startswith("bcc:") for line in raw.decode("ascii").split("\r\n"))


def _q_word(text: str) -> str:
    return "=?utf-8?q?" + text.replace("\r", "=0D").replace("\n", "=0A").replace(" ", "_") + "?="


def _b_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


_ENCODED_WORD_INJECTION = (
    "outbox.clean_header strips only literal control characters; the SMTP policy's header "
    "factory then decodes the RFC 2047 word to CR/LF and Python 3.11.7 writes it out as a real "
    "header line (CVE-2024-6923 class). Fix clean_header: decode encoded words "
    "(email.header.decode_header/make_header) repeatedly until stable, then strip controls")


@pytest.mark.parametrize("word", [_q_word("Hi\r\nBcc: evil@example.net"), _b_word("Hi\r\nBcc: evil@example.net")],
                         ids=["q", "b"])
def test_an_encoded_word_that_decodes_to_crlf_in_the_subject_never_produces_an_extra_header(word):
    assert_no_injected_header(make_mail(subject=f"Re: {word} [PRIV-2026-00001]").build().as_bytes())


def test_an_encoded_word_that_decodes_to_crlf_in_a_display_name_is_neutralised():
    assert_no_injected_header(make_mail(recipient_name=_q_word("Taro\r\nBcc: evil@example.net")).build().as_bytes())


def test_a_double_encoded_inquiry_subject_cannot_inject_a_header_into_the_acknowledgement():
    raw = (f"From: Taro <taro@example.com>\r\nTo: {BOT}\r\n"
           f"Subject: {_b_word(_q_word('Hi' + chr(13) + chr(10) + 'Bcc: evil@example.net'))}\r\n"
           "Message-ID: <inq-9@mail.example.com>\r\n\r\nPlease delete my data.\r\n").encode()
    inbound = parse(raw)
    assert "\r" not in inbound.subject and "\n" not in inbound.subject
    # What pipeline.ack_subject() builds (not imported here: it pulls in spaCy).
    mail = make_mail(subject=f"Re: {outbox.clean_header(inbound.subject, 150)} [PRIV-2026-00009]")
    assert_no_injected_header(mail.build().as_bytes())


def test_an_automatic_mail_is_marked_threaded_and_has_a_message_id_in_our_domain():
    msg = email.message_from_bytes(make_mail().build().as_bytes(), policy=policy.default)
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["X-Loop"] == BOT
    assert msg["Message-ID"].strip("<>").endswith("@" + DOMAIN)
    assert msg["In-Reply-To"] == "<inq-1@mail.example.com>"
    assert msg["References"] == "<inq-0@mail.example.com> <inq-1@mail.example.com>"


@pytest.mark.parametrize("text, encoding", [
    ("Dear Taro,\nyour case is PRIV-2026-00001.\n", "7bit"),
    ("x" * 999 + "\n", "quoted-printable"),              # over RFC 5322's 998 per line
    ("Sehr geehrte Frau Müller,\nIhr Fall ist eröffnet.\n", "quoted-printable"),
    ("個人情報の削除を承りました。\n", "base64"),
])
def test_each_text_part_takes_the_lightest_encoding_that_keeps_it_intact(text, encoding):
    raw = make_mail(text=text).to_bytes()
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Content-Transfer-Encoding"] == encoding
    assert msg.get_content().replace("\r\n", "\n") == text
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


# --------------------------------------------------------------------------- templates

def ack_context(**overrides) -> dict:
    context = {"case_ref": "PRIV-2026-00001", "organisation": "Ikaclo", "bot_address": BOT,
               "requester_name": "Taro", "understood": ["You would like personal information deleted."],
               "needs_review": False, "gdpr": True, "identity_note": True,
               "receipt_date": "25 November 2026", "due_date": "25 December 2026",
               "subject": "Re: Delete my data [PRIV-2026-00001]"}
    context.update(overrides)
    return context


def test_render_escapes_a_script_in_the_requester_name_in_the_html_part():
    text, html = render("ack_new_case", "en", ack_context(
        requester_name='<script>alert("x")</script>', subject="<b>bold</b> [PRIV-2026-00001]"))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert '<script>alert("x")</script>' in text          # the text part is plain text, not markup


def test_render_falls_back_to_english_for_a_language_without_templates():
    text, html = render("ack_new_case", "xx", ack_context())
    assert outbox.template_language("ack_new_case", "xx") == "en"
    assert text.startswith("Dear Taro,")
    assert '<html lang="en">' in html


@pytest.mark.parametrize("language,greeting", [("ja", "Taro"), ("de", "Taro")])
def test_render_uses_the_requesters_language_when_a_template_exists(language, greeting):
    text, html = render("ack_new_case", language, ack_context())
    assert f'<html lang="{language}">' in html and greeting in text
    assert not text.startswith("Dear ")


def test_render_fails_loudly_when_the_context_misses_a_value():
    context = ack_context()
    del context["due_date"]
    with pytest.raises(Exception, match="due_date"):
        render("ack_new_case", "en", context)


def test_format_date_follows_the_language():
    assert outbox.format_date(date(2026, 12, 25), "ja") == "2026年12月25日"
    assert outbox.format_date(date(2026, 12, 25), "de") == "25.12.2026"


# --------------------------------------------------------------------------- enqueue

def test_enqueue_with_the_same_dedupe_key_twice_keeps_one_row(store):
    with store.session() as s, s.begin():
        first = enqueue(s, make_mail(), dedupe_key="ack:case:1")
        second = enqueue(s, make_mail(subject="another"), dedupe_key="ack:case:1")
        assert second.id == first.id
    assert count_rows(store) == 1


def test_enqueue_stores_the_rendered_bytes_with_the_message_id(store):
    mail = make_mail()
    with store.session() as s, s.begin():
        row = enqueue(s, mail)
        assert row.status == "queued" and row.attempts == 0
        assert f"Message-ID: {mail.message_id}".encode() in row.raw.replace(b"\r\n ", b" ")
        assert row.message_id == mail.message_id.strip("<>")


# --------------------------------------------------------------------------- send_due

def test_a_failed_send_stays_queued_with_its_error_and_backs_off_exponentially(store):
    now = utcnow()
    oid = queue(store, now=now)
    transport = MemoryTransport()
    transport.fail_with = TransportError("451 4.3.0 try again later")
    delays = []
    for _ in range(4):
        counts = send_due(store.session, transport, now=now, max_attempts=10, retry_base=30)
        assert counts == {"sent": 0, "retry": 1, "failed": 0}
        row = get_row(store, oid)
        delays.append(row.next_attempt_at - now)
        now = row.next_attempt_at
    assert row.status == "queued" and row.attempts == 4
    assert "451" in row.last_error
    assert delays == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120), timedelta(seconds=240)]


def test_a_mail_is_not_retried_before_its_next_attempt_time(store):
    now = utcnow()
    oid = queue(store, now=now)
    transport = MemoryTransport()
    transport.fail_with = TransportError("451 later")
    send_due(store.session, transport, now=now, max_attempts=10, retry_base=30)
    transport.fail_with = None
    assert send_due(store.session, transport, now=now + timedelta(seconds=29), max_attempts=10,
                    retry_base=30) == {"sent": 0, "retry": 0, "failed": 0}
    assert transport.sent == [] and get_row(store, oid).attempts == 1


def test_retry_delay_is_capped_at_six_hours():
    assert retry_delay(1, 30) == timedelta(seconds=30)
    assert retry_delay(30, 30) == timedelta(hours=6)


def test_a_permanent_failure_marks_the_mail_failed_at_once(store):
    oid = queue(store)
    transport = MemoryTransport()
    transport.fail_with = TransportError("550 5.1.1 no such user", permanent=True)
    assert send_due(store.session, transport, now=utcnow(), max_attempts=10, retry_base=30)["failed"] == 1
    row = get_row(store, oid)
    assert row.status == "failed" and row.attempts == 1 and "550" in row.last_error


def test_a_mail_fails_after_max_attempts(store):
    now = utcnow()
    oid = queue(store, now=now)
    transport = MemoryTransport()
    transport.fail_with = TransportError("451 later")
    for _ in range(3):
        send_due(store.session, transport, now=now, max_attempts=3, retry_base=30)
        now += timedelta(hours=7)
    row = get_row(store, oid)
    assert row.status == "failed" and row.attempts == 3


def test_an_unreachable_server_counts_an_attempt_for_every_due_mail(store):
    now = utcnow()
    ids = [queue(store, now=now, recipient=f"user{i}@example.com") for i in range(3)]
    transport = MemoryTransport()
    transport.fail_with = TransportError("connection refused", connection_lost=True)
    assert send_due(store.session, transport, now=now, max_attempts=10, retry_base=30)["retry"] == 3
    assert [get_row(store, i).attempts for i in ids] == [1, 1, 1]


def test_success_after_failures_sends_the_same_message_id_bytes(db_url):
    store = Store(db_url)
    store.migrate()
    try:
        now = utcnow()
        oid = queue(store, now=now)
        queued_raw = get_row(store, oid).raw
        transport = MemoryTransport()
        transport.fail_with = TransportError("451 later")
        for _ in range(2):
            send_due(store.session, transport, now=now, max_attempts=10, retry_base=30)
            now = get_row(store, oid).next_attempt_at
        transport.fail_with = None
        assert send_due(store.session, transport, now=now, max_attempts=10, retry_base=30)["sent"] == 1
        row = get_row(store, oid)
        assert row.status == "sent" and row.attempts == 3 and row.last_error is None
        assert transport.sent == [(BOT, ["taro@example.com"], queued_raw)]
        assert send_due(store.session, transport, now=now + timedelta(days=1), max_attempts=10,
                        retry_base=30)["sent"] == 0            # never sent twice
    finally:
        store.dispose()


# --------------------------------------------------------------------------- budgets

WINDOW = timedelta(minutes=60)


def allowed(store: Store, recipient: str, now: datetime, sender_budget: int = 5,
            global_budget: int = 500) -> str | None:
    with store.session() as s:
        return automatic_mail_allowed(s, recipient, now=now, window=WINDOW,
                                      sender_budget=sender_budget, global_budget=global_budget)


def test_the_sender_budget_stops_automatic_mail_to_one_recipient(store):
    now = utcnow()
    for _ in range(5):
        queue(store, now=now, recipient="taro@example.com")
    assert allowed(store, "taro@example.com", now) == "sender-budget"
    assert allowed(store, "hanako@example.com", now) is None
    assert allowed(store, "taro@example.com", now + WINDOW + timedelta(minutes=1)) is None


def test_the_global_budget_stops_all_automatic_mail(store):
    now = utcnow()
    for i in range(3):
        queue(store, now=now, recipient=f"user{i}@example.com")
    assert allowed(store, "new@example.com", now, global_budget=3) == "global-budget"
    assert allowed(store, "new@example.com", now, global_budget=4) is None


def test_a_suppressed_address_gets_no_automatic_mail_until_the_suppression_ends(store):
    now = utcnow()
    with store.session() as s, s.begin():
        s.add(Suppression(address="taro@example.com", reason="hard bounce", until=now + timedelta(days=60)))
    assert allowed(store, "Taro@Example.com", now) == "suppressed-address"
    assert allowed(store, "taro@example.com", now + timedelta(days=61)) is None


def test_budgets_follow_the_injected_clock(store):
    later = utcnow() + timedelta(days=2)
    for _ in range(5):
        queue(store, now=later, recipient="taro@example.com")
    assert allowed(store, "taro@example.com", later) == "sender-budget"


# --------------------------------------------------------------------------- transports

def test_file_transport_writes_one_file_per_message_id_even_on_retry(tmp_path):
    raw = make_mail().build().as_bytes()
    transport = FileTransport(tmp_path / "out")
    transport.open()
    transport.send(BOT, ["taro@example.com"], raw)
    transport.send(BOT, ["taro@example.com"], raw)
    files = list((tmp_path / "out").glob("*.eml"))
    assert len(files) == 1 and files[0].read_bytes() == raw


@pytest.fixture
def smtp_servers() -> Iterator[list[SmtpServer]]:
    servers: list[SmtpServer] = []
    yield servers
    for server in servers:
        server.cleanup()


def start(servers: list[SmtpServer], **options) -> SmtpServer:
    server = SmtpServer(**options).start()
    servers.append(server)
    return server


def deliver(transport: SmtpTransport, raw: bytes) -> None:
    transport.open()
    try:
        transport.send(BOT, ["taro@example.com"], raw)
    finally:
        transport.close()


def test_smtp_transport_delivers_over_plain_smtp(smtp_server):
    raw = make_mail().build().as_bytes()
    deliver(SmtpTransport(smtp_server.host, smtp_server.port, security="none", timeout=5), raw)
    received = smtp_server.wait_for(1)[0]
    assert received.rcpt_tos == ("taro@example.com",) and received.mail_from == BOT
    assert received.raw.rstrip(b"\r\n") == raw.rstrip(b"\r\n")


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_smtp_transport_authenticates_over_a_verified_tls_connection(smtp_servers, security):
    # aiosmtpd only counts STARTTLS as TLS for auth_require_tls, so implicit TLS must waive it.
    server = start(smtp_servers, security=security, require_starttls=security == "starttls",
                   auth=("inquiries", "s3cret"), auth_require_tls=security == "starttls")
    transport = SmtpTransport(server.host, server.port, security=security, username="inquiries",
                              password="s3cret", ca_file=str(server.ca_path), timeout=5)
    deliver(transport, make_mail().build().as_bytes())
    assert server.wait_for(1)[0].auth_user == "inquiries"


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_a_tls_server_whose_certificate_we_cannot_verify_is_a_transport_error(smtp_servers, security):
    server = start(smtp_servers, security=security)
    transport = SmtpTransport(server.host, server.port, security=security, timeout=5)   # no ca_file
    with pytest.raises(TransportError, match="certificate verify failed") as err:
        transport.open()
    assert err.value.connection_lost
    assert server.messages == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_wrong_smtp_password_is_a_transport_error(smtp_servers):
    server = start(smtp_servers, security="tls", auth=("inquiries", "s3cret"), auth_require_tls=False)
    transport = SmtpTransport(server.host, server.port, security="tls", username="inquiries",
                              password="wrong", ca_file=str(server.ca_path), timeout=5)
    with pytest.raises(TransportError):
        transport.open()


@pytest.mark.parametrize("response,permanent", [("451 4.3.0 Try again later", False),
                                                ("554 5.7.1 Message rejected", True)])
def test_an_smtp_rejection_says_whether_it_is_permanent(smtp_server, response, permanent):
    smtp_server.reject_next(response)
    transport = SmtpTransport(smtp_server.host, smtp_server.port, security="none", timeout=5)
    with pytest.raises(TransportError) as err:
        deliver(transport, make_mail().build().as_bytes())
    assert err.value.permanent is permanent


def test_send_due_retries_through_a_real_smtp_server_with_the_same_message_id(store, smtp_server):
    now = utcnow()
    oid = queue(store, now=now)
    transport = SmtpTransport(smtp_server.host, smtp_server.port, security="none", timeout=5)
    smtp_server.reject_next("451 4.3.0 Try again later")
    assert send_due(store.session, transport, now=now, max_attempts=5, retry_base=30)["retry"] == 1
    now = get_row(store, oid).next_attempt_at
    assert send_due(store.session, transport, now=now, max_attempts=5, retry_base=30)["sent"] == 1
    received = smtp_server.wait_for(1)[0]
    row = get_row(store, oid)
    assert row.status == "sent" and row.attempts == 2
    sent_id = email.message_from_bytes(received.raw, policy=policy.default)["Message-ID"]
    assert sent_id.strip().strip("<>") == row.message_id
    assert len(smtp_server.messages) == 1
