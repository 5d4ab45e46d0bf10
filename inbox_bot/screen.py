"""Screening: decide whether a message must not be answered, by named rules read top to bottom.

Each rule is a small object with a kebab-case ``name``; the first one that matches decides and
its name is stored on the message (``messages list`` shows it). Sources: intake-rules.md
(RFC 3834, Request Tracker, osTicket, Zammad, Discourse, FreeScout).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from .parse import InboundMessage

AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponse", "x-autoreply-from",
                     "x-mail-autoreply")
BULK_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}
BOUNCE_SENDER = re.compile(r"^(mailer[-_.]?daemon|post[-_.]?master|mail[-_.]?daemon)$")
MACHINE_LOCALPARTS = re.compile(
    r"^(mailer-daemon|post[-_.]?master|no[-_.]?reply|do[-_.]?not[-_.]?reply|bounces?|mail[-_.]?daemon)([+.-].*)?$")
# Out-of-office subjects in the languages our customers write (Discourse's list, extended).
OOO_SUBJECT = re.compile(
    r"(automatic reply|auto(matic)?[- ]?reply|autoreply|auto[- ]response|out of (the )?office|"
    r"on vacation|away from (the )?office|abwesenheitsnotiz|automatische antwort|abwesend|"
    r"réponse automatique|absence du bureau|respuesta automática|fuera de la oficina|"
    r"risposta automatica|fuori sede|fuori ufficio|automatisch antwoord|afwezigheidsmelding|"
    r"autosvar|automaattinen vastaus|自動応答|自動返信|自動送信|不在(のお知らせ|連絡|にします)|^不在)",
    re.IGNORECASE)
# Any multipart/report: delivery status, abuse feedback (ARF) and read receipts alike.
DSN_CONTENT = re.compile(r"multipart/report", re.I)
BOUNCE_SUBJECT = re.compile(
    r"(undeliver(ed|able)|delivery status notification|returned mail|mail delivery (failed|"
    r"failure|system)|failure notice|delivery failure|nondeliverable|配信不能|配送不能|不達|"
    r"unzustellbar|non remis|no entregado)", re.I)


@dataclass(frozen=True)
class ScreenResult:
    passed: bool
    rule: str | None = None          # kebab-case rule name when screened
    reason: str = ""                 # operator-readable detail (no message content)

    @property
    def screened(self) -> bool:
        return not self.passed


@dataclass(frozen=True)
class ScreenContext:
    bot_address: str                  # inquiries@example.jp
    received_at: datetime             # INTERNALDATE of this message
    horizon: datetime | None = None   # first connection: older mail is not acknowledged
    staff_addresses: frozenset[str] = frozenset()   # their mail clients use our domain too

    @property
    def domain(self) -> str:
        return self.bot_address.rpartition("@")[2].lower()

    def is_own_address(self, address: str) -> bool:
        """Our address, or any reply-token variant of it (``local+token@`` / ``local.token@``)."""
        local, _, domain = self.bot_address.lower().partition("@")
        a_local, _, a_domain = address.lower().partition("@")
        if a_domain != domain:
            return False
        return a_local == local or a_local.startswith(local + "+") or a_local.startswith(local + ".")


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: Callable[[InboundMessage, ScreenContext], str | None]   # reason when it matches


def _h(msg: InboundMessage, name: str) -> tuple[str, ...]:
    return msg.headers.get(name, ())


def _first(msg: InboundMessage, name: str) -> str:
    values = _h(msg, name)
    return values[0].strip() if values else ""


def _no_sender(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    return None if msg.sender and "@" in msg.sender else "no usable From address"


def _own_address(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    if ctx.is_own_address(msg.sender):
        return "From is one of our own addresses"
    return None


def _loop(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    for value in _h(msg, "x-loop"):
        if ctx.bot_address.lower() in value.lower() or ctx.domain in value.lower():
            return "X-Loop names us"
    if msg.message_id and msg.message_id.lower().endswith("@" + ctx.domain) \
            and msg.sender.lower() not in ctx.staff_addresses:
        return "Message-ID is in our own domain"
    return None


def _bounce(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    return_path = _first(msg, "return-path")
    if return_path in ("<>", ""):
        if _h(msg, "return-path"):
            return "null Return-Path"
    if _h(msg, "x-failed-recipients"):
        return "X-Failed-Recipients present"
    if DSN_CONTENT.search(_first(msg, "content-type")):
        return "delivery-status report"
    local = msg.sender.partition("@")[0].lower()
    if BOUNCE_SENDER.match(local):
        return f"sender is {local[:30]}@"
    if not msg.sender:
        # "From: MAILER-DAEMON <>" leaves no address; the display name still tells.
        display = (msg.sender_name or _first(msg, "from").partition("<")[0]).strip().strip('"').lower()
        if BOUNCE_SENDER.match(display):
            return "From: MAILER-DAEMON (no address)"
    if BOUNCE_SUBJECT.search(msg.subject) and local.startswith(("mailer", "post", "mail")):
        return "bounce subject from a mail system"
    return None


def _auto_submitted(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    # RFC 3834 allows a comment after the keyword: "no (manual)".
    value = _first(msg, "auto-submitted").lower()
    if value and value.split("(")[0].strip() != "no":
        return f"Auto-Submitted: {value[:40]}"
    return None


def _precedence(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    for name in ("precedence", "x-precedence"):
        value = _first(msg, name).lower()
        if value in BULK_PRECEDENCE:
            return f"{name}: {value}"
    return None


def _autoreply_headers(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    for name in AUTOREPLY_HEADERS:
        if _h(msg, name):
            return f"{name} present"
    if _first(msg, "x-autogenerated").lower() == "reply":
        return "X-Autogenerated: reply"
    suppress = {v.strip().lower() for v in _first(msg, "x-auto-response-suppress").split(",")}
    # Ordinary Outlook mail carries RN/NRN; only these mean "I am an automatic reply".
    if suppress & {"all", "oof", "autoreply"}:
        return "X-Auto-Response-Suppress: " + ",".join(sorted(suppress & {"all", "oof", "autoreply"}))
    return None


def _mailing_list(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    for name in ("list-id", "list-unsubscribe", "list-post", "list-subscribe", "list-help",
                 "list-owner", "list-archive", "mailing-list", "x-mlserver", "x-ml-name"):
        if _h(msg, name):
            return f"{name} present"
    return None


def _spam(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    if _first(msg, "x-spam-flag").lower() == "yes":
        return "X-Spam-Flag: YES"
    if _first(msg, "x-spam-status").lower().startswith("yes"):
        return "X-Spam-Status: Yes"
    if _first(msg, "x-spam").lower() in ("yes", "true", "spam"):
        return "X-Spam: yes"
    return None


def _machine_sender(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    local = msg.sender.partition("@")[0].lower()
    if MACHINE_LOCALPARTS.match(local):
        return f"sender is a no-reply address ({local[:30]}@)"
    return None


def _ooo_subject(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    if OOO_SUBJECT.search(msg.subject):
        return "out-of-office subject"
    return None


def _horizon(msg: InboundMessage, ctx: ScreenContext) -> str | None:
    # Judged by INTERNALDATE: the sender's Date: header is untrusted.
    if ctx.horizon is not None and ctx.received_at < ctx.horizon:
        return f"arrived {ctx.received_at:%Y-%m-%d}, before the first-connection horizon"
    return None


RULES: tuple[Rule, ...] = (
    # Bounces first: a DSN from a bare MAILER-DAEMON has no usable sender, yet must be matched.
    Rule("bounce", "delivery failure report (DSN, null sender, mailer-daemon)", _bounce),
    Rule("no-sender", "no usable sender address to answer", _no_sender),
    Rule("own-address", "mail from our own (or reply-token) address", _own_address),
    Rule("loop", "X-Loop or Message-ID shows the mail came from us", _loop),
    Rule("auto-submitted", "RFC 3834 Auto-Submitted other than 'no'", _auto_submitted),
    Rule("precedence", "Precedence bulk/junk/list/auto_reply", _precedence),
    Rule("auto-reply", "auto-responder headers", _autoreply_headers),
    Rule("mailing-list", "List-Id / List-Unsubscribe present", _mailing_list),
    Rule("spam", "spam flag set by the mail server", _spam),
    Rule("no-reply-sender", "no-reply / machine sender address", _machine_sender),
    Rule("out-of-office", "out-of-office subject in any of our languages", _ooo_subject),
    Rule("before-horizon", "older than the first-connection horizon", _horizon),
)


def screen(msg: InboundMessage, ctx: ScreenContext) -> ScreenResult:
    for rule in RULES:
        reason = rule.check(msg, ctx)
        if reason:
            return ScreenResult(passed=False, rule=rule.name, reason=reason)
    return ScreenResult(passed=True)


def _report(msg: InboundMessage) -> str:
    return msg.text + "\n" + getattr(msg, "report_text", "")


def bounced_message_ids(msg: InboundMessage) -> set[str]:
    """Message-IDs a bounce refers to: In-Reply-To/References and any quoted in the report."""
    ids = set(msg.in_reply_to) | set(msg.references)
    for m in re.finditer(r"^\s*Message-ID:\s*<([^<>\s]{1,500})>", _report(msg), re.I | re.M):
        ids.add(m.group(1))
    return ids


def is_hard_bounce(msg: InboundMessage) -> bool:
    """A permanent failure (5.x.x) rather than a delay or a temporary failure."""
    report = _report(msg)
    return bool(re.search(r"^\s*Status:\s*5\.\d{1,3}\.\d{1,3}", report, re.I | re.M)
                or re.search(r"\b5\.1\.[01]\b|\b550\b", report))
