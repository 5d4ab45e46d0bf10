"""Routing: a screened-in message becomes a new case or a follow-up to an existing one.

Evidence, strongest first (intake-rules.md): In-Reply-To/References naming a Message-ID we
sent or received for a case; then a case tag in the subject, accepted only from the case's
requester (a stranger must not inject mail into someone else's case).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from .cases import OPEN_STATES
from .parse import InboundMessage
from .store import Case, CaseMessageId


@dataclass(frozen=True)
class RouteDecision:
    kind: str                      # "new_case" | "follow_up"
    case: Case | None = None
    how: str = ""                  # "references" | "subject-tag"
    reopen: bool = False           # follow-up to a closed case inside the reopen window
    linked_case: Case | None = None  # new case opened because an old closed case was replied to


def tag_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"\[?\b({re.escape(prefix)}-\d{{4}}-\d{{5,}})\b\]?", re.IGNORECASE)


def find_thread_case(session: Session, msg: InboundMessage) -> Case | None:
    ids = [i for i in (*msg.in_reply_to, *reversed(msg.references)) if i]
    if not ids:
        return None
    rows = session.execute(select(CaseMessageId).where(CaseMessageId.message_id.in_(ids[:100])))
    by_id = {row.message_id: row.case_id for row in rows.scalars()}
    for mid in ids:                # In-Reply-To first, then the newest reference
        if mid in by_id:
            return session.get(Case, by_id[mid], with_for_update=True)   # we may change it
    return None


def find_tagged_case(session: Session, msg: InboundMessage, prefix: str) -> Case | None:
    m = tag_pattern(prefix).search(msg.subject)
    if not m:
        return None
    case = session.execute(select(Case).where(Case.ref == m.group(1).upper())
                           .with_for_update()).scalar_one_or_none()
    if case is None or case.requester.lower() != msg.sender.lower():
        return None
    return case


def route(session: Session, msg: InboundMessage, *, prefix: str, now: datetime,
          reopen_days: int, is_trivial: bool) -> RouteDecision:
    """``is_trivial``: the classifier found nothing to act on (e.g. a plain "thanks")."""
    case, how = find_thread_case(session, msg), "references"
    if case is None:
        case, how = find_tagged_case(session, msg, prefix), "subject-tag"
    if case is None:
        return RouteDecision("new_case")
    if case.status in OPEN_STATES:
        return RouteDecision("follow_up", case, how)
    closed_at = case.closed_at or case.updated_at
    if closed_at and now - closed_at <= timedelta(days=reopen_days):
        return RouteDecision("follow_up", case, how, reopen=True)
    if is_trivial:
        # "Thanks" to a long-closed case: keep it on that case, open nothing.
        return RouteDecision("follow_up", case, how)
    return RouteDecision("new_case", linked_case=case)
