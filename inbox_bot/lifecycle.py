"""The case lifecycle: explicit states, allowed transitions and the staff actions on a case.

Every action either succeeds (recording events with who, when, why, old and new values, and
queuing any notice the requester must get) or raises ``LifecycleRefused`` with a reason staff
can read. Actions are shared by the CLI and by staff command mails.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import cases as case_ops
from . import deadlines, outbox, reminders
from .config import Config
from .store import Case, LabelCorrection, Outbox

logger = logging.getLogger(__name__)

STATES = ("new", "acknowledged", "awaiting_identity", "in_progress", "extended", "answered",
          "closed", "rejected")
TRANSITIONS: dict[str, frozenset[str]] = {
    "new": frozenset({"acknowledged", "awaiting_identity", "in_progress", "extended", "answered",
                      "closed", "rejected"}),
    "acknowledged": frozenset({"awaiting_identity", "in_progress", "extended", "answered", "closed",
                               "rejected"}),
    "awaiting_identity": frozenset({"in_progress", "extended", "closed", "rejected"}),
    "in_progress": frozenset({"awaiting_identity", "extended", "answered", "closed", "rejected"}),
    "extended": frozenset({"awaiting_identity", "in_progress", "answered", "closed", "rejected"}),
    "answered": frozenset({"in_progress", "closed"}),
    "closed": frozenset({"in_progress"}),
    "rejected": frozenset({"in_progress"}),
}
LABELS = ("disclosure", "revision", "deletion", "gdpr_request", "complaint", "other")


class LifecycleRefused(Exception):
    """The action is not allowed; the message says why, for staff."""


@dataclass(frozen=True)
class ActionResult:
    case_ref: str
    action: str
    message: str
    changes: dict[str, Any]


def check_transition(case: Case, new: str) -> None:
    if new not in TRANSITIONS.get(case.status, frozenset()):
        raise LifecycleRefused(f"{case.ref} is {case.status}; it cannot become {new}")


def transition(session: Session, case: Case, new: str, *, actor: str, reason: str) -> None:
    check_transition(case, new)
    case_ops.set_status(session, case, new, actor=actor, reason=reason)


def _today(cfg: Config, now: datetime) -> date:
    return now.astimezone(cfg.tz).date()


def _identity(case: Case) -> deadlines.IdentityPause | None:
    if case.identity_requested_on is None:
        return None
    return deadlines.IdentityPause(requested_on=case.identity_requested_on,
                                   received_on=case.identity_received_on,
                                   reason=case.identity_reason or "",
                                   purpose=case.identity_purpose or "identity")


def recompute(session: Session, case: Case, policy: deadlines.Policy, *, actor: str,
              reason: str) -> dict[str, Any]:
    """Recompute every date from the original receipt (never from 'now')."""
    dues = deadlines.compute_due(case.received_at, list(case.labels), policy, identity=_identity(case))
    old = {"due_date": case.due_date, "internal_target": case.internal_target,
           "extended_due": case.extended_due}
    extended = case.status == "extended" and case.extended_due is not None
    case_ops.apply_dates(case, dues)
    if extended and dues.extended_due is not None:
        case.due_date = dues.extended_due         # an extension, once granted, stays granted
    reminders.schedule(case, policy)
    new = {"due_date": case.due_date, "internal_target": case.internal_target,
           "extended_due": case.extended_due}
    if new != old:
        case_ops.record_event(session, case, "dates", actor=actor, reason=reason, old=old, new=new)
    return new


def _notice(session: Session, cfg: Config, case: Case, template: str, kind: str,
            context: dict[str, Any], now: datetime, dedupe: str) -> Outbox:
    """A mail to the requester, threaded into their conversation."""
    lang = outbox.template_language(template, case.language)
    subject_base = {"extension_notice": "Extension", "refusal_notice": "Decision"}.get(template, "Update")
    subject = f"Re: {outbox.clean_header(case.subject, 150)} [{case.ref}]" if case.subject \
        else f"{subject_base} [{case.ref}]"
    ctx = {"case_ref": case.ref, "organisation": cfg.bot.organisation, "bot_address": cfg.bot.address,
           "requester_name": outbox.clean_header(case.requester_name, 80), "subject": subject,
           "receipt_date": outbox.format_date(case.receipt_date, lang), **context}
    text, html = outbox.render(template, lang, ctx)
    refs = thread_ids(session, case)
    mail = outbox.OutgoingMail(kind=kind, sender=cfg.bot.address, sender_name=f"{cfg.bot.organisation} Privacy",
                               recipient=case.requester, subject=subject, text=text, html=html,
                               domain=cfg.domain, id_hint=case.ref,
                               in_reply_to=refs[-1] if refs else case.thread_message_id,
                               references=refs, template=f"{template}.{lang}", auto=False)
    row = outbox.enqueue(session, mail, case_id=case.id, dedupe_key=dedupe, now=now)
    case_ops.remember_message_id(session, case, row.message_id, "out")
    return row


def thread_ids(session: Session, case: Case) -> list[str]:
    """The requester's conversation: their inquiry, then what we sent, oldest first."""
    ids = [case.thread_message_id] if case.thread_message_id else []
    for mid in session.execute(select(Outbox.message_id).where(
            Outbox.case_id == case.id, Outbox.recipient == case.requester).order_by(Outbox.id)).scalars():
        ids.append(mid)
    return ids[-20:]


# -- actions ----------------------------------------------------------------------------------

def extend(session: Session, cfg: Config, policy: deadlines.Policy, case: Case, *, actor: str,
           reason: str, now: datetime) -> ActionResult:
    """Extend the due date (GDPR Art. 12(3): only with reasons, notified before the first due)."""
    if not reason.strip():
        raise LifecycleRefused("an extension needs a reason (complexity or number of requests)")
    if case.status == "extended":
        raise LifecycleRefused(f"{case.ref} is already extended to {case.due_date.isoformat()}")
    if case.status in ("rejected", "closed", "answered"):
        raise LifecycleRefused(f"{case.ref} is {case.status}; there is nothing to extend")
    first_due = case.first_due_date or case.due_date
    today = _today(cfg, now)
    if today > first_due:
        raise LifecycleRefused(
            f"refused: the due date {first_due.isoformat()} of {case.ref} has passed; an extension "
            "must be notified to the requester on or before the first due date (GDPR Art. 12(3))")
    if case.extended_due is None:
        raise LifecycleRefused(f"no extension is possible for {case.ref} (labels: {', '.join(case.labels)})")
    check_transition(case, "extended")
    old_due = case.due_date
    case.due_date = case.extended_due
    case.extension_reason = reason.strip()[:2000]
    lang = outbox.template_language("extension_notice", case.language)
    row = _notice(session, cfg, case, "extension_notice", "extension",
                  {"reason": case.extension_reason, "old_due": outbox.format_date(old_due, lang),
                   "new_due": outbox.format_date(case.due_date, lang),
                   "gdpr": "gdpr_request" in case.labels}, now, f"extension:{case.id}")
    case_ops.record_event(session, case, "extended", actor=actor, reason=case.extension_reason,
                          old={"due_date": old_due}, new={"due_date": case.due_date}, outbox=row)
    case_ops.set_status(session, case, "extended", actor=actor, reason="extension notified")
    reminders.schedule(case, policy, after=today - timedelta(days=1))
    return ActionResult(case.ref, "extend", f"{case.ref} extended: due {old_due.isoformat()} -> "
                        f"{case.due_date.isoformat()}; notice queued to the requester",
                        {"due_date": case.due_date.isoformat()})


def reject(session: Session, cfg: Config, case: Case, *, actor: str, reason: str,
           now: datetime) -> ActionResult:
    """Art. 12(4): no action, with reasons, the right to complain and to a judicial remedy."""
    if not reason.strip():
        raise LifecycleRefused("a refusal needs the reasons for not taking action")
    check_transition(case, "rejected")
    late = _today(cfg, now) > (case.gdpr_due or case.first_due_date or case.due_date)
    row = _notice(session, cfg, case, "refusal_notice", "refusal",
                  {"reason": reason.strip()[:4000], "gdpr": "gdpr_request" in case.labels},
                  now, f"refusal:{case.id}")
    case_ops.record_event(session, case, "rejected", actor=actor, reason=reason.strip(),
                          new={"late": late}, outbox=row)
    case_ops.set_status(session, case, "rejected", actor=actor, reason="refusal notified")
    note = " (after the Art. 12(4) deadline: this is late)" if late else ""
    return ActionResult(case.ref, "reject", f"{case.ref} rejected; refusal notice queued{note}", {})


def pause_for_identity(session: Session, cfg: Config, policy: deadlines.Policy, case: Case, *,
                       actor: str, reason: str, now: datetime, purpose: str = "identity") -> ActionResult:
    if not reason.strip():
        raise LifecycleRefused("say why the identity information is necessary (GDPR Art. 12(6))")
    check_transition(case, "awaiting_identity")
    case.identity_requested_on = _today(cfg, now)
    case.identity_received_on = None
    case.identity_reason, case.identity_purpose = reason.strip()[:2000], purpose
    case_ops.record_event(session, case, "paused", actor=actor, reason=reason.strip(),
                          new={"identity_requested_on": case.identity_requested_on,
                               "clock_mode": policy.clock_mode, "purpose": purpose})
    case_ops.set_status(session, case, "awaiting_identity", actor=actor, reason=reason.strip())
    counts = policy.clock_mode != deadlines.CLOCK_NONE and purpose == "identity"
    return ActionResult(case.ref, "pause", f"{case.ref} awaiting identity; clock mode "
                        f"{policy.clock_mode}" + ("" if counts else " (the due date does not move)"), {})


def resume(session: Session, cfg: Config, policy: deadlines.Policy, case: Case, *, actor: str,
           reason: str, now: datetime) -> ActionResult:
    """Identity received (or the pause is lifted): the clock runs again; dates recomputed."""
    if case.status != "awaiting_identity":
        raise LifecycleRefused(f"{case.ref} is {case.status}, not awaiting identity")
    case.identity_received_on = max(_today(cfg, now), case.identity_requested_on or _today(cfg, now))
    case_ops.record_event(session, case, "resumed", actor=actor, reason=reason,
                          new={"identity_received_on": case.identity_received_on})
    target = "extended" if case.extension_reason else "in_progress"
    case_ops.set_status(session, case, target, actor=actor, reason=reason or "identity received")
    dates = recompute(session, case, policy, actor=actor, reason="clock resumed")
    return ActionResult(case.ref, "resume", f"{case.ref} resumed; due {dates['due_date']}", dates)


def close(session: Session, case: Case, *, actor: str, reason: str) -> ActionResult:
    if not reason.strip():
        raise LifecycleRefused("closing a case needs a reason")
    transition(session, case, "closed", actor=actor, reason=reason.strip())
    return ActionResult(case.ref, "close", f"{case.ref} closed", {})


def answered(session: Session, case: Case, *, actor: str, reason: str) -> ActionResult:
    transition(session, case, "answered", actor=actor, reason=reason or "answer sent")
    return ActionResult(case.ref, "answered", f"{case.ref} answered", {})


def reclassify(session: Session, policy: deadlines.Policy, case: Case, labels: Iterable[str], *,
               actor: str, reason: str) -> ActionResult:
    new_labels = normalise_labels(labels)
    old_labels = list(case.labels)
    if new_labels == old_labels:
        raise LifecycleRefused(f"{case.ref} already has labels {','.join(old_labels)}")
    case.labels = new_labels
    case.needs_review = False
    first = case.messages[0] if case.messages else None
    session.add(LabelCorrection(case_id=case.id, inbound_id=first.id if first else None, actor=actor,
                                old_labels=old_labels, new_labels=new_labels, language=case.language))
    case_ops.record_event(session, case, "reclassified", actor=actor, reason=reason,
                          old={"labels": old_labels}, new={"labels": new_labels})
    dates = recompute(session, case, policy, actor=actor, reason="reclassified")
    return ActionResult(case.ref, "labels", f"{case.ref} labels {','.join(old_labels)} -> "
                        f"{','.join(new_labels)}; due {dates['due_date']}", dates)


def normalise_labels(labels: Iterable[str]) -> list[str]:
    out: list[str] = []
    for raw in labels:
        label = raw.strip().lower().replace("-", "_")
        if not label:
            continue
        if label == "gdpr":
            label = "gdpr_request"
        if label not in LABELS:
            raise LifecycleRefused(f"unknown label {raw!r}; labels are {', '.join(LABELS)}")
        if label not in out:
            out.append(label)
    if not out:
        raise LifecycleRefused("give at least one label")
    if "other" in out and len(out) > 1:
        raise LifecycleRefused("'other' cannot be combined with another label")
    return [l for l in LABELS if l in out]


def assign(session: Session, case: Case, owner: str, *, actor: str) -> ActionResult:
    old = case.owner
    case.owner = owner.strip().lower() or None
    case_ops.record_event(session, case, "assigned", actor=actor, old={"owner": old}, new={"owner": case.owner})
    return ActionResult(case.ref, "assign", f"{case.ref} assigned to {case.owner}", {})


def note(session: Session, case: Case, text: str, *, actor: str) -> ActionResult:
    if not text.strip():
        raise LifecycleRefused("an empty note")
    case_ops.record_event(session, case, "note", actor=actor, reason=text.strip()[:4000])
    return ActionResult(case.ref, "note", f"note added to {case.ref}", {})


def requester_replied(session: Session, policy: deadlines.Policy, cfg: Config, case: Case,
                      now: datetime) -> None:
    """A reply on the thread ends an identity pause (deadlines.md §3.5)."""
    if case.status == "awaiting_identity":
        resume(session, cfg, policy, case, actor=case_ops.BOT_ACTOR,
               reason="requester replied on the thread", now=now)
