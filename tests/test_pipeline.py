"""The intake pass on a local Maildir with a memory transport, on SQLite and PostgreSQL."""
from __future__ import annotations

import mailbox
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from inbox_bot import config as config_mod
from inbox_bot.app import build_app
from inbox_bot.pipeline import reprocess
from inbox_bot.store import Case, CaseEvent, InboundMessage, Outbox
from inbox_bot.transports import MemoryTransport
from tests import mailgen

NOW = datetime(2026, 11, 25, 1, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Verdict:
    labels: tuple[str, ...]
    scores: dict[str, float]
    needs_review: bool = False
    close_call: bool = False


class KeywordClassifier:
    """A stand-in for the spaCy model: the pipeline, not the model, is under test here."""

    def __init__(self) -> None:
        self.fail_on: str | None = None

    def classify(self, subject: str, text: str) -> Verdict:
        if self.fail_on and self.fail_on in subject:
            raise RuntimeError("model exploded")
        blob = (subject + " " + text).lower()
        labels = [l for l, words in (("deletion", ("delete", "削除")), ("gdpr_request", ("dsgvo", "gdpr")),
                                     ("disclosure", ("copy", "開示", "auskunft")))
                  if any(w in blob for w in words)]
        labels = labels or ["other"]
        return Verdict(tuple(labels), {l: 0.9 for l in labels})

    def classify_many(self, items):
        return [self.classify(s, t) for s, t in items]


def make_app(tmp_path: Path, db_url: str, clf: KeywordClassifier | None = None):
    cfg = config_mod.load(None, {})
    cfg = replace(cfg, mailbox=replace(cfg.mailbox, path=str(tmp_path / "mailbox")),
                  database=replace(cfg.database, url=db_url))
    transport = MemoryTransport()
    app = build_app(cfg, classifier=clf or KeywordClassifier(), transport=transport, clock=lambda: NOW)
    return app, transport, mailbox.Maildir(str(tmp_path / "mailbox"), create=True)


def deliver(box: mailbox.Maildir, raw: bytes) -> str:
    return box.add(mailbox.MaildirMessage(raw))


def count(app, model) -> int:
    with app.store.session() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def test_each_inquiry_opens_one_case_and_one_ack(tmp_path, db_url):
    app, transport, box = make_app(tmp_path, db_url)
    for inq in mailgen.twenty_inquiries():
        deliver(box, inq.raw)
    report = app.run_once()
    assert len(report.cases_opened) == 20 and report.sent == 20
    assert app.run_once().processed == 0
    assert count(app, Case) == 20 and len(transport.sent) == 20
    assert list(box.keys()) == []                   # moved to .Processed after journaling
    assert len(box.get_folder("Processed")) == 20
    app.store.dispose()


def test_same_message_id_or_same_bytes_never_opens_a_second_case(tmp_path, db_url):
    app, transport, box = make_app(tmp_path, db_url)
    inq = mailgen.english(1)
    deliver(box, inq.raw)
    deliver(box, inq.raw)                                           # same bytes
    deliver(box, inq.raw.replace(b"Hello", b"Hello again"))          # same Message-ID
    report = app.run_once()
    assert report.dispositions == {"case_opened": 1, "screened": 2}
    with app.store.session() as s:
        rules = sorted(r for r in s.execute(select(InboundMessage.rule)).scalars() if r)
    assert rules == ["duplicate", "duplicate"]
    assert len(transport.sent) == 1
    app.store.dispose()


def test_a_failing_message_is_held_and_the_run_goes_on_then_reprocess_retries_it(tmp_path, db_url):
    clf = KeywordClassifier()
    clf.fail_on = "Wrong name"
    app, transport, box = make_app(tmp_path, db_url, clf)
    for i in range(3):
        deliver(box, mailgen.english(i).raw)             # english(2) has subject "Wrong name..."
    report = app.run_once()
    assert report.dispositions == {"case_opened": 2, "held": 1}
    with app.store.session() as s:
        held = s.execute(select(InboundMessage).where(InboundMessage.status == "held")).scalar_one()
        assert "model exploded" in held.error
        held_id = held.id
    clf.fail_on = None
    assert reprocess(app.store, [held_id], all_held=False) == [held_id]
    report = app.intake.process_pending()
    assert report.dispositions == {"case_opened": 1}
    assert count(app, Case) == 3
    app.store.dispose()


def test_a_crash_inside_a_message_leaves_nothing_half_done(tmp_path, db_url, monkeypatch):
    """A failure after the case row was written rolls the case back with the message."""
    app, transport, box = make_app(tmp_path, db_url)
    deliver(box, mailgen.english(5).raw)
    import inbox_bot.pipeline as pipeline

    def boom(*a, **k):
        raise OSError("disk full while rendering")
    monkeypatch.setattr(pipeline, "build_ack", boom)
    report = app.run_once()
    assert report.dispositions == {"held": 1}
    assert count(app, Case) == 0 and count(app, Outbox) == 0 and count(app, CaseEvent) == 0
    monkeypatch.undo()
    reprocess(app.store, None, all_held=True)
    assert app.intake.process_pending().dispositions == {"case_opened": 1}
    app.store.dispose()


def test_the_sender_budget_withholds_acks_but_still_opens_cases(tmp_path, db_url):
    app, transport, box = make_app(tmp_path, db_url)
    app.cfg = replace(app.cfg, bot=replace(app.cfg.bot, sender_budget=2))
    app.intake.cfg = app.cfg
    for i in range(4):
        raw = mailgen._utf8("loop@example.net", "", f"Delete my data {i}", "Please delete my data.",
                            f"budget{i}@example.net")
        deliver(box, raw)
    report = app.run_once()
    assert len(report.cases_opened) == 4
    assert len(transport.sent) == 2
    with app.store.session() as s:
        withheld = s.execute(select(CaseEvent).where(CaseEvent.kind == "ack_withheld")).scalars().all()
        assert [e.reason for e in withheld] == ["sender-budget", "sender-budget"]
    app.store.dispose()


def test_ack_header_values_come_only_from_sanitised_input(tmp_path, db_url):
    app, transport, box = make_app(tmp_path, db_url)
    raw = (b"From: =?utf-8?q?Eve=0D=0ABcc=3A_victim=40example=2Ecom?= <eve@example.net>\r\n"
           b"To: inquiries@ikaclo.example.jp\r\n"
           b"Subject: =?utf-8?q?delete_me=0D=0ABcc=3A_victim=40example=2Ecom?=\r\n"
           b"Message-ID: <evil@example.net>\r\n\r\nPlease delete my data.\r\n")
    deliver(box, raw)
    app.run_once()
    assert len(transport.sent) == 1
    sender, rcpts, ack = transport.sent[0]
    assert rcpts == ["eve@example.net"]
    head = ack.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head and b"\nBcc:" not in head
    app.store.dispose()


def _mail_content(raw: bytes) -> tuple:
    """Headers (but the per-send Date and the random part of Message-ID) and decoded parts."""
    import email
    import email.policy
    m = email.message_from_bytes(raw, policy=email.policy.default)
    heads = tuple((k, str(v)) for k, v in m.items() if k.lower() not in ("date", "message-id", "content-type"))   # boundary is random
    parts = tuple(p.get_content() for p in m.walk() if p.get_content_maintype() == "text")
    return heads, m["Message-ID"].split(".")[0], parts


def _case_picture(app) -> list[tuple]:
    """Everything a case batch writes, without row ids, wall-clock times and random ids."""
    from inbox_bot.cases import verify_chain
    from inbox_bot.store import CaseMessageId
    skip = {"id", "created_at", "updated_at", "audit_head", "received_at"}   # times differ
    out = []
    with app.store.session() as s:
        assert verify_chain(s) == []
        for case in s.execute(select(Case).order_by(Case.ref)).scalars():
            cols = {c.key: getattr(case, c.key) for c in Case.__table__.columns if c.key not in skip}
            cols["due_rules"] = [r.split(":")[0] for r in case.due_rules]   # quote the receipt time
            events = [(e.kind, e.actor, e.reason, e.old,
                       {k: v for k, v in (e.new or {}).items() if k != "message_id"},
                       e.inbound_id is not None, e.outbox_id is not None, e.prev_hash != "")
                      for e in s.execute(select(CaseEvent).where(CaseEvent.case_id == case.id)
                                         .order_by(CaseEvent.id)).scalars()]
            mids = sorted(d for d in s.execute(select(CaseMessageId.direction)
                                               .where(CaseMessageId.case_id == case.id)).scalars())
            mails = [(o.kind, o.recipient, o.sender, o.subject, o.template, o.status, o.dedupe_key,
                      o.inbound_id is not None, _mail_content(o.raw))
                     for o in s.execute(select(Outbox).where(Outbox.case_id == case.id)).scalars()]
            journal = [(m.disposition, m.status, m.sender, m.language, m.labels)
                       for m in case.messages]
            out.append((cols, events, mids, mails, journal))
    return out


@contextmanager
def _second_database(db_url: str, tmp_path: Path):
    """Another empty store of the same kind as ``db_url``."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.sqlite3'}"
        return
    import psycopg
    from tests.conftest import PG_ADMIN_URL
    name = db_url.rsplit("/", 1)[1] + "_b"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield db_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_bulk_written_cases_are_the_same_rows_as_the_one_by_one_path(tmp_path, db_url, monkeypatch):
    """The batch writer (case_batch), fed by a worker process, and the ORM path (open_case +
    _acknowledge) in one process, write the same rows and the same mail."""
    import inbox_bot.pipeline as pipeline

    def run(sub: str, url: str, bulk: bool):
        if not bulk:
            monkeypatch.setattr(pipeline, "NewCaseBatch", lambda: None)
        (tmp_path / sub).mkdir()
        app, transport, box = make_app(tmp_path / sub, url)
        # The bulk run parses and classifies in a worker process.
        app.cfg = replace(app.cfg, bot=replace(app.cfg.bot, sender_budget=1, workers=1 if bulk else 0))
        app.intake.cfg = app.cfg
        for inq in mailgen.twenty_inquiries():
            deliver(box, inq.raw)
        for i in range(2):      # the second of these is over the sender budget: ack withheld
            deliver(box, mailgen._utf8("twice@example.net", "", f"Delete my data {i}",
                                       "Please delete my data.", f"twice{i}@example.net"))
        report = app.run_once()
        monkeypatch.undo()
        picture = _case_picture(app)
        app.store.dispose()
        return report, picture, len(transport.sent)

    with _second_database(db_url, tmp_path) as other_url:
        bulk_report, bulk, bulk_sent = run("bulk", db_url, True)
        orm_report, orm, orm_sent = run("orm", other_url, False)
    assert bulk_report.dispositions == orm_report.dispositions == {"case_opened": 22}
    assert bulk_sent == orm_sent == 21
    assert len(bulk) == 22 and bulk == orm
    assert any(ev[0] == "ack_withheld" for _, events, *_ in bulk for ev in events)


def test_a_second_mail_replying_to_an_inquiry_of_the_same_batch_joins_its_case(tmp_path, db_url):
    app, transport, box = make_app(tmp_path, db_url)
    first = mailgen._utf8("ann@example.net", "Ann", "Delete my account", "Please delete my account.",
                          "first@example.net")
    second = mailgen._utf8("ann@example.net", "Ann", "Re: Delete my account", "Also my newsletter data.",
                           "second@example.net", In_Reply_To="<first@example.net>",
                           References="<first@example.net>")
    deliver(box, first)
    deliver(box, second)
    report = app.run_once()
    assert report.dispositions == {"case_opened": 1, "follow_up": 1}
    assert count(app, Case) == 1 and len(transport.sent) == 1
    with app.store.session() as s:
        case = s.execute(select(Case)).scalar_one()
        assert sorted(m.disposition for m in case.messages) == ["case_opened", "follow_up"]
        assert [e.kind for e in case.events] == ["opened", "ack_queued", "status", "follow_up"]
    app.store.dispose()


class CrashingInWorkers(KeywordClassifier):
    """Kills the worker process that classifies a "CRASH" mail (never the main process)."""

    def __init__(self, parent: int) -> None:
        super().__init__()
        self.parent = parent

    def classify_many(self, items):
        import os
        if os.getpid() != self.parent and any("CRASH" in subject for subject, _ in items):
            os._exit(1)
        return super().classify_many(items)


def test_a_worker_process_that_dies_costs_time_not_messages(tmp_path, db_url):
    import os
    app, transport, box = make_app(tmp_path, db_url, CrashingInWorkers(os.getpid()))
    app.cfg = replace(app.cfg, bot=replace(app.cfg.bot, workers=1, global_budget=1000),
                      mailbox=replace(app.cfg.mailbox, batch_size=50))
    app.intake.cfg = app.cfg
    app.intake.batch_size = 20
    for i in range(120):
        subject = "CRASH please delete my data" if i == 30 else f"Delete my data {i}"
        deliver(box, mailgen._utf8(f"user{i}@example.net", "", subject, "Please delete my data.",
                                   f"crash{i}@example.net"))
    app.start_workers()
    worker_pids = set(app.intake.workers._executor._processes)
    report = app.run_once()
    assert report.dispositions == {"case_opened": 120} and not report.held
    assert count(app, Case) == 120 and len(transport.sent) == 120
    assert app.intake.workers is None                # the broken pool was dropped
    for pid in worker_pids:                           # and none of its processes lives on
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    app.close()


def test_workers_and_one_process_give_the_same_dispositions(tmp_path, db_url):
    app, transport, box = make_app(tmp_path, db_url)
    app.cfg = replace(app.cfg, bot=replace(app.cfg.bot, workers=2))
    app.intake.cfg = app.cfg
    for inq in mailgen.twenty_inquiries():
        deliver(box, inq.raw)
    deliver(box, mailgen.machine_mail("auto-reply"))
    report = app.run_once()
    assert report.dispositions == {"case_opened": 20, "screened": 1}
    assert app.intake.workers is None                # run_once stopped the pool it started
    app.close()


class _LateWorkers:
    """A stand-in worker pool whose results only exist once asked for: the writer finds
    every batch not done yet, as at the start of a run while the workers load their models."""

    def __init__(self, classifier) -> None:
        self.classifier, self.submitted, self.collected = classifier, 0, 0
        self.most_waiting = 0

    def submit(self, raws):
        from concurrent.futures import Future
        from inbox_bot.prepare import prepare
        pool = self
        self.submitted += 1
        self.most_waiting = max(self.most_waiting, self.submitted - self.collected)

        class Late(Future):
            def result(self, timeout=None):
                if not super().done():
                    pool.collected += 1
                    self.set_result(prepare(pool.classifier, raws))
                return super().result()

        return Late()

    def close(self) -> None:
        pass


def test_the_writer_journals_ahead_of_slow_workers_but_only_so_far(tmp_path, db_url):
    app, transport, box = make_app(tmp_path, db_url)
    app.cfg = replace(app.cfg, bot=replace(app.cfg.bot, global_budget=1000),
                      mailbox=replace(app.cfg.mailbox, batch_size=50))
    app.intake.cfg = app.cfg
    app.intake.batch_size, app.intake.max_ahead = 10, 8
    for i in range(150):
        deliver(box, mailgen._utf8(f"ahead{i}@example.net", "", f"Delete my data {i}",
                                   "Please delete my data.", f"ahead{i}@example.net"))
    workers = app.intake.workers = _LateWorkers(app.intake.classifier)
    report = app.intake.run_pass(app_source(app))
    assert report.dispositions == {"case_opened": 150} and not report.held
    assert workers.submitted == workers.collected == 15
    # Fetched 50 at a time (5 batches per fetch). Beyond the lookahead (2, so at most 2 + 5
    # waiting), and never beyond max_ahead plus one fetch.
    assert 8 < workers.most_waiting <= 8 + 5
    app.intake.workers = None
    app.close()


def app_source(app):
    from inbox_bot.app import open_source
    return open_source(app.cfg)
