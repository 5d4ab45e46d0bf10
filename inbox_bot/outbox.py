"""The outbox: render templates into mail, queue it in the database, deliver with retries.

A queued mail is rendered once and stored as bytes, so every retry carries the same
``Message-ID``. Nothing from the inbound mail reaches an outgoing header without
``clean_header()``; HTML templates are autoescaped.
"""
from __future__ import annotations

import logging
import queue
import re
import secrets
import threading
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
from typing import Any, Callable, Iterable

import jinja2
from sqlalchemy import bindparam, func, select, update
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
        decoded = _ENCODED_WORD.sub(_decode_word, value)
        if decoded == value:
            break
        value = decoded
    value = _CONTROL.sub(" ", value).replace("=?", "= ?")
    return " ".join(value.split())[:limit]


_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,40}\?[qQbB]\?[^?\s]*\?=")


def _decode_word(m: re.Match[str]) -> str:
    try:
        return str(make_header(decode_header(m.group(0))))
    except (ValueError, LookupError, UnicodeError, HeaderParseError):
        return m.group(0).replace("=?", "= ?")


def clean_msgid(value: str | None) -> str | None:
    if value and _MSGID_OK.match(value) and "<" not in value and ">" not in value:
        return value
    return None


@lru_cache(maxsize=1)
def templates_dir() -> Path:
    """Templates from the installed package, else from the checkout."""
    packaged = resources.files("inbox_bot") / "templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[1] / "templates"


@lru_cache(maxsize=4)
def environments(path: str) -> tuple[jinja2.Environment, jinja2.Environment]:
    loader = jinja2.FileSystemLoader(path)
    # Templates ship with the package and do not change under a running worker: no stat()
    # of the file on every render.
    text = jinja2.Environment(loader=loader, autoescape=False, undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, auto_reload=False)
    html = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                              auto_reload=False)
    return text, html


@lru_cache(maxsize=4)
def label_phrases(path: str) -> dict[str, dict[str, str]]:
    return tomllib.loads((Path(path) / "labels.toml").read_text(encoding="utf-8"))


@lru_cache(maxsize=256)
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


    def to_bytes(self) -> bytes:
        """The wire form. Plain text(+HTML) mail is written directly (a tenth of the cost of
        the email package's generator); anything with attachments or extra parts uses build().
        Every header value is ASCII: clean_header() output, RFC 2047 encoded when needed."""
        if type(self) is not OutgoingMail or self.attachments:
            return self.build().as_bytes()
        token = secrets.token_hex(20)     # one draw for the Message-ID and the boundary
        if not self.message_id:
            hint = re.sub(r"[^A-Za-z0-9.-]", "", self.id_hint)[:40] or "inbox-bot"
            self.message_id = f"<{hint}.{token[:16]}@{self.domain}>"
        head = [
            ("From", _address_header(self.sender_name, self.sender)),
            ("To", _address_header(self.recipient_name, self.recipient)),
            ("Subject", _encoded(clean_header(self.subject, 250))),
            ("Date", format_datetime(utcnow())),
            ("Message-ID", self.message_id),
        ]
        parent = clean_msgid(self.in_reply_to)
        if parent:
            head.append(("In-Reply-To", f"<{parent}>"))
        refs = [r for r in (clean_msgid(r) for r in self.references) if r]
        if parent and parent not in refs:
            refs.append(parent)
        if refs:
            head.append(("References", "\r\n ".join(f"<{r}>" for r in refs[-MAX_REFERENCES:])))
        if self.auto:
            head += [("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All"),
                     ("X-Loop", self.sender)]
        head += [(name, _encoded(clean_header(value, 900))) for name, value in self.extra_headers.items()]
        head.append(("MIME-Version", "1.0"))
        if self.html:
            boundary = "=_" + token[16:]
            head.append(("Content-Type", f'multipart/alternative; boundary="{boundary}"'))
            body = (f"--{boundary}\r\n{_text_part(self.text, 'plain')}\r\n"
                    f"--{boundary}\r\n{_text_part(self.html, 'html')}\r\n--{boundary}--\r\n")
        else:
            part = _text_part(self.text, "plain")
            part_head, _, body = part.partition("\r\n\r\n")
            head += [tuple(line.split(": ", 1)) for line in part_head.split("\r\n")]  # type: ignore[misc]
        lines = "".join(f"{name}: {value}\r\n" for name, value in head)
        return (lines + "\r\n" + body).encode("ascii")


def _encoded(value: str) -> str:
    """An RFC 2047 encoded word for non-ASCII header text (value has no CR/LF)."""
    if value.isascii():
        return value
    from email.header import Header
    return Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


def _address_header(name: str, address: str) -> str:
    from email.utils import formataddr
    return formataddr((clean_header(name, 80), address), charset="utf-8")


_NON_ASCII = bytes(range(128, 256))


def _text_part(text: str, subtype: str) -> str:
    """Headers and body of a UTF-8 text part: as it is (7bit) when it is ASCII in lines
    within the 998 characters RFC 5322 allows, quoted-printable for mostly-Latin text, base64
    (a third the size) for Japanese."""
    import base64
    import quopri
    text = text.replace("\r\n", "\n")
    if text.isascii() and "\r" not in text and max(map(len, text.split("\n"))) <= 998:
        return (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
                f"Content-Transfer-Encoding: 7bit\r\n\r\n{text.replace(chr(10), chr(13) + chr(10))}")
    data = text.replace("\n", "\r\n").encode("utf-8")
    if len(data.translate(None, _NON_ASCII)) > 0.7 * max(len(data), 1):
        cte = "quoted-printable"
        encoded = quopri.encodestring(data).decode("ascii").replace("\r\n", "\n").replace("\n", "\r\n")
    else:
        cte = "base64"
        b64 = base64.b64encode(data).decode("ascii")
        encoded = "\r\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    return (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {cte}\r\n\r\n{encoded}")


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


def outbox_values(mail: OutgoingMail, *, case_id: int | None = None, inbound_id: int | None = None,
                  dedupe_key: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The columns of a queued mail: rendered to bytes now, so every retry is the same mail."""
    raw = mail.to_bytes()
    now = now or utcnow()
    return {"message_id": mail.message_id.strip("<>"), "kind": mail.kind, "dedupe_key": dedupe_key,
            "case_id": case_id, "inbound_id": inbound_id, "recipient": mail.recipient,
            "sender": mail.sender, "subject": clean_header(mail.subject, 250),
            "template": mail.template, "raw": raw, "status": "queued", "attempts": 0,
            "next_attempt_at": now, "created_at": now, "last_error": None, "sent_at": None}


def enqueue(session: Session, mail: OutgoingMail, *, case_id: int | None = None,
            inbound_id: int | None = None, dedupe_key: str | None = None,
            now: datetime | None = None, case: Any = None, fresh: bool = False) -> Outbox:
    """Queue a mail; with a ``dedupe_key`` a second enqueue returns the first row instead.

    ``fresh``: the key cannot exist yet (e.g. the first ack of a case opened in this
    transaction); the unique constraint still guards it.
    """
    if dedupe_key and not fresh:
        existing = session.execute(select(Outbox).where(Outbox.dedupe_key == dedupe_key)).scalar_one_or_none()
        if existing is not None:
            return existing
    row = Outbox(**outbox_values(mail, case_id=case_id, inbound_id=inbound_id,
                                 dedupe_key=dedupe_key, now=now))
    if case is not None:
        row.case = case
    session.add(row)
    if not fresh:
        session.flush()          # rare paths: give the caller the row id at once
    return row


def automatic_mail_allowed(session: Session, recipient: str, *, now: datetime, window: timedelta,
                           sender_budget: int, global_budget: int) -> str | None:
    """Why an automatic mail to ``recipient`` must not go out now (None when it may)."""
    return Budget(session, now=now, window=window, sender_budget=sender_budget,
                  global_budget=global_budget).check(recipient)


class Budget:
    """Automatic-mail budgets for one transaction: counted once, then kept in memory."""

    def __init__(self, session: Session, *, now: datetime, window: timedelta, sender_budget: int,
                 global_budget: int) -> None:
        self.session, self.now, self.since = session, now, now - window
        self.sender_budget, self.global_budget = sender_budget, global_budget
        self._global: int | None = None
        self._per_recipient: dict[str, int] = {}
        self._suppressed: dict[str, datetime] | None = None

    def prefetch(self, recipients: Iterable[str]) -> None:
        """Load suppressions and per-recipient counts for a batch in two queries."""
        wanted = sorted({r.lower() for r in recipients if r})
        self._suppressed = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            with self.session.no_autoflush:
                for row in self.session.execute(select(Suppression).where(Suppression.address.in_(chunk))).scalars():
                    self._suppressed[row.address] = row.until
                counts = dict(self.session.execute(
                    select(Outbox.recipient, func.count(Outbox.id))
                    .where(Outbox.created_at >= self.since, Outbox.recipient.in_(chunk))
                    .group_by(Outbox.recipient)).all())
            for r in chunk:
                self._per_recipient.setdefault(r, counts.get(r, 0))

    def _count(self, recipient: str | None) -> int:
        q = select(func.count(Outbox.id)).where(Outbox.created_at >= self.since)
        if recipient is not None:
            q = q.where(Outbox.recipient == recipient)
        with self.session.no_autoflush:
            return self.session.execute(q).scalar_one()

    def check(self, recipient: str) -> str | None:
        key = recipient.lower()
        if self._suppressed is not None and key in self._per_recipient:
            until = self._suppressed.get(key)          # prefetched for this batch
        else:
            with self.session.no_autoflush:
                row = self.session.get(Suppression, key)
            until = row.until if row is not None else None
        if until is not None and until > self.now:
            return "suppressed-address"
        if key not in self._per_recipient:
            self._per_recipient[key] = self._count(recipient)
        if self._per_recipient[key] >= self.sender_budget:
            return "sender-budget"
        if self._global is None:
            self._global = self._count(None)
        if self._global >= self.global_budget:
            return "global-budget"
        return None

    def spend(self, recipient: str) -> None:
        key = recipient.lower()
        self._per_recipient[key] = self._per_recipient.get(key, 0) + 1
        if self._global is not None:
            self._global += 1


def retry_delay(attempts: int, base: float) -> timedelta:
    return timedelta(seconds=min(base * (2 ** max(attempts - 1, 0)), 6 * 3600))


def send_due(session_factory: Any, transport: Transport, *, now: datetime, max_attempts: int,
             retry_base: float, limit: int = 500, first_attempts_only: bool = False) -> dict[str, int]:
    """Deliver all queued mail whose time has come, ``limit`` at a time. Returns counts.

    ``first_attempts_only``: leave retries to the regular send (used by the sender that runs
    beside a long intake pass)."""
    counts = {"sent": 0, "retry": 0, "failed": 0}
    after = 0
    while True:
        with session_factory() as session:
            q = select(Outbox.id).where(Outbox.status == "queued", Outbox.next_attempt_at <= now,
                                        Outbox.id > after)
            if first_attempts_only:
                q = q.where(Outbox.attempts == 0)
            ids = list(session.execute(q.order_by(Outbox.id).limit(limit)).scalars())
        if not ids:
            return counts
        after = ids[-1]
        if not _send_batch(session_factory, transport, ids, now=now, max_attempts=max_attempts,
                           retry_base=retry_base, counts=counts):
            return counts              # the transport is down: the rest waits for its retry


def send_first_attempts(session_factory: Any, transports: list[Transport], *, stop: Any,
                        now: Callable[[], datetime],
                        report: Callable[[list[tuple[int, datetime]]], None], chunk: int = 20) -> None:
    """Send the first attempt of each queued mail, once, until ``stop`` is set and none is
    left; report ``(row id, time)`` of each mail the server accepted, ``chunk`` at a time.

    One thread per transport, each with its own connection: a mail costs the sender little
    CPU but four round trips, so several connections keep the server busy.
    Writes nothing: the caller records what was reported (``record_sent``). A failure ends
    nothing but that mail's first attempt: the mail stays queued for ``send_due``, which owns
    retries. A lost connection ends the loop."""
    rows: queue.Queue[Any] = queue.Queue(maxsize=4 * 200)
    report_lock = threading.Lock()
    lost = threading.Event()

    def deliver(transport: Transport) -> None:
        opened = False
        sent: list[tuple[int, datetime]] = []
        try:
            while (row := rows.get()) is not None:
                if lost.is_set():
                    continue
                try:
                    if not opened:
                        transport.open()
                        opened = True
                    transport.send(row.sender, [row.recipient], row.raw)
                except TransportError as e:
                    logger.warning("outbox: first attempt of mail %d failed: %s", row.id, e)
                    if e.connection_lost:
                        lost.set()
                    continue
                sent.append((row.id, now()))
                if len(sent) >= chunk:
                    with report_lock:
                        report(sent)
                    sent = []
        finally:
            if sent:
                with report_lock:
                    report(sent)
            if opened:
                transport.close()

    threads = [threading.Thread(target=deliver, args=(t,), name=f"outbox-{i}", daemon=True)
               for i, t in enumerate(transports)]
    for thread in threads:
        thread.start()
    after = 0
    try:
        while not lost.is_set():
            stopping = stop.is_set()
            with session_factory() as session:
                batch = session.execute(
                    select(Outbox.id, Outbox.sender, Outbox.recipient, Outbox.raw)
                    .where(Outbox.status == "queued", Outbox.attempts == 0,
                           Outbox.next_attempt_at <= now(), Outbox.id > after)
                    .order_by(Outbox.id).limit(200)).all()
            if not batch:
                if stopping:
                    break
                stop.wait(0.1)
                continue
            for row in batch:
                rows.put(row)
            after = batch[-1].id
    finally:
        for _ in threads:
            rows.put(None)
        for thread in threads:
            thread.join()


def record_sent(session: Session, sent: list[tuple[int, datetime]]) -> None:
    """Mark mails the server accepted (as reported by ``send_first_attempts``) as sent."""
    if not sent:
        return
    table = Outbox.__table__
    session.connection().execute(
        update(table).where(table.c.id == bindparam("oid"), table.c.status == "queued")
        .values(status="sent", sent_at=bindparam("at"), attempts=table.c.attempts + 1, last_error=None),
        [{"oid": oid, "at": at} for oid, at in sent])
    logger.info("outbox: %d mail(s) sent", len(sent))


def _send_batch(session_factory: Any, transport: Transport, ids: list[int], *, now: datetime,
                max_attempts: int, retry_base: float, counts: dict[str, int]) -> bool:
    """Send these rows; False when the connection is gone and sending should stop."""
    try:
        transport.open()
    except TransportError as e:
        logger.warning("outbox: transport unavailable, %d mail(s) wait: %s", len(ids), e)
        with session_factory() as session, session.begin():
            for row in session.execute(select(Outbox).where(Outbox.id.in_(ids))).scalars():
                _failed_attempt(row, str(e), now, max_attempts, retry_base, counts)
        return False
    try:
        for oid in ids:
            # Core, one short transaction per mail: the row lock keeps a second worker from
            # sending the same mail, and "sent" is recorded as soon as the server took it.
            with session_factory() as session, session.begin():
                conn = session.connection()
                row = conn.execute(select(Outbox.sender, Outbox.recipient, Outbox.raw, Outbox.kind,
                                          Outbox.message_id, Outbox.attempts)
                                   .where(Outbox.id == oid, Outbox.status == "queued")
                                   .with_for_update(skip_locked=True)).first()
                if row is None:
                    continue
                try:
                    transport.send(row.sender, [row.recipient], row.raw)
                except TransportError as e:
                    failed = session.get(Outbox, oid)
                    _failed_attempt(failed, str(e), now, max_attempts, retry_base, counts,
                                    permanent=e.permanent)
                    if e.connection_lost:
                        return False
                    continue
                conn.execute(update(Outbox).where(Outbox.id == oid).values(
                    status="sent", sent_at=now, last_error=None, attempts=row.attempts + 1))
                counts["sent"] += 1
                logger.debug("outbox: sent %s <%s>", row.kind, row.message_id)
    finally:
        transport.close()
    if counts["sent"]:
        logger.info("outbox: %d mail(s) sent", counts["sent"])
    return True


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
