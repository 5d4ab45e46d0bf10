"""Reminders to staff before a due date, escalations to the supervisor when it is missed.

Run as a scheduled job. Each mail is queued with a dedupe key (case, date, what), so a restart
or a second worker never sends it twice; after downtime only the latest reminder still due is
sent, not a burst of stale ones.
"""
from __future__ import annotations

import hashlib
import re
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import deadlines, outbox
from .cases import OPEN_STATES, record_event
from .config import Config
from .store import Case, Outbox, Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    case_id: int
    kind: str            # "reminder" | "escalation"
    when: date
    what: str
    recipients: tuple[str, ...]


def due_notices(cfg: Config, policy: deadlines.Policy, case: Case, today: date) -> list[Notice]:
    """The reminder and escalation due for ``case`` today (at most one of each)."""
    paused = case.status == "awaiting_identity" and policy.clock_mode != deadlines.CLOCK_NONE
    if case.status not in OPEN_STATES or paused:
        return []
    dues = deadlines.compute_due(case.received_at, list(case.labels), policy)
    extended = case.status == "extended"
    if extended:
        # Aim the schedule at the case's own (extended) due date.
        dues = _with_due(dues, case.due_date)
    staff = (case.owner,) if case.owner else tuple(cfg.staff.addresses)
    out: list[Notice] = []
    reminders = [r for r in deadlines.reminder_dates(dues, case.labels, policy, extended=extended)
                 if r[0] <= today and r[0] <= case.due_date]
    if reminders and staff:
        when, what = reminders[-1]
        out.append(Notice(case.id, "reminder", when, what, staff))
    escalations = [e for e in deadlines.escalation_dates(dues, case.labels, policy, extended=extended)
                   if e[0] <= today]
    overdue = today > case.due_date
    supervisors = tuple(a for a in (cfg.staff.supervisor,) if a)
    if overdue and not escalations:
        escalations = [(case.due_date, f"overdue since {case.due_date.isoformat()}")]
    if escalations and supervisors:
        when, what = escalations[-1]
        to = supervisors
        if "gdpr_request" in case.labels and cfg.staff.dpo and overdue:
            to = supervisors + (cfg.staff.dpo,)
        out.append(Notice(case.id, "escalation", when, what, to))
    return out


def plan(case: Case, policy: deadlines.Policy, dues: deadlines.DueDates | None = None) -> list[date]:
    """Every date on which the case may need a reminder or an escalation."""
    if dues is None:
        dues = deadlines.compute_due(case.received_at, list(case.labels), policy)
    extended = case.status == "extended"
    if extended:
        dues = _with_due(dues, case.due_date)
    dates = {d for d, _ in deadlines.reminder_dates(dues, case.labels, policy, extended=extended)}
    dates |= {d for d, _ in deadlines.escalation_dates(dues, case.labels, policy, extended=extended)}
    dates.add(case.due_date + timedelta(days=1))        # overdue
    return sorted(dates)


def schedule(case: Case, policy: deadlines.Policy, *, after: date | None = None,
             dues: deadlines.DueDates | None = None) -> None:
    """Set the case's next notice date: the first planned date after ``after``."""
    after = after or (case.receipt_date - timedelta(days=1))
    case.next_notice_on = next((d for d in plan(case, policy, dues) if d > after), None)


def _with_due(dues: deadlines.DueDates, due: date) -> deadlines.DueDates:
    from dataclasses import replace
    return replace(dues, due=due)


def send_reminders(store: Store, cfg: Config, policy: deadlines.Policy, now: datetime) -> dict[str, int]:
    today = now.astimezone(cfg.tz).date()
    counts = {"reminder": 0, "escalation": 0}
    with store.read_session() as s:
        # Only cases whose next planned notice has come: not every open case every run.
        ids = list(s.execute(select(Case.id).where(Case.status.in_(OPEN_STATES),
                                                   Case.next_notice_on <= today)).scalars())
    for case_id in ids:
        with store.session() as s, s.begin():
            case = s.get(Case, case_id, with_for_update=True)
            if case is None:
                continue
            for notice in due_notices(cfg, policy, case, today):
                for rcpt in notice.recipients:
                    if _queue_notice(s, cfg, case, notice, rcpt, now):
                        counts[notice.kind] += 1
            paused = case.status == "awaiting_identity" and policy.clock_mode != deadlines.CLOCK_NONE
            if not paused:
                schedule(case, policy, after=today)
    if any(counts.values()):
        logger.info("reminders: %s", counts)
    return counts


def _queue_notice(s: Session, cfg: Config, case: Case, notice: Notice, rcpt: str, now: datetime) -> bool:
    digest = hashlib.sha1(notice.what.encode()).hexdigest()[:10]
    key = f"{notice.kind}:{case.id}:{notice.when.isoformat()}:{digest}:{rcpt}"
    if s.execute(select(Outbox.id).where(Outbox.dedupe_key == key)).first():
        return False
    lang = outbox.template_language(f"staff_{notice.kind}", cfg.staff_language(rcpt))
    days_left = (case.due_date - now.astimezone(cfg.tz).date()).days
    m = re.search(r"T[+-]\d+ BD", notice.what)
    step = m.group(0) if m else ("overdue" if days_left < 0 else "")
    subject = {"reminder": f"[{case.ref}] reminder {step}: due {case.due_date.isoformat()}",
               "escalation": f"[{case.ref}] OVERDUE or at risk ({step}): due {case.due_date.isoformat()}"}[notice.kind]
    if lang == "ja":
        subject = {"reminder": f"[{case.ref}] リマインダー {step}: 期限 {case.due_date.isoformat()}",
                   "escalation": f"[{case.ref}] 期限超過・要対応 ({step}): 期限 {case.due_date.isoformat()}"}[notice.kind]
    ctx = {"case_ref": case.ref, "labels": list(case.labels), "status": case.status,
           "due_date": case.due_date.isoformat(), "days_left": days_left, "what": notice.what,
           "receipt_date": case.receipt_date.isoformat(), "organisation": cfg.bot.organisation,
           "bot_address": cfg.bot.address, "subject": subject, "owner": case.owner or ""}
    text, html = outbox.render(f"staff_{notice.kind}", lang, ctx)
    mail = outbox.OutgoingMail(kind=notice.kind, sender=cfg.bot.address, sender_name="inbox-bot",
                               recipient=rcpt, subject=subject, text=text, html=html, domain=cfg.domain,
                               id_hint=case.ref, template=f"staff_{notice.kind}.{lang}")
    nested = s.begin_nested()
    try:
        row = outbox.enqueue(s, mail, case_id=case.id, dedupe_key=key, now=now)
        nested.commit()
    except IntegrityError:          # another worker queued it first
        nested.rollback()
        return False
    record_event(s, case, notice.kind, reason=notice.what, outbox=row, new={"to": rcpt})
    return True
