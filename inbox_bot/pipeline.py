"""One pass of the intake: journal what the source has, then process what the journal holds.

Exactly-once in effect:
- the raw bytes are committed to the journal before the source moves the message away, and a
  message already journaled (same mailbox, UIDVALIDITY and UID) is never journaled again;
- a message's case, follow-up, acknowledgement and disposition are written in one transaction
  (a savepoint per message inside a batch), so a crash leaves either all or none of them;
- a second copy of a message (same Message-ID or same bytes) is screened as ``duplicate``;
- the acknowledgement is queued with a dedupe key and a fixed Message-ID (see outbox).
"""
from __future__ import annotations

import hashlib
import logging
import re
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import cases as case_ops
from . import lifecycle
from . import outbox, screen as screening, staff
from .config import Config
from .parse import InboundMessage, parse
from .route import route
from .source import RawMail
from .store import Case, InboundMessage as JournalRow, Outbox, Store, Suppression, SyncState, utcnow

logger = logging.getLogger(__name__)

_MSGID_HEADER = re.compile(rb"^message-id:[ \t]*<?([^\s<>]{1,900})>?", re.I | re.M)
HARD_BOUNCE_SUPPRESSION = timedelta(days=60)


@dataclass
class Report:
    journaled: int = 0
    already_journaled: int = 0
    processed: int = 0
    dispositions: dict[str, int] = field(default_factory=dict)
    cases_opened: list[str] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    sent: int = 0
    send_retry: int = 0
    send_failed: int = 0

    def count(self, disposition: str) -> None:
        self.dispositions[disposition] = self.dispositions.get(disposition, 0) + 1


@dataclass
class Intake:
    """Everything one pass needs; built once by the worker or the CLI."""

    cfg: Config
    store: Store
    classifier: Any                      # classify.Classifier (loaded lazily by the caller)
    policy: Any                          # deadlines.Policy
    clock: Callable[[], datetime] = utcnow

    # -- journal -----------------------------------------------------------------------------
    def journal(self, source: Any) -> Report:
        """Fetch what the source has and store the raw bytes; then let the source move them."""
        report = Report()
        known: dict[tuple[str, int], set[str]] = {}

        def already(mailbox: str, uidvalidity: int, uid: str) -> bool:
            key = (mailbox, uidvalidity)
            if key not in known:
                with self.store.session() as s:
                    known[key] = set(s.execute(select(JournalRow.uid).where(
                        JournalRow.mailbox == mailbox, JournalRow.uidvalidity == uidvalidity)).scalars())
            return uid in known[key]

        mailbox_name = source.mailbox
        skip = lambda uidvalidity, uid: already(mailbox_name, uidvalidity, str(uid))  # noqa: E731
        watermark: dict[str, int] = {}
        if not self.cfg.mailbox.processed_folder and self.cfg.mailbox.type == "imap":
            # Leave-in-place mode: nothing leaves the inbox, so resume above the last UID.
            with self.store.session() as s:
                state = s.execute(select(SyncState).where(SyncState.mailbox == mailbox_name)
                                  .order_by(SyncState.first_seen_at.desc()).limit(1)).scalar_one_or_none()
                if state is not None:
                    watermark = {"after_uid": state.last_uid, "after_uidvalidity": state.uidvalidity}
        batch: list[RawMail] = []
        batch_size = max(1, self.cfg.mailbox.batch_size)
        for raw in source.fetch_new(skip=skip, **watermark):
            batch.append(raw)
            if len(batch) >= batch_size:
                self._journal_batch(source, batch, report)
                batch = []
        if batch:
            self._journal_batch(source, batch, report)
        return report

    def _journal_batch(self, source: Any, batch: list[RawMail], report: Report) -> None:
        with self.store.session() as s, s.begin():
            for raw in batch:
                state = s.get(SyncState, (raw.mailbox, raw.uidvalidity))
                if state is None:
                    state = SyncState(mailbox=raw.mailbox, uidvalidity=raw.uidvalidity,
                                      first_seen_at=self.clock(), last_uid=0)
                    s.add(state)
                    s.flush()
                if raw.uid.isdigit():
                    state.last_uid = max(state.last_uid, int(raw.uid))
                nested = s.begin_nested()
                try:
                    s.add(JournalRow(
                        mailbox=raw.mailbox, uidvalidity=raw.uidvalidity, uid=raw.uid,
                        message_id=_header_message_id(raw.raw), sha256=hashlib.sha256(raw.raw).hexdigest(),
                        size=len(raw.raw), raw=raw.raw, received_at=raw.received_at,
                        fetched_at=self.clock(), status="received"))
                    s.flush()
                    nested.commit()
                    report.journaled += 1
                except IntegrityError:
                    nested.rollback()
                    report.already_journaled += 1
        # Only now, with the bytes committed, may the message leave the inbox.
        source.mark_processed([raw.uid for raw in batch])
        logger.info("journaled %d message(s) from %s", len(batch), batch[0].mailbox)

    # -- process -----------------------------------------------------------------------------
    def process_pending(self, *, batch_size: int = 100, ids: Iterable[int] | None = None) -> Report:
        report = Report()
        wanted = list(ids) if ids is not None else None
        while True:
            with self.store.session() as s, s.begin():
                q = select(JournalRow).where(JournalRow.status == "received").order_by(JournalRow.id)
                if wanted is not None:
                    q = q.where(JournalRow.id.in_(wanted))
                # Several workers on PostgreSQL each take their own rows.
                rows = list(s.execute(q.limit(batch_size).with_for_update(skip_locked=True)).scalars())
                if not rows:
                    break
                self._process_batch(s, rows, report)
        return report

    def _process_batch(self, s: Session, rows: list[JournalRow], report: Report) -> None:
        parsed: list[InboundMessage | Exception] = []
        for row in rows:
            try:
                parsed.append(parse(row.raw))
            except Exception as e:  # parse should never raise; hold the message if it does
                parsed.append(e)
        to_classify = [(i, m) for i, m in enumerate(parsed) if isinstance(m, InboundMessage)]
        try:
            results = self.classifier.classify_many([(m.subject, m.new_text) for _, m in to_classify])
            classified = {i: r for (i, _), r in zip(to_classify, results)}
        except Exception:
            logger.exception("batch classification failed; classifying one by one")
            classified = {}
        self._rejected: list[tuple[int, str, str]] = []
        for i, row in enumerate(rows):
            row.attempts = (row.attempts or 0) + 1
            nested = s.begin_nested()
            try:
                msg = parsed[i]
                if isinstance(msg, Exception):
                    raise msg
                verdict = classified.get(i) or self.classifier.classify(msg.subject, msg.new_text)
                self._process_one(s, row, msg, verdict, report)
                nested.commit()
            except Exception as e:
                nested.rollback()
                self._hold(row, e, report)
            report.processed += 1
            report.count(row.disposition or "?")
        if self._rejected:
            # One alert for the refused staff mails of this batch, in the same transaction.
            staff.alert_supervisor(s, self.cfg, self._rejected, self.clock())

    def _hold(self, row: JournalRow, error: Exception, report: Report) -> None:
        row.status, row.disposition, row.rule = "held", "held", None
        row.error = f"{type(error).__name__}: {error}"[:4000]
        row.processed_at = self.clock()
        report.held.append(row.id)
        logger.error("message %d held: %s\n%s", row.id, row.error,
                     "".join(traceback.format_exception(error, limit=-3)).rstrip())

    def _done(self, row: JournalRow, disposition: str, *, rule: str | None = None,
              case: Case | None = None) -> None:
        row.status, row.disposition, row.rule, row.error = "done", disposition, rule, None
        row.case_id = case.id if case else row.case_id
        row.processed_at = self.clock()

    def _process_one(self, s: Session, row: JournalRow, msg: InboundMessage, verdict: Any,
                     report: Report) -> None:
        cfg = self.cfg
        row.sender, row.subject, row.language = msg.sender[:320], msg.subject[:1000], msg.language
        row.labels, row.scores = list(verdict.labels), dict(verdict.scores)
        if row.message_id is None and msg.message_id:
            row.message_id = msg.message_id[:998]

        duplicate = self._duplicate_of(s, row)
        if duplicate is not None:
            self._done(row, "screened", rule="duplicate", case=duplicate.case)
            logger.info("message %d screened: duplicate of message %d", row.id, duplicate.id)
            return

        now = self.clock()
        ctx = screening.ScreenContext(bot_address=cfg.bot.address, received_at=row.received_at,
                                      horizon=self._horizon(s, row),
                                      staff_addresses=frozenset(cfg.staff.addresses))
        result = screening.screen(msg, ctx)
        if result.screened:
            if result.rule == "bounce":
                self._record_bounce(s, msg, row)
            self._done(row, "screened", rule=result.rule)
            logger.info("message %d screened by rule %s (%s)", row.id, result.rule, result.reason)
            return

        if staff.is_staff_mail(cfg, msg):
            self._staff_mail(s, row, msg, now)
            return

        trivial = tuple(verdict.labels) == ("other",)
        decision = route(s, msg, prefix=cfg.bot.case_prefix, now=now,
                         reopen_days=cfg.bot.reopen_days, is_trivial=trivial)
        if decision.kind == "follow_up" and decision.case is not None:
            case_ops.attach_follow_up(s, decision.case, inbound_id=row.id,
                                      message_id=msg.message_id, reopen=decision.reopen,
                                      how=decision.how)
            if msg.sender.lower() == decision.case.requester.lower():
                lifecycle.requester_replied(s, self.policy, cfg, decision.case, now)
            self._done(row, "follow_up", case=decision.case)
            logger.info("message %d is a follow-up to %s (%s)", row.id, decision.case.ref, decision.how)
            return

        case = case_ops.open_case(
            s, prefix=cfg.bot.case_prefix, tz=cfg.tz, policy=self.policy, requester=msg.sender,
            requester_name=msg.sender_name, subject=msg.subject, language=msg.language,
            labels=list(verdict.labels), scores=dict(verdict.scores),
            needs_review=bool(verdict.needs_review), close_call=bool(getattr(verdict, "close_call", False)),
            received_at=row.received_at, thread_message_id=msg.message_id, inbound_id=row.id,
            linked_case_id=decision.linked_case.id if decision.linked_case else None)
        self._done(row, "case_opened", case=case)
        report.cases_opened.append(case.ref)
        self._acknowledge(s, case, msg, row, now)

    def _staff_mail(self, s: Session, row: JournalRow, msg: InboundMessage, now: datetime) -> None:
        result = staff.check(self.cfg, msg, today=now.astimezone(self.cfg.tz).date())
        case = s.get(Case, result.case_id) if result.ok and result.case_id else None
        if case is None:
            reason = result.reason or "the token names no existing case"
            self._done(row, "screened", rule="staff-auth")
            row.error = reason
            self._rejected.append((row.id, msg.sender, reason))
            logger.warning("message %d: staff mail refused (%s)", row.id, reason)
            return
        staff.handle(s, self.cfg, self.policy, case, msg, row.id, now)
        self._done(row, "staff_reply", case=case)

    def _duplicate_of(self, s: Session, row: JournalRow) -> JournalRow | None:
        cond = [JournalRow.sha256 == row.sha256]
        if row.message_id:
            cond.append(JournalRow.message_id == row.message_id)
        return s.execute(select(JournalRow).where(or_(*cond), JournalRow.id < row.id)
                         .order_by(JournalRow.id).limit(1)).scalar_one_or_none()

    def _horizon(self, s: Session, row: JournalRow) -> datetime | None:
        state = s.get(SyncState, (row.mailbox, row.uidvalidity))
        if state is None or self.cfg.bot.horizon_days <= 0:
            return None
        return state.first_seen_at - timedelta(days=self.cfg.bot.horizon_days)

    def _record_bounce(self, s: Session, msg: InboundMessage, row: JournalRow) -> None:
        ids = screening.bounced_message_ids(msg)
        if not ids:
            return
        hard = screening.is_hard_bounce(msg)
        for sent in s.execute(select(Outbox).where(Outbox.message_id.in_(list(ids)[:50]))).scalars():
            sent.status, sent.last_error = "bounced", f"bounce received (message {row.id})"
            if hard and s.get(Suppression, sent.recipient.lower()) is None:
                s.add(Suppression(address=sent.recipient.lower(), reason=f"hard bounce, message {row.id}",
                                  until=self.clock() + HARD_BOUNCE_SUPPRESSION))
            if sent.case_id:
                case = s.get(Case, sent.case_id)
                if case is not None:
                    case_ops.record_event(s, case, "delivery_failed", inbound_id=row.id,
                                          outbox_id=sent.id, reason="hard bounce" if hard else "bounce")
            logger.warning("outgoing %s bounced (%s)", sent.message_id, "hard" if hard else "soft")

    def _acknowledge(self, s: Session, case: Case, msg: InboundMessage, row: JournalRow,
                     now: datetime) -> None:
        cfg = self.cfg
        why_not = outbox.automatic_mail_allowed(
            s, case.requester, now=now, window=timedelta(minutes=cfg.bot.budget_window_minutes),
            sender_budget=cfg.bot.sender_budget, global_budget=cfg.bot.global_budget)
        if why_not:
            case_ops.record_event(s, case, "ack_withheld", reason=why_not, inbound_id=row.id)
            logger.warning("case %s: acknowledgement withheld (%s)", case.ref, why_not)
            return
        mail = build_ack(cfg, case, msg)
        sent = outbox.enqueue(s, mail, case_id=case.id, inbound_id=row.id,
                              dedupe_key=f"ack:case:{case.id}", now=now)
        case_ops.remember_message_id(s, case, sent.message_id, "out")
        case_ops.record_event(s, case, "ack_queued", outbox_id=sent.id,
                              new={"template": mail.template, "message_id": sent.message_id})
        case_ops.set_status(s, case, "acknowledged", reason="acknowledgement queued",
                            outbox_id=sent.id)


def build_ack(cfg: Config, case: Case, msg: InboundMessage) -> outbox.OutgoingMail:
    lang = outbox.template_language("ack_new_case", case.language)
    context = {
        "case_ref": case.ref, "organisation": cfg.bot.organisation, "bot_address": cfg.bot.address,
        "requester_name": outbox.clean_header(msg.sender_name, 80),
        "understood": outbox.understood(list(case.labels), lang),
        "needs_review": case.needs_review, "gdpr": "gdpr_request" in case.labels,
        "identity_note": any(l in case.labels for l in ("disclosure", "revision", "deletion", "gdpr_request")),
        "receipt_date": outbox.format_date(case.receipt_date, lang),
        "due_date": outbox.format_date(case.due_date, lang),
        "subject": "",
    }
    subject = ack_subject(msg.subject, case.ref, lang)
    context["subject"] = subject
    text, html = outbox.render("ack_new_case", lang, context)
    return outbox.OutgoingMail(
        kind="ack", sender=cfg.bot.address, sender_name=f"{cfg.bot.organisation} Privacy",
        recipient=case.requester, recipient_name="", subject=subject, text=text, html=html,
        domain=cfg.domain, id_hint=case.ref, in_reply_to=msg.message_id,
        references=list(msg.references), template=f"ack_new_case.{lang}")


_PREFIX = {"ja": "受付", "de": "Eingangsbestätigung", "en": "Received", "fr": "Accusé de réception",
           "es": "Acuse de recibo", "it": "Conferma di ricezione", "nl": "Ontvangstbevestiging"}
_REPLY_PREFIX = re.compile(r"^\s*((re|aw|antw|sv|vs|r|rif|res|回复|答复|返信)\s*(\[\d+\])?\s*[:：]\s*)+", re.I)


def ack_subject(original: str, ref: str, lang: str) -> str:
    original = _REPLY_PREFIX.sub("", outbox.clean_header(original, 150))
    base = f"Re: {original}" if original else _PREFIX.get(lang, "Received")
    return f"{base} [{ref}]"


def _header_message_id(raw: bytes) -> str | None:
    """The Message-ID straight from the header block (no parsing before the journal)."""
    head = raw[:65536].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    m = _MSGID_HEADER.search(head)
    if not m:
        return None
    return m.group(1).decode("ascii", "replace")[:998]


def reprocess(store: Store, ids: Iterable[int] | None, *, all_held: bool) -> list[int]:
    """Put held messages back in the queue; returns their ids."""
    with store.session() as s, s.begin():
        q = select(JournalRow).where(JournalRow.status == "held")
        if not all_held:
            q = q.where(JournalRow.id.in_(list(ids or [])))
        rows = list(s.execute(q).scalars())
        for row in rows:
            row.status, row.disposition = "received", None
        return [r.id for r in rows]
