"""Cases on SQLite and PostgreSQL: yearly case ids, due dates on opening, and the hash-chained
event history that shows an edited or deleted event."""
from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timezone
from typing import Iterator
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from inbox_bot import cases
from inbox_bot.store import Case, CaseEvent, CaseMessageId, InboundMessage as JournalRow, Store

TOKYO = ZoneInfo("Asia/Tokyo")
POLICY = cases.policy_from({}, "Asia/Tokyo")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.dispose()


def journal(s: Session, received_at: datetime, uid: int = 1) -> int:
    raw = f"Message-ID: <inq-{uid}@mail.example.com>\r\n\r\nDelete my data.\r\n".encode()
    row = JournalRow(mailbox="INBOX", uidvalidity=1, uid=str(uid), message_id=f"inq-{uid}@mail.example.com",
                     sha256=hashlib.sha256(raw).hexdigest(), size=len(raw), raw=raw,
                     received_at=received_at, status="received")
    s.add(row)
    s.flush()
    return row.id


def open_one(s: Session, received_at: datetime, labels: list[str], uid: int = 1) -> Case:
    return cases.open_case(
        s, prefix="PRIV", tz=TOKYO, policy=POLICY, requester="taro@example.com",
        requester_name="Taro Yamada", subject="Delete my data", language="en", labels=labels,
        scores={label: 0.91234567 for label in labels}, needs_review=False, close_call=False,
        received_at=received_at, thread_message_id=f"inq-{uid}@mail.example.com",
        inbound_id=journal(s, received_at, uid))


def test_allocate_ref_counts_up_per_year_and_restarts_in_a_new_year(store):
    with store.session() as s, s.begin():
        assert [cases.allocate_ref(s, "PRIV", 2026) for _ in range(3)] == [
            "PRIV-2026-00001", "PRIV-2026-00002", "PRIV-2026-00003"]
        assert cases.allocate_ref(s, "PRIV", 2027) == "PRIV-2027-00001"
    with store.session() as s, s.begin():   # the counter survives the transaction
        assert cases.allocate_ref(s, "PRIV", 2026) == "PRIV-2026-00004"
        assert cases.allocate_ref(s, "PRIV", 2027) == "PRIV-2027-00002"


def test_open_case_computes_the_gdpr_one_month_due_date_and_records_an_opened_event(store):
    # 2026-01-30 15:30 UTC is 31 January in Tokyo; one month is 28 February, a Saturday.
    received = datetime(2026, 1, 30, 15, 30, tzinfo=timezone.utc)
    with store.session() as s, s.begin():
        case = open_one(s, received, ["gdpr_request"])
    case_id, ref = case.id, case.ref          # ids are assigned when the transaction is written
    with store.session() as s:
        case = s.get(Case, case_id)
        assert ref == "PRIV-2026-00001" and case.status == "new"
        assert case.receipt_date == date(2026, 1, 31)
        assert case.due_date == date(2026, 3, 2)
        assert any(r.startswith("gdpr: 1182/71") and "one month" in r for r in case.due_rules)
        assert case.scores == {"gdpr_request": 0.9123}
        events = list(s.execute(select(CaseEvent).where(CaseEvent.case_id == case_id)).scalars())
        assert [e.kind for e in events] == ["opened"]
        assert events[0].new["due_date"] == "2026-03-02" and events[0].new["labels"] == ["gdpr_request"]
        assert events[0].inbound_id is not None and events[0].prev_hash == ""
        assert case.audit_head == events[0].hash and case.event_count == 1
        assert s.get(CaseMessageId, "inq-1@mail.example.com").case_id == case_id


def test_a_case_received_on_new_years_day_in_tokyo_gets_the_new_years_id(store):
    with store.session() as s, s.begin():
        assert open_one(s, datetime(2026, 12, 31, 14, 0, tzinfo=timezone.utc), ["other"], uid=1).ref == "PRIV-2026-00001"
        assert open_one(s, datetime(2026, 12, 31, 15, 30, tzinfo=timezone.utc), ["other"], uid=2).ref == "PRIV-2027-00001"


def _case_with_history(store: Store) -> tuple[int, str]:
    with store.session() as s, s.begin():
        case = open_one(s, datetime(2026, 3, 10, 1, 0, tzinfo=timezone.utc), ["deletion"])
        cases.set_status(s, case, "acknowledged", reason="acknowledgement queued")
        cases.set_status(s, case, "in_progress", actor="staff@ikaclo.example.jp", reason="assigned")
    return case.id, case.ref


def _event_ids(store: Store, case_id: int) -> list[int]:
    with store.session() as s:
        return list(s.execute(select(CaseEvent.id).where(CaseEvent.case_id == case_id)
                              .order_by(CaseEvent.id)).scalars())


def _execute(store: Store, sql: str, **params) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(sql), params)


def verify(store: Store) -> list[str]:
    with store.session() as s:
        return cases.verify_chain(s)


def test_verify_chain_passes_untouched_and_names_the_event_whose_reason_was_edited_in_sql(store):
    case_id, ref = _case_with_history(store)
    assert verify(store) == []
    edited = _event_ids(store, case_id)[1]
    _execute(store, "UPDATE case_events SET reason = :r WHERE id = :id", r="nothing happened", id=edited)
    problems = verify(store)
    assert problems and all(ref in p for p in problems)
    assert any(f"event {edited} " in p and "edited" in p for p in problems)


def test_verify_chain_fails_when_the_last_event_of_a_case_is_deleted(store):
    case_id, ref = _case_with_history(store)
    _execute(store, "DELETE FROM case_events WHERE id = :id", id=_event_ids(store, case_id)[-1])
    problems = verify(store)
    assert any(ref in p and "last event" in p for p in problems)


def test_verify_chain_fails_when_an_event_in_the_middle_is_deleted(store):
    case_id, ref = _case_with_history(store)
    ids = _event_ids(store, case_id)
    _execute(store, "DELETE FROM case_events WHERE id = :id", id=ids[1])
    assert any(f"event {ids[2]}" in p and "before it was deleted" in p for p in verify(store))


def test_an_event_recorded_with_a_tokyo_timestamp_still_verifies(store):
    with store.session() as s, s.begin():
        case = open_one(s, datetime(2026, 3, 10, 1, 0, tzinfo=timezone.utc), ["other"])
        cases.record_event(s, case, "note", actor="staff@ikaclo.example.jp", reason="called back",
                           at=datetime(2026, 3, 10, 12, 0, tzinfo=TOKYO))
    assert verify(store) == []


def _round_trip_default(o):
    if isinstance(o, (date, datetime)):
        return o.isoformat()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=8), st.dates(), st.datetimes(timezones=st.just(timezone.utc)))
_values = st.recursive(_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=10)


@given(st.dictionaries(st.text(max_size=6), _values, max_size=4))
def test_event_values_are_what_json_would_give_back(value):
    """Event old/new are hashed as stored: the direct conversion equals a JSON round trip."""
    expected = json.loads(json.dumps(value, default=_round_trip_default, ensure_ascii=False))
    assert cases._jsonable(value) == expected


@given(st.dictionaries(st.text(max_size=6), _values, max_size=4), st.text(max_size=20))
def test_the_event_hash_is_the_documented_json_digest(value, reason):
    """The chain's hash is sha256 of json.dumps(sort_keys, ensure_ascii=False, default=str):
    old chains keep verifying whatever encodes it."""
    import hashlib
    at = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)
    old, new = cases._jsonable(value), cases._jsonable({"x": value})
    body = json.dumps({"prev": "p", "case": "PRIV-2026-00001", "at": at.isoformat(), "actor": "bot",
                       "kind": "status", "reason": reason, "old": old, "new": new},
                      sort_keys=True, ensure_ascii=False, default=str)
    assert cases._hash_of("p", "PRIV-2026-00001", at, "bot", "status", reason, old, new) == \
        hashlib.sha256(body.encode("utf-8")).hexdigest()
