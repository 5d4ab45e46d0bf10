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
from collections import deque
from concurrent.futures import BrokenExecutor, Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, Callable, Iterable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, defer

from . import cases as case_ops
from .case_batch import NewCaseBatch
from . import lifecycle
from . import outbox, screen as screening, staff
from .config import Config
from .parse import InboundMessage
from .prepare import Prepared, WorkerPool, prepare
from .route import route, tag_pattern
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

    def merge(self, other: "Report") -> None:
        self.journaled += other.journaled
        self.already_journaled += other.already_journaled
        self.processed += other.processed
        for k, v in other.dispositions.items():
            self.dispositions[k] = self.dispositions.get(k, 0) + v
        self.cases_opened += other.cases_opened
        self.held += other.held


@dataclass
class Intake:
    """Everything one pass needs; built once by the worker or the CLI."""

    cfg: Config
    store: Store
    classifier: Any                      # classify.Classifier (loaded lazily by the caller)
    policy: Any                          # deadlines.Policy
    clock: Callable[[], datetime] = utcnow
    workers: WorkerPool | None = None    # parse+classify on other cores; None: inline
    # Messages per processing transaction: 250 costs the writer 5 % less CPU than 100 (fewer
    # lookups, commits and flushes per message; 3 paired runs), 500 no less than 250.
    batch_size: int = 250
    lookahead: int = 2                   # batches handed to the workers ahead of the writer
    # ...and how far beyond that the writer may journal while the workers are behind (at the
    # start they are still loading their models): in batches, and in bytes held for them.
    max_ahead: int = 16
    max_ahead_bytes: int = 64 << 20
    in_batch: Callable[[Session], None] | None = None   # extra writes for each batch transaction
    _planner: Any = field(default=None, init=False, repr=False)   # cases.DatePlanner of the new cases

    # -- one pass ----------------------------------------------------------------------------
    def run_pass(self, source: Any) -> Report:
        """Journal what the source has and process it, overlapping the steps: while this
        process fetches and writes, the workers already parse and classify what was
        journaled before. Then whatever else waits in the journal (earlier runs, reprocess)."""
        report = Report()
        ahead: deque[tuple[list[int], Future[Any] | None, int]] = deque()   # ids, result, bytes
        held_bytes = 0

        def process_oldest() -> None:
            nonlocal held_bytes
            ids, future, size = ahead.popleft()
            held_bytes -= size
            self._process_ids(ids, future, report)

        def journaled(items: list[tuple[int, bytes]]) -> None:
            nonlocal held_bytes
            for i in range(0, len(items), self.batch_size):
                chunk = items[i:i + self.batch_size]
                future = self._submit([raw for _, raw in chunk])
                size = sum(len(raw) for _, raw in chunk) if future is not None else 0
                ahead.append(([rid for rid, _ in chunk], future, size))
                held_bytes += size
            while len(ahead) > (self.lookahead if self.workers else 0):
                future = ahead[0][1]
                if (future is not None and not future.done() and len(ahead) <= self.max_ahead
                        and held_bytes <= self.max_ahead_bytes):
                    break        # the workers are behind: fetching more beats waiting
                process_oldest()

        report.merge(self.journal(source, on_journaled=journaled))
        while ahead:
            process_oldest()
        report.merge(self.process_pending())
        return report

    def _submit(self, raws: list[bytes]) -> Future[Any] | None:
        """Hand a batch to the workers; None (prepare it here) when there are none or the
        pool broke, e.g. a worker was killed: that costs time, never a message."""
        if self.workers is None:
            return None
        try:
            return self.workers.submit(raws)
        except Exception:
            logger.exception("the worker pool is broken; parsing and classifying here from now on")
            self._drop_workers()
            return None

    def _drop_workers(self) -> None:
        broken, self.workers = self.workers, None
        if broken is not None:
            try:
                broken.close()
            except Exception:
                pass

    def _process_ids(self, ids: list[int], future: Future[Any] | None,
                     report: Report) -> None:
        ready: dict[int, Prepared] = {}
        if future is not None:
            try:
                ready = dict(zip(ids, future.result()))
            except BrokenExecutor:
                logger.exception("a worker process died; parsing and classifying here from now on")
                self._drop_workers()
            except Exception:
                logger.exception("worker failed on a batch; preparing it here")
        with self.store.session() as s, s.begin():
            if self.in_batch is not None:
                self.in_batch(s)
            rows = self._claim(s, ids, len(ids), with_raw=not ready)
            if rows:
                missing = [r for r in rows if r.id not in ready]
                if missing:
                    ready.update(zip((r.id for r in missing),
                                     prepare(self.classifier, [r.raw for r in missing])))
                self._process_rows(s, rows, [ready[r.id] for r in rows], report)

    # -- journal -----------------------------------------------------------------------------
    def journal(self, source: Any,
                on_journaled: Callable[[list[tuple[int, bytes]]], None] | None = None) -> Report:
        """Fetch what the source has and store the raw bytes; then let the source move them.
        ``on_journaled`` gets the (row id, bytes) of each committed batch."""
        report = Report()
        known: dict[tuple[str, int], set[str]] = {}

        def already(mailbox: str, uidvalidity: int, uid: str) -> bool:
            key = (mailbox, uidvalidity)
            if key not in known:
                with self.store.read_session() as s:
                    known[key] = set(s.execute(select(JournalRow.uid).where(
                        JournalRow.mailbox == mailbox, JournalRow.uidvalidity == uidvalidity)).scalars())
            return uid in known[key]

        mailbox_name = source.mailbox
        skip = lambda uidvalidity, uid: already(mailbox_name, uidvalidity, str(uid))  # noqa: E731
        watermark: dict[str, int] = {}
        if not self.cfg.mailbox.processed_folder and self.cfg.mailbox.type == "imap":
            # Leave-in-place mode: nothing leaves the inbox, so resume above the last UID.
            with self.store.read_session() as s:
                state = s.execute(select(SyncState).where(SyncState.mailbox == mailbox_name)
                                  .order_by(SyncState.first_seen_at.desc()).limit(1)).scalar_one_or_none()
                if state is not None:
                    watermark = {"after_uid": state.last_uid, "after_uidvalidity": state.uidvalidity}
        batch: list[RawMail] = []
        batch_size = max(1, self.cfg.mailbox.batch_size)
        for raw in source.fetch_new(skip=skip, **watermark):
            batch.append(raw)
            if len(batch) >= batch_size:
                self._journal_batch(source, batch, report, on_journaled)
                batch = []
        if batch:
            self._journal_batch(source, batch, report, on_journaled)
        return report

    def _journal_batch(self, source: Any, batch: list[RawMail], report: Report,
                       on_journaled: Callable[[list[tuple[int, bytes]]], None] | None) -> None:
        now = self.clock()
        with self.store.session() as s, s.begin():
            for raw in batch:
                state = s.get(SyncState, (raw.mailbox, raw.uidvalidity))
                if state is None:
                    state = SyncState(mailbox=raw.mailbox, uidvalidity=raw.uidvalidity,
                                      first_seen_at=now, last_uid=0)
                    s.add(state)
                    s.flush()
                if raw.uid.isdigit():
                    state.last_uid = max(state.last_uid, int(raw.uid))
            rows = [{"mailbox": raw.mailbox, "uidvalidity": raw.uidvalidity, "uid": raw.uid,
                     "message_id": _header_message_id(raw.raw),
                     "sha256": hashlib.sha256(raw.raw).hexdigest(), "size": len(raw.raw),
                     "raw": raw.raw, "received_at": raw.received_at, "received_source": "internaldate",
                     "fetched_at": now, "status": "received", "attempts": 0} for raw in batch]
            # One executemany; a message already journaled (same mailbox,
            # UIDVALIDITY and UID) is skipped by the unique constraint, never doubled.
            inserted: list[tuple[int, bytes]] = []
            by_uid = {raw.uid: raw.raw for raw in batch}
            table = JournalRow.__table__
            stmt = _insert(s)(table).on_conflict_do_nothing(
                index_elements=["mailbox", "uidvalidity", "uid"]).returning(table.c.id, table.c.uid)
            inserted += [(rid, by_uid[uid]) for rid, uid in s.connection().execute(stmt, rows).all()]
            inserted.sort()
            report.journaled += len(inserted)
            report.already_journaled += len(rows) - len(inserted)
        # Only now, with the bytes committed, may the message leave the inbox.
        source.mark_processed([raw.uid for raw in batch])
        logger.info("journaled %d message(s) from %s", len(batch), batch[0].mailbox)
        if on_journaled is not None and inserted:
            on_journaled(inserted)

    # -- process -----------------------------------------------------------------------------
    def process_pending(self, *, batch_size: int | None = None, ids: Iterable[int] | None = None) -> Report:
        """Process what waits in the journal, ``batch_size`` messages per transaction."""
        report = Report()
        wanted = list(ids) if ids is not None else None
        while True:
            with self.store.session() as s, s.begin():
                if self.in_batch is not None:
                    self.in_batch(s)
                rows = self._claim(s, wanted, batch_size or self.batch_size)
                if not rows:
                    break
                self._process_rows(s, rows, prepare(self.classifier, [r.raw for r in rows]), report)
        return report

    def _claim(self, s: Session, ids: list[int] | None, limit: int, *,
               with_raw: bool = True) -> list[JournalRow]:
        q = select(JournalRow).where(JournalRow.status == "received").order_by(JournalRow.id)
        if not with_raw:       # the workers already have the bytes: don't read them again
            q = q.options(defer(JournalRow.raw))
        if ids is not None:
            q = q.where(JournalRow.id.in_(ids))
        # Several workers on PostgreSQL each take their own rows.
        return list(s.execute(q.limit(limit).with_for_update(skip_locked=True)).scalars())

    def _process_rows(self, s: Session, rows: list[JournalRow], prepared: list[Prepared],
                      report: Report) -> None:
        fast = Report()
        try:
            # Optimistic: the whole batch in one savepoint, written in one flush.
            with s.begin_nested():
                self._process_batch(s, rows, prepared, fast, careful=False)
        except Exception:
            # Something failed: redo the batch message by message, each in its own
            # savepoint, so that only the failing message is held.
            logger.info("batch of %d failed as a whole; processing one by one", len(rows))
            case_ops.forget_batch_state(s)
            fast = Report()
            self._process_batch(s, rows, prepared, fast, careful=True)
        report.merge(fast)

    def _process_batch(self, s: Session, rows: list[JournalRow],
                       prepared: list[Prepared], report: Report, *,
                       careful: bool) -> None:
        cfg = self.cfg
        now = self.clock()
        self._rejected: list[tuple[int, str, str]] = []
        self._budget = outbox.Budget(s, now=now, window=timedelta(minutes=cfg.bot.budget_window_minutes),
                                     sender_budget=cfg.bot.sender_budget, global_budget=cfg.bot.global_budget)
        self._sync_states: dict[tuple[str, int], SyncState | None] = {}
        self._earlier = self._earlier_copies(s, rows)
        # Fresh cases are written in bulk; the careful (one by one) pass uses the ORM.
        self._new_cases = None if careful else NewCaseBatch()
        self._tag = tag_pattern(cfg.bot.case_prefix)
        msgs = [m for m, _ in prepared if isinstance(m, InboundMessage)]
        self._budget.prefetch(m.sender for m in msgs)
        case_ops.prefetch_message_ids(s, (m.message_id for m in msgs if m.message_id))
        for row, (msg, verdict) in zip(rows, prepared):
            row.attempts = (row.attempts or 0) + 1
            if isinstance(msg, Exception):
                self._hold(row, msg, report)
            elif not careful:
                self._process_one(s, row, msg, verdict, report, now)
            else:
                nested = s.begin_nested()
                try:
                    self._process_one(s, row, msg, verdict, report, now)
                    nested.commit()
                except Exception as e:
                    nested.rollback()
                    case_ops.forget_batch_state(s)
                    self._hold(row, e, report)
            report.processed += 1
            report.count(row.disposition or "?")
        self._flush_new_cases(s)
        if self._rejected:
            # One alert for the refused staff mails of this batch, in the same transaction.
            staff.alert_supervisor(s, cfg, self._rejected, now)

    def _flush_new_cases(self, s: Session) -> None:
        """Write the fresh cases held so far: what comes next may read them."""
        if self._new_cases is not None:
            self._new_cases.flush(s)

    def _earlier_copies(self, s: Session, rows: list[JournalRow]) -> dict[int, int]:
        """For each row, the id of an earlier journal row with the same bytes or Message-ID."""
        shas = {r.sha256 for r in rows}
        mids = {r.message_id for r in rows if r.message_id}
        cond = [JournalRow.sha256.in_(shas)]
        if mids:
            cond.append(JournalRow.message_id.in_(mids))
        first_by_sha: dict[str, int] = {}
        first_by_mid: dict[str, int] = {}
        found = s.execute(select(JournalRow.id, JournalRow.sha256, JournalRow.message_id)
                          .where(or_(*cond)).order_by(JournalRow.id))
        for rid, sha, mid in found:
            first_by_sha.setdefault(sha, rid)
            if mid:
                first_by_mid.setdefault(mid, rid)
        out: dict[int, int] = {}
        for r in rows:
            candidates = [i for i in (first_by_sha.get(r.sha256), first_by_mid.get(r.message_id or ""))
                          if i is not None and i < r.id]
            if candidates:
                out[r.id] = min(candidates)
        return out

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
        if case is not None:
            row.case = case
        row.processed_at = self.clock()

    def _process_one(self, s: Session, row: JournalRow, msg: InboundMessage, verdict: Any,
                     report: Report, now: datetime) -> None:
        cfg = self.cfg
        row.sender, row.subject, row.language = msg.sender[:320], msg.subject[:1000], msg.language
        row.labels, row.scores = list(verdict.labels), dict(verdict.scores)
        if row.message_id is None and msg.message_id:
            row.message_id = msg.message_id[:998]

        if row.id in self._earlier:
            self._flush_new_cases(s)
            first = s.get(JournalRow, self._earlier[row.id])
            self._done(row, "screened", rule="duplicate", case=first.case if first else None)
            logger.info("message %d screened: duplicate of message %d", row.id, self._earlier[row.id])
            return

        ctx = screening.ScreenContext(bot_address=cfg.bot.address, received_at=row.received_at,
                                      horizon=self._horizon(s, row),
                                      staff_addresses=frozenset(cfg.staff.addresses))
        result = screening.screen(msg, ctx)
        if result.screened:
            if result.rule == "bounce":
                self._flush_new_cases(s)
                self._record_bounce(s, msg, row)
            self._done(row, "screened", rule=result.rule)
            logger.info("message %d screened by rule %s (%s)", row.id, result.rule, result.reason)
            return

        if staff.is_staff_mail(cfg, msg):
            self._flush_new_cases(s)
            self._staff_mail(s, row, msg, now)
            return

        trivial = tuple(verdict.labels) == ("other",)
        if msg.in_reply_to or msg.references or self._tag.search(msg.subject):
            self._flush_new_cases(s)       # routing looks up the cases written so far
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

        fields = dict(
            prefix=cfg.bot.case_prefix, tz=cfg.tz, policy=self.policy, requester=msg.sender,
            requester_name=msg.sender_name, subject=msg.subject, language=msg.language,
            labels=list(verdict.labels), scores=dict(verdict.scores),
            needs_review=bool(verdict.needs_review), close_call=bool(getattr(verdict, "close_call", False)),
            received_at=row.received_at, thread_message_id=msg.message_id,
            linked_case_id=decision.linked_case.id if decision.linked_case else None)
        if self._new_cases is not None:
            dues, next_notice_on = self._plan_dates(row.received_at, list(verdict.labels))
            planned = {"dues": dues, "next_notice_on": next_notice_on}
            case = case_ops.new_case(s, factory=SimpleNamespace, **planned, **fields)
            item = self._new_cases.open(s, row, case)
            self._done(row, "case_opened")
            logger.info("case %s opened: labels=%s due=%s", case.ref, ",".join(case.labels), case.due_date)
            report.cases_opened.append(case.ref)
            self._acknowledge_new(s, item, msg, row, now)
            return
        case = case_ops.open_case(s, inbound_id=row.id, **fields)
        self._done(row, "case_opened", case=case)
        report.cases_opened.append(case.ref)
        self._acknowledge(s, case, msg, row, now)

    def _staff_mail(self, s: Session, row: JournalRow, msg: InboundMessage, now: datetime) -> None:
        result = staff.check(self.cfg, msg, today=now.astimezone(self.cfg.tz).date())
        case = case_ops.lock_case(s, result.case_id) if result.ok and result.case_id else None
        if case is None:
            reason = result.reason or "the token names no existing case"
            self._done(row, "screened", rule="staff-auth")
            row.error = reason
            self._rejected.append((row.id, msg.sender, reason))
            logger.warning("message %d: staff mail refused (%s)", row.id, reason)
            return
        staff.handle(s, self.cfg, self.policy, case, msg, row.id, now)
        self._done(row, "staff_reply", case=case)

    def _horizon(self, s: Session, row: JournalRow) -> datetime | None:
        key = (row.mailbox, row.uidvalidity)
        if key not in self._sync_states:
            self._sync_states[key] = s.get(SyncState, key)
        state = self._sync_states[key]
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
                case = case_ops.lock_case(s, sent.case_id)
                if case is not None:
                    case_ops.record_event(s, case, "delivery_failed", inbound_id=row.id,
                                          outbox=sent, reason="hard bounce" if hard else "bounce")
            logger.warning("outgoing %s bounced (%s)", sent.message_id, "hard" if hard else "soft")

    def _why_no_ack(self, case: Case) -> str | None:
        why_not = self._budget.check(case.requester)
        if not why_not and not case.requester.isascii():
            # An internationalised address needs SMTPUTF8 end to end; staff answer by hand.
            why_not = "non-ascii-address"
        if why_not:
            logger.warning("case %s: acknowledgement withheld (%s)", case.ref, why_not)
        return why_not

    def _acknowledge(self, s: Session, case: Case, msg: InboundMessage, row: JournalRow,
                     now: datetime) -> None:
        why_not = self._why_no_ack(case)
        if why_not:
            case_ops.record_event(s, case, "ack_withheld", reason=why_not, inbound_id=row.id)
            return
        mail = build_ack(self.cfg, case, msg)
        sent = outbox.enqueue(s, mail, case=case, inbound_id=row.id, dedupe_key=f"ack:case:{case.ref}",
                              now=now, fresh=True)
        self._budget.spend(case.requester)
        case_ops.remember_message_id(s, case, sent.message_id, "out", new=True)
        case_ops.record_event(s, case, "ack_queued", outbox=sent,
                              new={"template": mail.template, "message_id": sent.message_id})
        case_ops.set_status(s, case, "acknowledged", reason="acknowledgement queued",
                            outbox=sent)

    def _acknowledge_new(self, s: Session, item: Any, msg: InboundMessage, row: JournalRow,
                         now: datetime) -> None:
        """``_acknowledge`` for a case held by the bulk writer: the same rows and events."""
        assert self._new_cases is not None
        case = item.case
        why_not = self._why_no_ack(case)
        if why_not:
            self._new_cases.event(item, "ack_withheld", reason=why_not, inbound=True)
            return
        mail = build_ack(self.cfg, case, msg)
        values = outbox.outbox_values(mail, dedupe_key=f"ack:case:{case.ref}", now=now)
        self._new_cases.queue(s, item, values)
        self._budget.spend(case.requester)
        self._new_cases.event(item, "ack_queued", outbox=True,
                              new={"template": mail.template, "message_id": values["message_id"]})
        self._new_cases.set_status(item, "acknowledged", reason="acknowledgement queued", outbox=True)

    def _plan_dates(self, received_at: datetime, labels: list[str]) -> tuple[Any, Any]:
        """Due dates and first reminder date of a new case (cases.DatePlanner)."""
        if self._planner is None:
            self._planner = case_ops.DatePlanner(self.policy)
        return self._planner.plan(received_at, labels)


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


def _insert(s: Session) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT DO NOTHING."""
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


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
