"""The daily staff digest: every open case by urgency, each with signed reply links.

One mail per staff address and local day, in the staff member's language (en/ja). Cases are
grouped overdue / due within 7 days / later and ordered by due date. Each case carries mailto
links to a reply address signed for that staff member alone (``addresses.make_token``): a
"reply to requester" link and one-click command mails (``#close``, ``#extend`` ...) that the
inbound staff-mail handling executes. The text part lists the same address and commands, so
it works on its own.

Personal data is kept to what staff need to act: case id, labels, dates, state, owner and a
short excerpt of the inquiry (``staff.excerpt = false`` switches it off). Never the requester's
address or name.

A digest is queued with the dedupe key ``digest:<local date>:<staff>``: at most once a day per
staff member, also after a restart and with several workers (the key is unique in the outbox).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from . import addresses, deadlines, outbox
from .cases import OPEN_STATES
from .config import Config
from .parse import parse
from .store import Case, InboundMessage, Outbox, Store

logger = logging.getLogger(__name__)

TEMPLATE = "staff_digest"
GROUPS = ("overdue", "due_soon", "later")
DUE_SOON_DAYS = 7
EXCERPT_CHARS = 160
# The commands a digest offers, in display order. The lead's staff-mail handling parses them.
COMMANDS = ("note", "close", "extend", "pause-for-identity", "resume", "verified", "labels",
            "assign", "reject")


@dataclass(frozen=True)
class CommandLink:
    command: str          # "close"
    body: str             # the prefilled body, e.g. "#close "
    href: str             # mailto: URL


@dataclass(frozen=True)
class DigestCase:
    ref: str
    labels: tuple[str, ...]
    status: str
    due_date: date
    days_left: int                   # calendar days; negative when overdue
    working_days_left: int           # on the controller calendar; negative when overdue
    flags: tuple[str, ...]           # codes; the templates word them
    owner: str | None
    excerpt: str                     # "" when switched off or unavailable
    reply_address: str
    reply_subject: str
    reply_href: str
    commands: tuple[CommandLink, ...]


@dataclass(frozen=True)
class Digest:
    staff: str
    language: str
    today: date
    groups: dict[str, list[DigestCase]]   # GROUPS -> cases ordered by due date

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.groups.values())

    def count(self, group: str) -> int:
        return len(self.groups[group])


# -- building ---------------------------------------------------------------------------------

def group_of(days_left: int) -> str:
    if days_left < 0:
        return "overdue"
    if days_left <= DUE_SOON_DAYS:
        return "due_soon"
    return "later"


def case_flags(case: Case) -> tuple[str, ...]:
    flags: list[str] = []
    if "gdpr_request" in case.labels:
        flags.append("gdpr")                       # deadlines.md §8: shown in red until closed
    if "complaint" in case.labels:
        flags.append("complaint")
    if case.needs_review:
        flags.append("needs_review")
    if case.close_call:
        flags.append("close_call")
    if case.status == "awaiting_identity":
        flags.append("awaiting_identity")
    if case.status == "extended" or case.extension_reason:
        flags.append("extended")
    return tuple(flags)


def mailto(address: str, subject: str, body: str = "") -> str:
    """RFC 6068 mailto URL; every header value percent-encoded (spaces as %20, not +)."""
    url = f"mailto:{address}?subject={quote(subject, safe='')}"
    if body:
        url += f"&body={quote(body, safe='')}"
    return url


def command_bodies(case: Case, staff: str, today: date) -> list[tuple[str, str]]:
    """(command, prefilled body) for the commands that make sense in the case's state.

    Reasons are never prefilled with a placeholder, which would be acted on if sent unedited:
    staff type their own, and the lifecycle refuses an extension, refusal or pause without one.
    """
    awaiting = case.status == "awaiting_identity"
    extendable = (case.status != "extended" and case.extended_due is not None
                  and today <= (case.first_due_date or case.due_date))
    bodies = {
        "note": "#note ",
        "close": "#close ",
        "extend": "#extend " if extendable else None,
        "pause-for-identity": None if awaiting else "#pause-for-identity ",
        "resume": "#resume" if awaiting else None,
        "verified": "#verified" if awaiting else None,
        "labels": "#labels " + ",".join(case.labels),
        "assign": f"#assign {staff}",
        "reject": "#reject ",
    }
    return [(c, bodies[c]) for c in COMMANDS if bodies[c] is not None]   # type: ignore[misc]


def reply_subject(case: Case) -> str:
    return f"Re: [{case.ref}]"


def inquiry_excerpt(session: Session, case_id: int, limit: int = EXCERPT_CHARS) -> str:
    """The start of the new text of the mail that opened the case (quotes and signature cut)."""
    first = select(InboundMessage.raw).where(InboundMessage.case_id == case_id)
    raw = session.execute(first.where(InboundMessage.disposition == "case_opened")
                          .order_by(InboundMessage.received_at, InboundMessage.id).limit(1)).scalar()
    if raw is None:
        raw = session.execute(first.order_by(InboundMessage.received_at, InboundMessage.id)
                              .limit(1)).scalar()
    if raw is None:
        return ""
    msg = parse(bytes(raw))
    text = " ".join((msg.new_text or msg.text).split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def digest_case(session: Session, cfg: Config, calendar: deadlines.Calendar, case: Case,
                staff: str, today: date) -> DigestCase:
    token = addresses.make_token(cfg.token_secret(), case.id, staff, today)
    address = addresses.reply_address(cfg.bot.address, token)
    subject = reply_subject(case)
    commands = tuple(CommandLink(c, body, mailto(address, subject, body))
                     for c, body in command_bodies(case, staff, today))
    return DigestCase(
        ref=case.ref, labels=tuple(case.labels), status=case.status, due_date=case.due_date,
        days_left=(case.due_date - today).days,
        working_days_left=deadlines.working_days_between(today, case.due_date, calendar),
        flags=case_flags(case), owner=case.owner,
        excerpt=inquiry_excerpt(session, case.id) if cfg.staff.excerpt else "",
        reply_address=address, reply_subject=subject, reply_href=mailto(address, subject),
        commands=commands)


def collect_digest(session: Session, cfg: Config, policy: deadlines.Policy, staff: str,
                   now: datetime) -> Digest:
    """The open cases, grouped and ordered, with links signed for ``staff``."""
    today = now.astimezone(cfg.tz).date()
    calendar = policy.controller_holidays()
    groups: dict[str, list[DigestCase]] = {g: [] for g in GROUPS}
    open_cases = session.execute(select(Case).where(Case.status.in_(OPEN_STATES))
                                 .order_by(Case.due_date, Case.received_at, Case.id)).scalars()
    for case in open_cases:
        item = digest_case(session, cfg, calendar, case, staff, today)
        groups[group_of(item.days_left)].append(item)
    language = outbox.template_language(TEMPLATE, cfg.staff_language(staff))
    return Digest(staff=staff, language=language, today=today, groups=groups)


def digest_subject(digest: Digest) -> str:
    counts = [digest.count(g) for g in GROUPS]
    if digest.language == "ja":
        return (f"日次ダイジェスト {digest.today.isoformat()}: 期限超過 {counts[0]} 件・"
                f"{DUE_SOON_DAYS}日以内 {counts[1]} 件・それ以降 {counts[2]} 件")
    return (f"Daily digest {digest.today.isoformat()}: {counts[0]} overdue, "
            f"{counts[1]} due within {DUE_SOON_DAYS} days, {counts[2]} later")


def build_digest(session: Session, cfg: Config, policy: deadlines.Policy, staff: str,
                 now: datetime) -> outbox.OutgoingMail:
    """The digest mail for one staff member (HTML and text, in their language)."""
    digest = collect_digest(session, cfg, policy, staff, now)
    subject = digest_subject(digest)
    context = {
        "subject": subject, "organisation": cfg.bot.organisation, "bot_address": cfg.bot.address,
        "staff": staff, "today": digest.today, "groups": [(g, digest.groups[g]) for g in GROUPS],
        "counts": {g: digest.count(g) for g in GROUPS}, "total": digest.total,
        "ttl_days": cfg.staff.token_ttl_days, "due_soon_days": DUE_SOON_DAYS,
    }
    text, html = outbox.render(TEMPLATE, digest.language, context)
    return outbox.OutgoingMail(kind="digest", sender=cfg.bot.address, sender_name="inbox-bot",
                               recipient=staff, subject=subject, text=text, html=html,
                               domain=cfg.domain, id_hint=f"digest-{digest.today.isoformat()}",
                               template=f"{TEMPLATE}.{digest.language}")


# -- queuing once -----------------------------------------------------------------------------

def digest_dedupe_key(day: date, staff: str) -> str:
    return f"digest:{day.isoformat()}:{staff.lower()}"


def already_queued(session: Session, dedupe_key: str) -> bool:
    return session.execute(select(Outbox.id).where(Outbox.dedupe_key == dedupe_key)).first() is not None


def enqueue_once(session: Session, mail: outbox.OutgoingMail, dedupe_key: str, now: datetime) -> bool:
    """Queue ``mail`` unless a mail with this key exists; False when another worker won."""
    if already_queued(session, dedupe_key):
        return False
    nested = session.begin_nested()
    try:
        row = outbox.enqueue(session, mail, dedupe_key=dedupe_key, now=now)
        nested.commit()
    except IntegrityError:          # a concurrent worker inserted the same key first
        nested.rollback()
        return False
    except OperationalError as e:
        nested.rollback()
        if not _sqlite_busy(session, e):
            raise
        # SQLite: another writer committed after our snapshot was taken (SQLITE_BUSY_SNAPSHOT);
        # that writer is queuing this very mail, and a later run would find the key anyway.
        logger.warning("another worker was writing while %s was queued; left to it", dedupe_key)
        return False
    # enqueue hands back the existing row when the key committed since our check
    return row.message_id == mail.message_id.strip("<>")


def _sqlite_busy(session: Session, error: OperationalError) -> bool:
    return session.get_bind().dialect.name == "sqlite" and "database is locked" in str(error.orig)


def send_digests(store: Store, cfg: Config, policy: deadlines.Policy, now: datetime) -> int:
    """Queue today's digest for every staff address that has none yet; returns how many."""
    today = now.astimezone(cfg.tz).date()
    queued = 0
    for staff in cfg.staff.addresses:
        key = digest_dedupe_key(today, staff)
        with store.session() as s, s.begin():
            if already_queued(s, key):      # cheap check first: no rendering on a rerun
                continue
            if enqueue_once(s, build_digest(s, cfg, policy, staff, now), key, now):
                queued += 1
    if queued:
        logger.info("digest: queued %d digest(s) for %s", queued, today.isoformat())
    return queued


def digest_due(cfg: Config, now: datetime) -> bool:
    """Whether today's digest time has come (a catch-up run after downtime may send it late)."""
    local = now.astimezone(cfg.tz)
    hour, minute = (int(x) for x in cfg.staff.digest_time.split(":"))
    return (local.hour, local.minute) >= (hour, minute)
