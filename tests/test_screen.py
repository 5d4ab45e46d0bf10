"""Screening: one test per named rule, with realistic headers run through the real parser,
plus the bounce corpora (sisimai, enmime, postal-mime) and bounce matching."""
from __future__ import annotations

import mailbox
from datetime import datetime, timedelta, timezone
from email.header import Header
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from functools import lru_cache

import pytest

from inbox_bot.parse import InboundMessage, parse
from inbox_bot.screen import (RULES, ScreenContext, ScreenResult, bounced_message_ids,
                              is_hard_bounce, screen)
from tests.conftest import REALWORLD

BOT = "inquiries@ikaclo.example.jp"
NOW = datetime(2026, 11, 25, 1, 0, tzinfo=timezone.utc)
CTX = ScreenContext(bot_address=BOT, received_at=NOW)
SISIMAI = REALWORLD / "sisimai-set-of-emails"
needs_corpus = pytest.mark.skipif(not REALWORLD.is_dir(), reason="../shared/corpus/realworld not present")


def inquiry(*, sender: str = "Hanako Sato <hanako.sato@example.com>",
            subject: str = "Request to delete my account data",
            body: str = "Hello,\n\nPlease delete all personal data you hold about me.\n\nHanako Sato\n",
            message_id: str = "<CAF7x1q9@mail.example.com>",
            date: str = "Wed, 25 Nov 2026 09:58:00 +0900",
            headers: tuple[tuple[str, str], ...] = ()) -> InboundMessage:
    """An ordinary customer inquiry, with extra headers, parsed as the pipeline parses it."""
    m = EmailMessage()
    m["From"] = sender
    m["To"] = BOT
    m["Subject"] = subject
    m["Date"] = date
    m["Message-ID"] = message_id
    for name, value in headers:
        m[name] = value
    m.set_content(body)
    return parse(m.as_bytes())


def raw_mail(header_block: str, body: str = "Hello.\r\n") -> InboundMessage:
    """A message given as raw header lines (for headers EmailMessage would rewrite)."""
    return parse((header_block.strip("\r\n").replace("\r\n", "\n").replace("\n", "\r\n")
                  + "\r\n\r\n" + body).encode("utf-8"))


def rule_of(msg: InboundMessage, ctx: ScreenContext = CTX) -> str | None:
    return screen(msg, ctx).rule


# --------------------------------------------------------------------------- ordinary mail

def test_an_ordinary_inquiry_passes():
    result = screen(inquiry(), CTX)
    assert result == ScreenResult(passed=True)
    assert not result.screened


def test_ordinary_outlook_mail_with_rn_nrn_suppression_passes():
    msg = inquiry(headers=(("X-Auto-Response-Suppress", "RN, NRN"), ("Thread-Index", "AdlX1b2c3d4e5f=="),
                           ("X-MS-Has-Attach", ""), ("Content-Language", "ja-JP")))
    assert rule_of(msg) is None


@pytest.mark.parametrize("value", ["RN", "NRN", "RN, NRN", "DR, RN, NRN"])
def test_x_auto_response_suppress_without_all_oof_or_autoreply_passes(value):
    assert rule_of(inquiry(headers=(("X-Auto-Response-Suppress", value),))) is None


def test_auto_submitted_no_passes():
    assert rule_of(inquiry(headers=(("Auto-Submitted", "no"),))) is None


def test_spam_status_no_passes():
    assert rule_of(inquiry(headers=(("X-Spam-Status", "No, score=-0.1 required=5.0"),
                                    ("X-Spam-Flag", "NO")))) is None


def test_a_sender_named_like_our_mailbox_at_another_domain_passes():
    assert rule_of(inquiry(sender="Taro <inquiries@example.com>")) is None


def test_a_reply_that_quotes_our_acknowledgement_passes():
    msg = inquiry(subject="Re: Request to delete my account data [PRIV-2026-00001]",
                  headers=(("In-Reply-To", "<179.1.2.PRIV-2026-00001@ikaclo.example.jp>"),))
    assert rule_of(msg) is None


# --------------------------------------------------------------------------- no-sender / own / loop

def test_a_message_without_from_is_screened_as_no_sender():
    assert rule_of(raw_mail(f"To: {BOT}\nSubject: hello\nMessage-ID: <x1@example.com>")) == "no-sender"


def test_a_from_without_an_address_is_screened_as_no_sender():
    assert rule_of(raw_mail(f"From: Undisclosed\nTo: {BOT}\nSubject: hello")) == "no-sender"


@pytest.mark.parametrize("sender", [
    "Ikaclo Privacy <inquiries@ikaclo.example.jp>",
    "INQUIRIES@IKACLO.EXAMPLE.JP",
    "inquiries+abc@ikaclo.example.jp",
    "inquiries.abc@ikaclo.example.jp",
])
def test_mail_from_our_address_or_a_reply_token_variant_is_own_address(sender):
    assert rule_of(inquiry(sender=sender)) == "own-address"


def test_x_loop_naming_us_is_a_loop():
    assert rule_of(inquiry(headers=(("X-Loop", BOT),))) == "loop"


def test_x_loop_naming_someone_else_passes():
    assert rule_of(inquiry(headers=(("X-Loop", "helpdesk@example.org"),))) is None


def test_a_message_id_in_our_domain_is_a_loop():
    assert rule_of(inquiry(message_id="<179557.26649.PRIV-2026-00001@ikaclo.example.jp>")) == "loop"


# --------------------------------------------------------------------------- bounces

def test_a_null_return_path_is_a_bounce():
    msg = inquiry(sender="Mail Delivery System <notifications@mx.example.net>",
                  subject="Your message", headers=(("Return-Path", "<>"),))
    assert rule_of(msg) == "bounce"


@pytest.mark.parametrize("sender", ["MAILER-DAEMON@mx.example.net", "postmaster@example.co.jp",
                                    "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"])
def test_mail_from_mailer_daemon_or_postmaster_is_a_bounce(sender):
    assert rule_of(inquiry(sender=sender, subject="Your message")) == "bounce"


def test_a_delivery_status_report_is_a_bounce():
    msg = raw_mail(
        "From: Mail System <notifications@mx.example.net>\n"
        f"To: {BOT}\n"
        "Subject: Your message\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="B"',
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        "Final-Recipient: rfc822; taro@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n--B--\r\n")
    assert rule_of(msg) == "bounce"


def test_a_dsn_from_a_bare_mailer_daemon_is_a_bounce_not_a_missing_sender():
    msg = raw_mail(
        f"From: MAILER-DAEMON\nReturn-Path: <>\nTo: {BOT}\nSubject: failure notice\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"',
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n--B--\r\n")
    assert rule_of(msg) == "bounce"


def test_x_failed_recipients_is_a_bounce():
    msg = inquiry(sender="notifications@mx.example.net", subject="Your message",
                  headers=(("X-Failed-Recipients", "taro@example.com"),))
    assert rule_of(msg) == "bounce"


# --------------------------------------------------------------------------- auto-submitted / precedence

@pytest.mark.parametrize("value", ["auto-replied", "auto-generated", "auto-notified", "Auto-Replied"])
def test_auto_submitted_other_than_no_is_screened(value):
    assert rule_of(inquiry(headers=(("Auto-Submitted", value),))) == "auto-submitted"


@pytest.mark.parametrize("name", ["Precedence", "X-Precedence"])
@pytest.mark.parametrize("value", ["bulk", "junk", "list", "auto_reply", "Bulk"])
def test_precedence_bulk_junk_list_or_auto_reply_is_screened(name, value):
    assert rule_of(inquiry(headers=((name, value),))) == "precedence"


# --------------------------------------------------------------------------- auto-reply headers

@pytest.mark.parametrize("name,value", [
    ("X-Autoreply", "yes"),
    ("X-Autorespond", "Out of office"),
    ("X-Autoresponse", "yes"),
    ("X-AutoReply-From", "hanako.sato@example.com"),
    ("X-Mail-Autoreply", "yes"),
    ("X-Autogenerated", "Reply"),
])
def test_autoresponder_headers_are_auto_reply(name, value):
    assert rule_of(inquiry(headers=((name, value),))) == "auto-reply"


@pytest.mark.parametrize("value", ["All", "OOF", "AutoReply", "DR, OOF, AutoReply", "oof"])
def test_x_auto_response_suppress_all_oof_or_autoreply_is_auto_reply(value):
    assert rule_of(inquiry(headers=(("X-Auto-Response-Suppress", value),))) == "auto-reply"


# --------------------------------------------------------------------------- lists, spam, no-reply

@pytest.mark.parametrize("name,value", [
    ("List-Id", "Ikaclo users <users.lists.example.org>"),
    ("List-Unsubscribe", "<mailto:leave-users@lists.example.org>, <https://lists.example.org/u>"),
    ("List-Post", "<mailto:users@lists.example.org>"),
])
def test_mailing_list_headers_are_screened(name, value):
    assert rule_of(inquiry(headers=((name, value),))) == "mailing-list"


@pytest.mark.parametrize("name,value", [
    ("X-Spam-Flag", "YES"),
    ("X-Spam-Status", "Yes, score=12.3 required=5.0 tests=BAYES_99"),
    ("X-Spam", "Yes"),
])
def test_spam_flags_are_screened(name, value):
    assert rule_of(inquiry(headers=((name, value),))) == "spam"


@pytest.mark.parametrize("sender", ["no-reply@accounts.example.com", "noreply@example.com",
                                    "do-not-reply@example.com", "donotreply@example.com",
                                    "No_Reply <no_reply@example.com>", "bounce@mailer.example.com",
                                    "bounces+12345@em.example.com"])
def test_no_reply_senders_are_screened(sender):
    assert rule_of(inquiry(sender=sender)) == "no-reply-sender"


# --------------------------------------------------------------------------- out of office

def _iso2022jp(subject: str) -> str:
    return Header(subject, "iso-2022-jp").encode()


@pytest.mark.parametrize("subject", [
    "Automatic reply: Request to delete my account data",      # en (Outlook)
    "Out of Office: Request to delete my account data",
    "Auto-Reply: I am away",
    "Abwesenheitsnotiz: Antrag auf Löschung",                  # de
    "Automatische Antwort: Ihre Anfrage",
    "Réponse automatique : Votre demande",                     # fr
    "Absence du bureau",
    "Respuesta automática: Su consulta",                       # es
    "Fuera de la oficina",
    "Risposta automatica: richiesta",                          # it
    "Fuori ufficio",
    "Automatisch antwoord: Uw verzoek",                        # nl
    "Afwezigheidsmelding",
    "自動応答: 個人情報の削除について",                          # ja
    "【自動返信】お問い合わせありがとうございます",
    "不在のお知らせ",
])
def test_out_of_office_subjects_are_screened(subject):
    assert rule_of(inquiry(subject=subject)) == "out-of-office"


def test_an_iso2022jp_encoded_japanese_out_of_office_subject_is_screened():
    msg = raw_mail(f"From: Taro <taro@example.co.jp>\nTo: {BOT}\n"
                   f"Subject: {_iso2022jp('自動応答：不在のお知らせ')}\nMessage-ID: <j1@example.co.jp>")
    assert msg.subject == "自動応答：不在のお知らせ"
    assert rule_of(msg) == "out-of-office"


# --------------------------------------------------------------------------- first-connection horizon

def test_mail_received_before_the_horizon_is_screened():
    ctx = ScreenContext(bot_address=BOT, received_at=NOW - timedelta(days=30), horizon=NOW - timedelta(days=14))
    assert rule_of(inquiry(), ctx) == "before-horizon"


def test_the_horizon_is_judged_by_received_at_not_the_date_header():
    horizon = NOW - timedelta(days=14)
    old_date_header = inquiry(date="Mon, 02 Jan 2023 09:00:00 +0900")
    assert rule_of(old_date_header, ScreenContext(BOT, received_at=NOW, horizon=horizon)) is None
    fresh_date_header = inquiry(date="Wed, 25 Nov 2026 09:00:00 +0900")
    assert rule_of(fresh_date_header,
                   ScreenContext(BOT, received_at=NOW - timedelta(days=20), horizon=horizon)) == "before-horizon"


def test_without_a_horizon_old_mail_passes():
    assert rule_of(inquiry(), ScreenContext(BOT, received_at=NOW - timedelta(days=3650))) is None


def test_rules_are_named_in_kebab_case_and_unique():
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    assert all(n == n.lower() and " " not in n and "_" not in n for n in names)


# --------------------------------------------------------------------------- bounce matching

def _dsn_with_rfc822_headers(original_id: str, status: str) -> InboundMessage:
    return raw_mail(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\n"
        f"To: {BOT}\nSubject: Undelivered Mail Returned to Sender\n"
        "Message-ID: <20261125.ABC@mx.example.net>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"',
        "--B\r\nContent-Type: text/plain\r\n\r\nThis is the mail system. Your message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; taro@example.com\r\nAction: failed\r\nStatus: {status}\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {BOT}\r\nTo: taro@example.com\r\nMessage-ID: <{original_id}>\r\n"
        "Subject: Re: delete my data [PRIV-2026-00001]\r\n--B--\r\n")


_REPORT_PARTS_UNREAD = (
    "bounced_message_ids only reads msg.text, and parse() keeps text/rfc822-headers "
    "(_NON_BODY_TEXT) as attachment metadata, so the original Message-ID of a Postfix-style DSN "
    "is never found and the bounce is not matched to our outgoing mail")


def test_bounced_message_ids_finds_the_original_message_id_in_rfc822_headers():
    original = "179557.1.PRIV-2026-00001@ikaclo.example.jp"
    msg = _dsn_with_rfc822_headers(original, "5.1.1")
    assert rule_of(msg) == "bounce"
    assert original in bounced_message_ids(msg)


def test_bounced_message_ids_uses_in_reply_to_and_references():
    msg = inquiry(sender="postmaster@example.net", subject="Returned mail",
                  headers=(("In-Reply-To", "<ack1@ikaclo.example.jp>"),
                           ("References", "<inq1@example.com> <ack1@ikaclo.example.jp>")))
    assert bounced_message_ids(msg) >= {"ack1@ikaclo.example.jp", "inq1@example.com"}


def test_a_550_reply_in_the_human_readable_text_is_a_hard_bounce():
    msg = inquiry(sender="MAILER-DAEMON@mx.example.net", subject="Undelivered Mail Returned to Sender",
                  body="<taro@example.com>: host mx.example.com said: 550 5.1.1 User unknown\n")
    assert rule_of(msg) == "bounce" and is_hard_bounce(msg)


def test_a_4xx_delivery_status_is_not_a_hard_bounce():
    assert not is_hard_bounce(_dsn_with_rfc822_headers("a@ikaclo.example.jp", "4.2.2"))


def test_a_status_5_in_the_delivery_status_part_is_a_hard_bounce():
    assert is_hard_bounce(_dsn_with_rfc822_headers("a@ikaclo.example.jp", "5.1.1"))


@needs_corpus
def test_bounced_message_ids_finds_the_original_in_an_attached_message_rfc822():
    msg = parse((REALWORLD / "postal-mime" / "fixtures" / "bounce.eml").read_bytes())
    assert rule_of(msg) == "bounce"
    assert "e85f1c9b-9b51-4028-8ec0-0a657155028e@app.fastmail.com" in bounced_message_ids(msg)


@needs_corpus
def test_an_outlook_dsn_with_status_5_only_in_the_report_is_a_hard_bounce():
    msg = parse((REALWORLD / "enmime" / "dsn" / "testdata" / "dsn_with_multipart_alternative.raw").read_bytes())
    assert rule_of(msg) == "bounce"
    assert is_hard_bounce(msg)


@needs_corpus
@pytest.mark.parametrize("name", ["simple_dsn.raw", "simple_dsn_with_html.raw", "delayed_dsn.raw",
                                  "multi_recipient_dsn.raw", "dsn_with_multipart_alternative.raw"])
def test_enmime_dsns_are_screened_as_bounces(name):
    assert rule_of(parse((REALWORLD / "enmime" / "dsn" / "testdata" / name).read_bytes())) == "bounce"


@needs_corpus
def test_a_delayed_dsn_is_not_a_hard_bounce():
    assert not is_hard_bounce(parse((REALWORLD / "enmime" / "dsn" / "testdata" / "delayed_dsn.raw").read_bytes()))


@needs_corpus
def test_the_postal_mime_bounce_is_a_hard_bounce():
    msg = parse((REALWORLD / "postal-mime" / "fixtures" / "bounce.eml").read_bytes())
    assert rule_of(msg) == "bounce" and is_hard_bounce(msg)


# --------------------------------------------------------------------------- the sisimai corpus

MACHINE_RULES = {r.name for r in RULES} - {"before-horizon"}
NOT_BOUNCES = {"maildir/not/is-not-bounce-01.eml", "maildir/not/is-not-bounce-02.eml"}

_ARF = ("ARF abuse/feedback report (multipart/report; report-type=feedback-report) passes: "
        "DSN_CONTENT only matches report-type=delivery-status")
_POST_MASTER = ("Verizon/Apache James bounce from post_master@ passes: bounce and MACHINE_LOCALPARTS "
                "know postmaster but not post_master")
_FML = ("fml mailing-list error from neko-admin@ passes: only List-Id/List-Unsubscribe/List-Post are "
        "checked, not List-Subscribe, Mailing-List or X-MLServer")
UNSCREENED: dict[str, str] = {}
_NO_SENDER_FIRST = ("'no-sender' runs before 'bounce', so a DSN from a bare 'MAILER-DAEMON' (no "
                    "domain, or '<>') is stored as no-sender and the pipeline never calls "
                    "_record_bounce: no delivery_failed event, no suppression")
NOT_RULED_BOUNCE: set[str] = set()


def sisimai_files() -> list[str]:
    if not SISIMAI.is_dir():
        return []
    out = [str(p.relative_to(SISIMAI)) for p in sorted(SISIMAI.rglob("*.eml"))]
    return out + ["mbox/mbox-1"]   # size-0/1/2 hold no message


@lru_cache(maxsize=None)
def sisimai_raw(name: str) -> bytes:
    path = SISIMAI / name
    if path.parent.name == "mbox":
        return next(iter(mailbox.mbox(str(path)))).as_bytes()
    return path.read_bytes()


@lru_cache(maxsize=None)
def sisimai_rule(name: str) -> str | None:
    return rule_of(parse(sisimai_raw(name)))


def _xfail(name: str, reasons: dict[str, str] | set[str], default: str = "") -> pytest.ParameterSet:
    if name in reasons:
        reason = reasons[name] if isinstance(reasons, dict) else default
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason), id=name)
    return pytest.param(name, id=name)


def looks_like_dsn(raw: bytes) -> bool:
    """Header evidence that a mail system wrote it: null Return-Path, a delivery-status
    report, X-Failed-Recipients, or From naming MAILER-DAEMON."""
    headers = BytesHeaderParser().parsebytes(raw)
    return (str(headers.get("Return-Path", "")).strip() == "<>"
            or "delivery-status" in str(headers.get("Content-Type", "")).lower()
            or headers.get("X-Failed-Recipients") is not None
            or "mailer-daemon" in str(headers.get("From", "")).lower())


@needs_corpus
@pytest.mark.parametrize("name", [_xfail(n, UNSCREENED) for n in sisimai_files() if n not in NOT_BOUNCES])
def test_every_sisimai_bounce_is_screened_by_a_machine_rule(name):
    assert sisimai_rule(name) in MACHINE_RULES


@needs_corpus
@pytest.mark.parametrize("name", [_xfail(n, NOT_RULED_BOUNCE, _NO_SENDER_FIRST) for n in sisimai_files()
                                  if n not in NOT_BOUNCES and looks_like_dsn(sisimai_raw(n))])
def test_sisimai_mail_from_a_mail_system_is_screened_as_bounce(name):
    assert sisimai_rule(name) == "bounce"


@needs_corpus
@pytest.mark.parametrize("name", sorted(NOT_BOUNCES))
def test_sisimai_mail_that_is_not_a_bounce_passes(name):
    assert sisimai_rule(name) is None
