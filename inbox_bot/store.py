"""The database: journal of raw mail, cases with their event history, and the outbox.

SQLAlchemy 2 models; the schema is created and upgraded by Alembic (``migrate()``), never by
``create_all`` outside tests of the migrations themselves. SQLite is the embedded default,
PostgreSQL the store for several workers (row claims use ``FOR UPDATE SKIP LOCKED``).
"""
from __future__ import annotations

import logging
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, Date, DateTime, ForeignKey, Index, Integer,
                        LargeBinary, String, Text, UniqueConstraint, create_engine, event)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator

logger = logging.getLogger(__name__)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def bind_processor(self, dialect: Any) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            # The string SQLAlchemy's SQLite DATETIME stores ("2026-11-25 08:10:28.092000"),
            # made in one C call rather than two Python steps: the intake binds several
            # timestamps per message. tests/test_store.py checks it against the generic path.
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            return value.astimezone(timezone.utc).isoformat(" ", "microseconds")[:26]
        return process


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class InboundMessage(Base):
    """The journal: one row per message fetched, raw bytes stored before any parsing."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("mailbox", "uidvalidity", "uid", name="uq_inbound_source"),
        Index("ix_inbound_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(300))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[str] = mapped_column(String(300))
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Integer)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_source: Mapped[str] = mapped_column(String(20), default="internaldate")
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # received -> done | held ; disposition says what happened
    status: Mapped[str] = mapped_column(String(20), default="received")
    disposition: Mapped[str | None] = mapped_column(String(20))
    rule: Mapped[str | None] = mapped_column(String(60))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sender: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(8))
    labels: Mapped[list[str] | None] = mapped_column(JSON)
    scores: Mapped[dict[str, float] | None] = mapped_column(JSON)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)

    case: Mapped["Case | None"] = relationship(back_populates="messages")


class SyncState(Base):
    """Per mailbox and UIDVALIDITY: when we first saw it and the highest UID journaled."""

    __tablename__ = "sync_state"

    mailbox: Mapped[str] = mapped_column(String(300), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)


class CaseCounter(Base):
    __tablename__ = "case_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(40), unique=True)       # PRIV-2026-00042
    requester: Mapped[str] = mapped_column(String(320), index=True)
    requester_name: Mapped[str] = mapped_column(String(200), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str] = mapped_column(String(8), default="en")
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    scores: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    close_call: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    receipt_date: Mapped[date] = mapped_column(Date)
    due_date: Mapped[date] = mapped_column(Date, index=True)
    internal_target: Mapped[date | None] = mapped_column(Date)
    extended_due: Mapped[date | None] = mapped_column(Date)
    due_rules: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(30), default="new", index=True)
    owner: Mapped[str | None] = mapped_column(String(320))
    thread_message_id: Mapped[str | None] = mapped_column(String(998))  # the inquiry's Message-ID
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    linked_case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    audit_head: Mapped[str] = mapped_column(String(64), default="")   # hash of the last event
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    # lifecycle (deadlines.md §3, §8)
    first_due_date: Mapped[date | None] = mapped_column(Date)         # due before any extension
    gdpr_due: Mapped[date | None] = mapped_column(Date)               # Art. 12(3)/(4) date
    extension_reason: Mapped[str | None] = mapped_column(Text)
    identity_requested_on: Mapped[date | None] = mapped_column(Date)
    identity_received_on: Mapped[date | None] = mapped_column(Date)
    identity_reason: Mapped[str | None] = mapped_column(Text)
    identity_purpose: Mapped[str | None] = mapped_column(String(20))
    next_notice_on: Mapped[date | None] = mapped_column(Date, index=True)  # next reminder/escalation

    messages: Mapped[list[InboundMessage]] = relationship(back_populates="case")
    events: Mapped[list["CaseEvent"]] = relationship(back_populates="case", order_by="CaseEvent.id")


class CaseEvent(Base):
    """Append-only history; each row carries the hash of the case's previous event.

    The case row keeps the head hash and the count, so a deleted last event shows too.
    """

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))            # "inbox-bot" or a staff address
    kind: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(Text, default="")
    old: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    new: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))
    prev_hash: Mapped[str] = mapped_column(String(64), default="")
    hash: Mapped[str] = mapped_column(String(64), default="")

    case: Mapped[Case] = relationship(back_populates="events")
    inbound: Mapped["InboundMessage | None"] = relationship()
    outbox: Mapped["Outbox | None"] = relationship()


class CaseMessageId(Base):
    """Every Message-ID we received or sent for a case: how follow-ups find their case."""

    __tablename__ = "case_message_ids"

    message_id: Mapped[str] = mapped_column(String(998), primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    direction: Mapped[str] = mapped_column(String(3))         # "in" | "out"

    case: Mapped[Case] = relationship()


class Outbox(Base):
    """Outgoing mail, rendered once; the same Message-ID on every retry."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    kind: Mapped[str] = mapped_column(String(40))                # ack, follow_up_ack, ...
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"))
    recipient: Mapped[str] = mapped_column(String(320), index=True)
    sender: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text, default="")
    template: Mapped[str] = mapped_column(String(100), default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(20), default="queued")   # queued|sent|failed|bounced
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    case: Mapped[Case | None] = relationship()


class LabelCorrection(Base):
    """A staff member changed a case's labels: the classifier learns from these."""

    __tablename__ = "label_corrections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))
    old_labels: Mapped[list[str]] = mapped_column(JSON)
    new_labels: Mapped[list[str]] = mapped_column(JSON)
    language: Mapped[str] = mapped_column(String(8), default="")


class Suppression(Base):
    """Addresses we must not mail automatically (hard bounces)."""

    __tablename__ = "suppressions"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    until: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


READ_ONLY = "inbox_bot_read_only"     # execution option of Store.read_session's connections


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            # Let SQLAlchemy, not the driver, begin transactions (SAVEPOINTs need it) ...
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")     # readers don't block the worker
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # ... and take the write lock up front: a deferred transaction that must upgrade
            # its lock fails at once when another thread writes, an immediate one waits.
            # A reader (Store.read_session) takes no lock: in WAL mode it reads a snapshot
            # beside the writer instead of queueing behind it (and holding it up).
            read_only = conn.get_execution_options().get(READ_ONLY, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, pool_pre_ping=True)


# The newest migration in migrations/versions (tests/test_store.py checks it against Alembic).
SCHEMA_HEAD = "0004"


def at_head(engine: Engine) -> bool:
    """True when the database already carries the newest revision: then start-up need not
    load Alembic (a tenth of a second and 10 MB that would stay resident)."""
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [SCHEMA_HEAD]
    except Exception:            # no such table yet, or no database: let Alembic decide
        return False


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    if at_head(engine):
        return
    from alembic import command
    from alembic.config import Config as AlembicConfig

    logging.getLogger("alembic").setLevel(logging.WARNING)   # one line per start is enough
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """Engine + session factory for one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        # Sessions that only read: on SQLite they neither wait for nor block the writer.
        self.read_session = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}),
                                         expire_on_commit=False)

    def migrate(self) -> None:
        migrate(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()
