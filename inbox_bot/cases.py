"""Cases: ids, opening, follow-ups, due dates and the append-only event history.

Every change to a case is a ``CaseEvent`` carrying the hash of the previous event, so that
``audit verify`` can detect an edited or deleted row.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterable
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import deadlines
from .store import Case, CaseCounter, CaseEvent, CaseMessageId, utcnow

logger = logging.getLogger(__name__)

BOT_ACTOR = "inbox-bot"
OPEN_STATES = ("new", "acknowledged", "awaiting_identity", "in_progress", "extended")


def allocate_ref(session: Session, prefix: str, year: int) -> str:
    """Next case id for the year, e.g. ``PRIV-2026-00042``; safe with several workers.

    The counter row is locked (FOR UPDATE) on first use in a transaction and then counted in
    memory, so a batch of new cases costs one lock, not one round trip each.
    """
    cache: dict[int, CaseCounter] = session.info.setdefault("case_counters", {})
    counter = cache.get(year)
    if counter is None:
        counter = session.execute(
            select(CaseCounter).where(CaseCounter.year == year).with_for_update()).scalar_one_or_none()
        if counter is None:
            _insert_counter(session, year)
            counter = session.execute(
                select(CaseCounter).where(CaseCounter.year == year).with_for_update()).scalar_one()
        cache[year] = counter
    counter.last_seq += 1
    return f"{prefix}-{year}-{counter.last_seq:05d}"


def forget_batch_state(session: Session) -> None:
    """After a rollback the counters and Message-IDs cached on the session are stale."""
    for key in ("case_counters", "new_message_ids", "known_message_ids"):
        session.info.pop(key, None)


def prefetch_message_ids(session: Session, message_ids: Iterable[str]) -> None:
    """Which of these Message-IDs already belong to a case (one query for a whole batch)."""
    wanted = [m for m in set(message_ids) if m]
    known: set[str] = set()
    for i in range(0, len(wanted), 500):
        known.update(session.execute(select(CaseMessageId.message_id).where(
            CaseMessageId.message_id.in_(wanted[i:i + 500]))).scalars())
    session.info["known_message_ids"] = known


def _insert_counter(session: Session, year: int) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
        session.execute(insert(CaseCounter).values(year=year, last_seq=0)
                        .on_conflict_do_nothing(index_elements=["year"]))
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        session.execute(sqlite_insert(CaseCounter).values(year=year, last_seq=0)
                        .on_conflict_do_nothing(index_elements=["year"]))


def _event_hash(prev_hash: str, case_ref: str, ev: Any) -> str:
    # What happened, to which case, when and by whom. Row ids of linked messages are
    # navigation, assigned only when the row is written, so they are not part of the hash.
    return _hash_of(prev_hash, case_ref, ev.at, ev.actor, ev.kind, ev.reason, ev.old, ev.new)


# What json.dumps(..., sort_keys=True, ensure_ascii=False, default=str) would build for every
# event: built once (the intake hashes three events per new case).
_HASH_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)


def _hash_of(prev_hash: str, case_ref: str, at: datetime, actor: str, kind: str, reason: str,
             old: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    body = _HASH_ENCODER.encode({
        "prev": prev_hash, "case": case_ref, "at": at.astimezone(timezone.utc).isoformat(),
        "actor": actor, "kind": kind, "reason": reason, "old": old, "new": new,
    })
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def event_values(case_ref: str, prev_hash: str, kind: str, *, actor: str = BOT_ACTOR,
                 reason: str = "", old: dict[str, Any] | None = None,
                 new: dict[str, Any] | None = None, at: datetime | None = None) -> dict[str, Any]:
    """The columns of the next event in a case's chain, its hash included (no database work)."""
    at = (at or utcnow()).astimezone(timezone.utc).replace(microsecond=0)
    old, new = _jsonable(old), _jsonable(new)
    return {"at": at, "actor": actor, "kind": kind, "reason": reason, "old": old, "new": new,
            "prev_hash": prev_hash,
            "hash": _hash_of(prev_hash, case_ref, at, actor, kind, reason, old, new)}


def record_event(session: Session, case: Case, kind: str, *, actor: str = BOT_ACTOR,
                 reason: str = "", old: dict[str, Any] | None = None,
                 new: dict[str, Any] | None = None, inbound_id: int | None = None,
                 outbox_id: int | None = None, inbound: Any = None, outbox: Any = None,
                 at: datetime | None = None) -> CaseEvent:
    """Append an event to the case's hash chain.

    The caller holds the case row: it created it in this transaction, or loaded it with
    ``lock_case`` / ``with_for_update``, so no other worker extends the same chain meanwhile.
    """
    ev = CaseEvent(case=case, inbound_id=inbound_id, outbox_id=outbox_id,
                   **event_values(case.ref, case.audit_head or "", kind, actor=actor, reason=reason,
                                  old=old, new=new, at=at))
    if inbound is not None:
        ev.inbound = inbound
    if outbox is not None:
        ev.outbox = outbox
    session.add(ev)
    case.audit_head = ev.hash
    case.event_count = (case.event_count or 0) + 1
    return ev


def lock_case(session: Session, case_id: int) -> Case | None:
    """Load a case for changing it: the row lock serialises workers on its event chain."""
    return session.get(Case, case_id, with_for_update=True, populate_existing=True)


def verify_chain(session: Session) -> list[str]:
    """Problems found in the event chain (empty when intact)."""
    problems: list[str] = []
    for case in session.execute(select(Case).order_by(Case.id)).scalars():
        prev_hash, count = "", 0
        for ev in session.execute(select(CaseEvent).where(CaseEvent.case_id == case.id)
                                  .order_by(CaseEvent.id)).scalars():
            count += 1
            if ev.prev_hash != prev_hash:
                problems.append(f"{case.ref} event {ev.id}: the event before it was deleted or changed")
            if _event_hash(ev.prev_hash, case.ref, ev) != ev.hash:
                problems.append(f"{case.ref} event {ev.id} ({ev.kind}): content was edited")
            prev_hash = ev.hash
        if prev_hash != (case.audit_head or "") or count != (case.event_count or 0):
            problems.append(f"{case.ref}: its last event was deleted or the chain head changed")
    return problems


def _jsonable(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """The value as JSON would give it back: dates as ISO strings, tuples and sets as lists,
    anything else as its string (done directly: a dumps/loads round trip per event cost more
    than the rest of the event)."""
    if value is None:
        return None
    return {str(k): _plain(v) for k, v in value.items()}


def _plain(o: Any) -> Any:
    if o is None or isinstance(o, (str, bool, int, float)):
        return o
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set, frozenset)):
        return [_plain(v) for v in o]
    if isinstance(o, (date, datetime)):
        return o.isoformat()
    return str(o)


def policy_from(mapping: dict[str, Any], timezone: str) -> deadlines.Policy:
    data = dict(mapping)
    data.setdefault("controller_timezone", timezone)
    return deadlines.Policy.from_mapping(data)


def compute_dates(received_at: datetime, labels: Iterable[str],
                  policy: deadlines.Policy) -> deadlines.DueDates:
    return deadlines.compute_due(received_at, list(labels), policy)


def apply_dates(case: Case, dues: deadlines.DueDates) -> None:
    case.receipt_date = dues.receipt_date
    case.due_date = dues.due
    case.internal_target = dues.internal_target
    case.extended_due = dues.extended_due
    case.due_rules = list(dues.rules)
    case.gdpr_due = dues.gdpr_due
    case.first_due_date = dues.due


_UNPLANNED = object()      # new_case: no next_notice_on given, compute it


def new_case(session: Session, *, prefix: str, tz: ZoneInfo, policy: deadlines.Policy,
             requester: str, requester_name: str, subject: str, language: str,
             labels: list[str], scores: dict[str, float], needs_review: bool,
             close_call: bool, received_at: datetime, thread_message_id: str | None,
             linked_case_id: int | None = None, factory: Callable[..., Any] = Case,
             dues: deadlines.DueDates | None = None, next_notice_on: Any = _UNPLANNED) -> Any:
    """A case with its id, due dates and reminder schedule, not yet added to the session.

    ``factory``: the class to build it with; the bulk writer passes a plain namespace, which
    costs a fraction of an ORM instance and is written with Core statements. ``dues`` and
    ``next_notice_on`` (from ``first_notice``; None is a plan too): computed beforehand, e.g.
    by a ``DatePlanner``."""
    if dues is None:
        dues = compute_dates(received_at, labels, policy)
    ref = allocate_ref(session, prefix, received_at.astimezone(tz).year)
    now = utcnow()
    case = factory(ref=ref, requester=requester, requester_name=requester_name[:200],
                subject=subject[:500], language=language, labels=list(labels),
                scores={k: round(float(v), 4) for k, v in scores.items()},
                needs_review=needs_review, close_call=close_call, received_at=received_at,
                thread_message_id=thread_message_id, status="new", linked_case_id=linked_case_id,
                created_at=now, updated_at=now, audit_head="", event_count=0)
    apply_dates(case, dues)
    if next_notice_on is not _UNPLANNED:
        case.next_notice_on = next_notice_on
    else:
        from .reminders import schedule          # late import: reminders builds on cases
        schedule(case, policy, dues=dues)
    return case


def first_notice(received_at: datetime, labels: list[str], dues: deadlines.DueDates,
                 policy: deadlines.Policy) -> date | None:
    """The reminder schedule of a new case with these dates (what ``new_case`` would set)."""
    from types import SimpleNamespace
    from .reminders import schedule
    case = SimpleNamespace(status="new", labels=list(labels), received_at=received_at)
    apply_dates(case, dues)
    schedule(case, policy, dues=dues)
    return case.next_notice_on


class DatePlanner:
    """``compute_dates`` and ``first_notice`` for many new cases. Both depend on the receipt
    time only through its calendar dates (``deadlines.receipt_dates``) and the first rule
    line, and a run's inquiries mostly share their dates and labels: each combination is
    worked out once (a tenth of a millisecond) and the first rule rewritten per case."""

    def __init__(self, policy: deadlines.Policy, size: int = 4096) -> None:
        self.policy, self.size = policy, size
        self._memo: dict[tuple[Any, ...], tuple[deadlines.DueDates, date | None]] = {}

    def plan(self, received_at: datetime, labels: list[str]) -> tuple[deadlines.DueDates, date | None]:
        key = (tuple(labels), deadlines.receipt_dates(received_at, self.policy))
        known = self._memo.get(key)
        if known is None:
            dues = compute_dates(received_at, labels, self.policy)
            known = (dues, first_notice(received_at, labels, dues, self.policy))
            if len(self._memo) < self.size:
                self._memo[key] = known
            return known
        dues, notice = known
        first = deadlines.receipt_rule(received_at, dues.receipt_date, self.policy)
        return replace(dues, rules=(first, *dues.rules[1:])), notice


def opened_event(case: Case) -> dict[str, Any]:
    """Arguments of the first event of a case (shared by the ORM and the bulk path)."""
    return {"reason": "new inquiry",
            "new": {"labels": list(case.labels), "due_date": case.due_date, "status": "new",
                    "needs_review": case.needs_review, "linked_case": case.linked_case_id}}


def open_case(session: Session, *, inbound_id: int, **fields: Any) -> Case:
    """Open a case through the ORM (see ``case_batch`` for many fresh cases at once)."""
    case = new_case(session, **fields)
    session.add(case)
    if case.thread_message_id:
        remember_message_id(session, case, case.thread_message_id, "in")
    record_event(session, case, "opened", inbound_id=inbound_id, **opened_event(case))
    logger.info("case %s opened: labels=%s due=%s", case.ref, ",".join(case.labels), case.due_date)
    return case


def remember_message_id(session: Session, case: Case, message_id: str, direction: str, *,
                        new: bool = False) -> None:
    """Remember a Message-ID of the case's conversation (``new``: one we just generated)."""
    if claim_message_id(session, message_id, new=new):
        session.add(CaseMessageId(message_id=message_id, case=case, direction=direction))


def claim_message_id(session: Session, message_id: str, *, new: bool = False) -> bool:
    """True when no case has this Message-ID yet; from then on it counts as taken in this
    transaction (``new``: one we just generated, so nobody can have it)."""
    taken = session.info.setdefault("new_message_ids", set())
    if not new:
        if message_id in taken:
            return False
        known = session.info.get("known_message_ids")
        if known is not None and message_id in known:
            return False
        if known is None:
            with session.no_autoflush:
                if session.get(CaseMessageId, message_id) is not None:
                    return False
    taken.add(message_id)
    return True


def set_status(session: Session, case: Case, new_status: str, *, actor: str = BOT_ACTOR,
               reason: str = "", inbound_id: int | None = None,
               outbox_id: int | None = None, outbox: Any = None) -> None:
    old = case.status
    if old == new_status:
        return
    case.status = new_status
    case.updated_at = utcnow()
    if new_status in ("closed", "rejected", "answered"):
        case.closed_at = utcnow()
    elif old in ("closed", "rejected", "answered"):
        case.closed_at = None
    record_event(session, case, "status", actor=actor, reason=reason, old={"status": old},
                 new={"status": new_status}, inbound_id=inbound_id, outbox_id=outbox_id, outbox=outbox)


def attach_follow_up(session: Session, case: Case, *, inbound_id: int, message_id: str | None,
                     reopen: bool, how: str) -> None:
    if message_id:
        remember_message_id(session, case, message_id, "in")
    case.updated_at = utcnow()
    record_event(session, case, "follow_up", reason=f"matched by {how}", inbound_id=inbound_id)
    if reopen and case.status not in OPEN_STATES:
        set_status(session, case, "in_progress", reason="requester replied to a closed case",
                   inbound_id=inbound_id)


def find_case(session: Session, ref: str) -> Case | None:
    """The case with this id, locked for changing it."""
    return session.execute(select(Case).where(Case.ref == ref.strip().upper())
                           .with_for_update()).scalar_one_or_none()
