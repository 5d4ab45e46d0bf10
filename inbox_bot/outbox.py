"""The outbox: render templates into mail, queue it in the database, deliver with retries.

A queued mail is rendered once and stored as bytes, so every retry carries the same
``Message-ID``. Nothing from the inbound mail reaches an outgoing header without
``clean_header()``; HTML templates are autoescaped.
"""
from __future__ import annotations

import logging
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .store import Outbox, Suppression, utcnow
from .transports import Transport, TransportError

logger = logging.getLogger(__name__)

TEMPLATE_LANGUAGES_FALLBACK = "en"
MAX_REFERENCES = 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")
_MSGID_OK = re.compile(r"^[\x21-\x7e]{1,250}$")


def clean_header(value: str, limit: int = 200) -> str:
    """One safe line: control characters (CR/LF included) become spaces, length capped.

    Encoded words are decoded first (repeatedly: a decoded value can hold another encoded
    word), because the email package would decode one left in place while writing the header
    and so turn an encoded CR/LF into a real line break.
    """
    value = value or ""
    for _ in range(3):
        if "=?" not in value:
            break
        try:
            decoded = str(make_header(decode_header(value)))
        except (ValueError, LookupError, UnicodeError, HeaderParseError):
            break
        if decoded == value:
            break
        value = decoded
    value = _CONTROL.sub(" ", value).replace("=?", "= ?")
    return " ".join(value.split())[:limit]


def clean_msgid(value: str | None) -> str | None:
    if value and _MSGID_OK.match(value) and "<" not in value and ">" not in value:
        return value
    return None


def templates_dir() -> Path:
    """Templates from the installed package, else from the checkout."""
    packaged = resources.files("inbox_bot") / "templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[1] / "templates"


@lru_cache(maxsize=4)
def environments(path: str) -> tuple[jinja2.Environment, jinja2.Environment]:
    loader = jinja2.FileSystemLoader(path)
    text = jinja2.Environment(loader=loader, autoescape=False, undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True)
    html = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
    return text, html


@lru_cache(maxsize=4)
def label_phrases(path: str) -> dict[str, dict[str, str]]:
    return tomllib.loads((Path(path) / "labels.toml").read_text(encoding="utf-8"))


def template_language(name: str, language: str) -> str:
    base = templates_dir()
    if (base / f"{name}.{language}.txt.j2").is_file():
        return language
    return TEMPLATE_LANGUAGES_FALLBACK


def format_date(d: date, language: str) -> str:
    fmt = label_phrases(str(templates_dir())).get(language, {}).get("date_format", "%Y-%m-%d")
    return d.strftime(fmt)


def understood(labels: list[str], language: str) -> list[str]:
    phrases = label_phrases(str(templates_dir())).get(language) or label_phrases(
        str(templates_dir()))[TEMPLATE_LANGUAGES_FALLBACK]
    return [phrases[label] for label in labels if label in phrases]


@dataclass
class OutgoingMail:
    kind: str
    sender: str
    recipient: str
    subject: str
    text: str
    html: str | None
    domain: str
    id_hint: str = "inbox-bot"
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    sender_name: str = ""
    recipient_name: str = ""
    auto: bool = True                  # automatic mail: marked so others don't answer it
    template: str = ""
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)  # name, mime, data
    extra_headers: dict[str, str] = field(default_factory=dict)
    message_id: str = ""

    def build(self) -> EmailMessage:
        msg = EmailMessage(policy=SMTP_POLICY)
        msg["From"] = _addr(self.sender_name, self.sender)
        msg["To"] = _addr(self.recipient_name, self.recipient)
        msg["Subject"] = clean_header(self.subject, 250)
        msg["Date"] = format_datetime(utcnow())
        if not self.message_id:
            # Short enough never to be folded: <PRIV-2026-00042.5f1c…@domain>
            hint = re.sub(r"[^A-Za-z0-9.-]", "", self.id_hint)[:40] or "inbox-bot"
            self.message_id = f"<{hint}.{secrets.token_hex(8)}@{self.domain}>"
        msg["Message-ID"] = self.message_id
        parent = clean_msgid(self.in_reply_to)
        if parent:
            msg["In-Reply-To"] = f"<{parent}>"
        refs = [r for r in (clean_msgid(r) for r in self.references) if r]
        if parent and parent not in refs:
            refs.append(parent)
        if refs:
            msg["References"] = " ".join(f"<{r}>" for r in refs[-MAX_REFERENCES:])
        if self.auto:
            msg["Auto-Submitted"] = "auto-replied"
            msg["X-Auto-Response-Suppress"] = "All"
            msg["X-Loop"] = self.sender
        for name, value in self.extra_headers.items():
            msg[name] = clean_header(value, 900)
        msg.set_content(self.text)
        if self.html:
            msg.add_alternative(self.html, subtype="html")
        for name, mime, data in self.attachments:
            maintype, _, subtype = mime.partition("/")
            msg.add_attachment(data, maintype=maintype, subtype=subtype,
                               filename=clean_header(name, 100))
        return msg


def _addr(name: str, address: str) -> str:
    from email.headerregistry import Address
    local, _, domain = address.partition("@")
    return str(Address(display_name=clean_header(name, 80), username=local, domain=domain))


def render(name: str, language: str, context: dict[str, Any]) -> tuple[str, str]:
    """(text, html) of template ``name`` in ``language`` (English when we have none)."""
    lang = template_language(name, language)
    text_env, html_env = environments(str(templates_dir()))
    ctx = {"lang": lang, **context}
    text = text_env.get_template(f"{name}.{lang}.txt.j2").render(ctx)
    html = html_env.get_template(f"{name}.{lang}.html.j2").render(ctx)
    return text, html


def enqueue(session: Session, mail: OutgoingMail, *, case_id: int | None = None,
            inbound_id: int | None = None, dedupe_key: str | None = None,
            now: datetime | None = None) -> Outbox:
    """Queue a mail; with a ``dedupe_key`` a second enqueue returns the first row instead."""
    if dedupe_key:
        existing = session.execute(select(Outbox).where(Outbox.dedupe_key == dedupe_key)).scalar_one_or_none()
        if existing is not None:
            return existing
    raw = mail.build().as_bytes()
    row = Outbox(message_id=mail.message_id.strip("<>"), kind=mail.kind, dedupe_key=dedupe_key,
                 case_id=case_id, inbound_id=inbound_id, recipient=mail.recipient,
                 sender=mail.sender, subject=clean_header(mail.subject, 250), template=mail.template,
                 raw=raw, status="queued", next_attempt_at=now or utcnow(),
                 created_at=now or utcnow())
    session.add(row)
    session.flush()
    return row


def automatic_mail_allowed(session: Session, recipient: str, *, now: datetime, window: timedelta,
                           sender_budget: int, global_budget: int) -> str | None:
    """Why an automatic mail to ``recipient`` must not go out now (None when it may)."""
    suppressed = session.get(Suppression, recipient.lower())
    if suppressed is not None and suppressed.until > now:
        return "suppressed-address"
    since = now - window
    recent = select(func.count(Outbox.id)).where(Outbox.created_at >= since)
    if session.execute(recent.where(Outbox.recipient == recipient)).scalar_one() >= sender_budget:
        return "sender-budget"
    if session.execute(recent).scalar_one() >= global_budget:
        return "global-budget"
    return None


def retry_delay(attempts: int, base: float) -> timedelta:
    return timedelta(seconds=min(base * (2 ** max(attempts - 1, 0)), 6 * 3600))


def send_due(session_factory: Any, transport: Transport, *, now: datetime, max_attempts: int,
             retry_base: float, limit: int = 200) -> dict[str, int]:
    """Deliver queued mail whose time has come. Returns counts of sent/retry/failed."""
    counts = {"sent": 0, "retry": 0, "failed": 0}
    with session_factory() as session:
        ids = list(session.execute(
            select(Outbox.id).where(Outbox.status == "queued", Outbox.next_attempt_at <= now)
            .order_by(Outbox.id).limit(limit)).scalars())
    if not ids:
        return counts
    try:
        transport.open()
    except TransportError as e:
        logger.warning("outbox: transport unavailable, %d mail(s) wait: %s", len(ids), e)
        with session_factory() as session, session.begin():
            for row in session.execute(select(Outbox).where(Outbox.id.in_(ids))).scalars():
                _failed_attempt(row, str(e), now, max_attempts, retry_base, counts)
        return counts
    try:
        for oid in ids:
            with session_factory() as session, session.begin():
                # The row lock keeps a second worker from sending the same mail meanwhile.
                row = session.execute(select(Outbox).where(Outbox.id == oid, Outbox.status == "queued")
                                      .with_for_update(skip_locked=True)).scalar_one_or_none()
                if row is None:
                    continue
                try:
                    transport.send(row.sender, [row.recipient], row.raw)
                except TransportError as e:
                    _failed_attempt(row, str(e), now, max_attempts, retry_base, counts,
                                    permanent=e.permanent)
                    if e.connection_lost:
                        break
                    continue
                row.status, row.sent_at, row.last_error = "sent", now, None
                row.attempts += 1
                counts["sent"] += 1
                logger.info("outbox: sent %s (%s) for case id %s", row.kind, row.message_id, row.case_id)
    finally:
        transport.close()
    return counts


def _failed_attempt(row: Outbox, error: str, now: datetime, max_attempts: int, retry_base: float,
                    counts: dict[str, int], permanent: bool = False) -> None:
    row.attempts += 1
    row.last_error = error[:2000]
    if row.attempts >= max_attempts or permanent:
        row.status = "failed"
        counts["failed"] += 1
        logger.error("outbox: giving up on %s after %d attempts: %s", row.message_id, row.attempts, error)
    else:
        row.next_attempt_at = now + retry_delay(row.attempts, retry_base)
        counts["retry"] += 1
        logger.warning("outbox: %s failed (attempt %d), retry at %s: %s", row.message_id,
                       row.attempts, row.next_attempt_at.isoformat(timespec="seconds"), error)
