"""The daily staff digest: grouping and order, working days, flags, signed reply and command
links, the text part on its own, language, and queuing once a day — on SQLite and PostgreSQL."""
from __future__ import annotations

import html as html_lib
import re
import threading
from datetime import date, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from inbox_bot import addresses, deadlines, digests
from inbox_bot.config import Config, StaffConfig
from inbox_bot.store import Case, InboundMessage, Outbox, Store

JST = ZoneInfo("Asia/Tokyo")
AIKO = "aiko@ikaclo.example.jp"        # reads Japanese
BEN = "ben@ikaclo.example.jp"
BOSS = "boss@ikaclo.example.jp"
SECRET = "test-token-secret"
BOT = "inquiries@ikaclo.example.jp"
NOW = datetime(2026, 11, 25, 8, 30, tzinfo=JST)      # a Wednesday
TODAY = NOW.date()


def make_cfg(**staff) -> Config:
    values = {"addresses": [AIKO, BEN], "supervisor": BOSS, "languages": {AIKO: "ja"},
              "token_secret": SECRET} | staff
    return Config(staff=StaffConfig(**values))


def policy() -> deadlines.Policy:
    return deadlines.Policy()      # controller calendar: Japan


INQUIRY = ("From: Anna Example <anna@requester.example>\r\nTo: inquiries@ikaclo.example.jp\r\n"
           "Subject: My data\r\nMessage-ID: <inq-{n}@requester.example>\r\n"
           "Content-Type: text/plain; charset=utf-8\r\n\r\n"
           "Please send me a copy of all personal information you hold about me and tell me who "
           "you shared it with; I also want to know how long you keep it and where it is stored.\r\n"
           "\r\nOn Monday someone wrote:\r\n> quoted history that is not part of the inquiry\r\n")

# ref, days until due, state, labels, extra columns
CASES = [
    ("PRIV-2026-00011", 8, "extended", ["revision"], {"extension_reason": "three systems"}),
    ("PRIV-2026-00012", -1, "acknowledged", ["disclosure"], {}),
    ("PRIV-2026-00013", 0, "acknowledged", ["complaint"], {"needs_review": True}),
    ("PRIV-2026-00014", 30, "new", ["other"], {"close_call": True, "owner": AIKO}),
    ("PRIV-2026-00015", 7, "awaiting_identity", ["deletion"], {"identity_requested_on": TODAY}),
    ("PRIV-2026-00016", -3, "in_progress", ["disclosure", "gdpr_request"], {}),
    ("PRIV-2026-00017", 2, "closed", ["other"], {}),
    ("PRIV-2026-00018", 3, "answered", ["disclosure"], {}),
    ("PRIV-2026-00019", 5, "in_progress", ["deletion"], {}),
]


def seed_digest_cases(store: Store, today: date = TODAY) -> None:
    with store.session() as s, s.begin():
        for n, (ref, days, status, labels, extra) in enumerate(CASES):
            received = datetime.combine(today - timedelta(days=10), datetime.min.time(), tzinfo=JST)
            due = today + timedelta(days=days)
            case = Case(ref=ref, requester=f"requester{n}@requester.example", requester_name="Anna Example",
                        received_at=received, receipt_date=received.date(), due_date=due,
                        first_due_date=due, extended_due=due + timedelta(days=60), status=status,
                        labels=labels, language="en", **extra)
            s.add(case)
            s.flush()
            raw = INQUIRY.format(n=n).encode()
            s.add(InboundMessage(mailbox="INBOX", uidvalidity=1, uid=str(n), sha256=f"{n:064d}",
                                 size=len(raw), raw=raw, received_at=received, case_id=case.id,
                                 status="done", disposition="case_opened"))


@pytest.fixture()
def store(db_url):
    store = Store(db_url)
    store.migrate()
    seed_digest_cases(store)
    yield store
    store.dispose()


def collect(store: Store, staff: str = BEN, **cfg) -> digests.Digest:
    with store.session() as s:
        return digests.collect_digest(s, make_cfg(**cfg), policy(), staff, NOW)


def build(store: Store, staff: str = BEN, **cfg):
    with store.session() as s:
        return digests.build_digest(s, make_cfg(**cfg), policy(), staff, NOW)


def by_ref(digest: digests.Digest) -> dict[str, digests.DigestCase]:
    return {c.ref: c for cases in digest.groups.values() for c in cases}


# -- content ----------------------------------------------------------------------------------

def test_open_cases_are_grouped_overdue_due_within_7_days_and_later_ordered_by_due_date(store):
    d = collect(store)
    refs = {g: [c.ref for c in cases] for g, cases in d.groups.items()}
    assert refs == {
        "overdue": ["PRIV-2026-00016", "PRIV-2026-00012"],
        "due_soon": ["PRIV-2026-00013", "PRIV-2026-00019", "PRIV-2026-00015"],   # today .. today+7
        "later": ["PRIV-2026-00011", "PRIV-2026-00014"],                         # today+8 ..
    }
    assert d.total == 7            # closed and answered cases are not listed


def test_days_and_working_days_left_on_the_controller_calendar(store):
    cases = by_ref(collect(store))
    # Wed 11-25 -> Wed 12-02: 7 days, 5 working days; Sun 11-22 overdue: Mon 11-23 is a holiday
    assert (cases["PRIV-2026-00015"].days_left, cases["PRIV-2026-00015"].working_days_left) == (7, 5)
    assert (cases["PRIV-2026-00016"].days_left, cases["PRIV-2026-00016"].working_days_left) == (-3, -1)
    assert (cases["PRIV-2026-00013"].days_left, cases["PRIV-2026-00013"].working_days_left) == (0, 0)


def test_flags_say_what_needs_attention(store):
    cases = by_ref(collect(store))
    assert cases["PRIV-2026-00016"].flags == ("gdpr",)
    assert cases["PRIV-2026-00013"].flags == ("complaint", "needs_review")
    assert cases["PRIV-2026-00015"].flags == ("awaiting_identity",)
    assert cases["PRIV-2026-00011"].flags == ("extended",)
    assert cases["PRIV-2026-00014"].flags == ("close_call",) and cases["PRIV-2026-00014"].owner == AIKO


def test_the_excerpt_is_the_start_of_the_new_text_and_can_be_switched_off(store):
    excerpt = by_ref(collect(store))["PRIV-2026-00016"].excerpt
    assert excerpt.startswith("Please send me a copy of all personal information")
    assert len(excerpt) <= digests.EXCERPT_CHARS and excerpt.endswith("…")
    assert "quoted history" not in excerpt
    mail = build(store, excerpt=False)
    assert "Please send me" not in mail.text and "Please send me" not in mail.html
    assert all(c.excerpt == "" for c in by_ref(collect(store, excerpt=False)).values())


def test_no_requester_address_or_name_in_the_digest(store):
    mail = build(store)
    raw = mail.build().as_bytes()
    assert b"requester.example" not in raw and b"Anna" not in raw


def mailto_links(html: str) -> list[str]:
    return [html_lib.unescape(h) for h in re.findall(r'href="(mailto:[^"]+)"', html)]


def test_reply_and_command_links_verify_only_for_the_staff_member_they_were_made_for(store):
    mail = build(store, staff=BEN)
    links = mailto_links(mail.html)
    assert len(links) > 7 * 5
    with store.session() as s:
        ids = dict(s.execute(select(Case.ref, Case.id)).all())
    for link in links:
        parts = urlsplit(link)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        ref = re.fullmatch(r"Re: \[(PRIV-2026-\d{5})\]", query["subject"]).group(1)
        raw_token = addresses.token_in([unquote(parts.path)], BOT)
        token = addresses.verify(SECRET, raw_token, BEN, today=TODAY, ttl_days=30)
        assert token.case_id == ids[ref] and token.issued == TODAY
        with pytest.raises(addresses.TokenError):
            addresses.verify(SECRET, raw_token, AIKO, today=TODAY, ttl_days=30)


def test_command_links_prefill_the_body_and_follow_the_case_state(store):
    cases = by_ref(collect(store))
    bodies = {ref: {c.command: c.body for c in case.commands} for ref, case in cases.items()}
    paused = bodies["PRIV-2026-00015"]
    assert paused["resume"] == "#resume" and paused["verified"] == "#verified"
    assert "pause-for-identity" not in paused
    overdue = bodies["PRIV-2026-00016"]
    assert "extend" not in overdue and "resume" not in overdue       # too late to extend
    assert overdue["close"] == "#close " and overdue["pause-for-identity"] == "#pause-for-identity "
    assert overdue["labels"] == "#labels disclosure,gdpr_request" and overdue["assign"] == f"#assign {BEN}"
    assert "extend" in bodies["PRIV-2026-00019"] and "extend" not in bodies["PRIV-2026-00011"]
    link = next(c for c in cases["PRIV-2026-00016"].commands if c.command == "labels").href
    assert "body=%23labels%20disclosure%2Cgdpr_request" in link        # %20, never "+"
    query = parse_qs(urlsplit(link).query)
    assert query["body"] == ["#labels disclosure,gdpr_request"]


def test_the_text_part_alone_lists_every_reply_address_and_the_commands(store):
    mail = build(store)
    digest = collect(store)
    for case in by_ref(digest).values():
        assert case.reply_address in mail.text and f"Re: [{case.ref}]" in mail.text
    for command in ("#note", "#close", "#reject", "#extend", "#pause-for-identity", "#resume",
                    "#verified", "#labels", "#assign"):
        assert command in mail.text
    assert mail.text.index("OVERDUE (2)") < mail.text.index("DUE WITHIN 7 DAYS (3)") < mail.text.index("LATER (2)")
    assert mail.text.index("PRIV-2026-00016") < mail.text.index("PRIV-2026-00012")
    assert "3 day(s) overdue, 1 working day(s)" in mail.text
    assert mail.subject == "Daily digest 2026-11-25: 2 overdue, 3 due within 7 days, 2 later"


def test_the_digest_is_in_the_staff_members_language(store):
    mail = build(store, staff=AIKO)
    assert mail.subject.startswith("日次ダイジェスト 2026-11-25") and mail.template == "staff_digest.ja"
    assert "期限超過（2 件）" in mail.text and "請求者に返信" in mail.html
    assert mail.recipient == AIKO


def test_an_empty_digest_still_says_so(db_url):
    empty = Store(db_url)
    empty.migrate()
    try:
        with empty.session() as s:
            mail = digests.build_digest(s, make_cfg(), policy(), BEN, NOW)
        assert "Open cases: 0" in mail.text and mail.text.count("(none)") == 3
    finally:
        empty.dispose()


# -- once a day -------------------------------------------------------------------------------

def digests_queued(store: Store) -> list[tuple[str, str]]:
    with store.session() as s:
        return sorted(s.execute(select(Outbox.recipient, Outbox.dedupe_key)
                                .where(Outbox.kind == "digest")).all())


def test_one_digest_per_staff_member_per_day_also_after_a_restart(store, db_url):
    cfg = make_cfg()
    assert digests.send_digests(store, cfg, policy(), NOW) == 2
    assert digests.send_digests(store, cfg, policy(), NOW + timedelta(hours=3)) == 0
    restarted = Store(db_url)
    restarted.migrate()
    try:
        assert digests.send_digests(restarted, cfg, policy(), NOW + timedelta(hours=14)) == 0  # 22:30 JST
        assert digests_queued(restarted) == [(AIKO, f"digest:2026-11-25:{AIKO}"),
                                             (BEN, f"digest:2026-11-25:{BEN}")]
        assert digests.send_digests(restarted, cfg, policy(), NOW + timedelta(days=1)) == 2
        assert len(digests_queued(restarted)) == 4
    finally:
        restarted.dispose()


def test_a_worker_that_loses_the_race_for_the_same_digest_queues_nothing(store, db_url, monkeypatch):
    cfg = make_cfg(addresses=[BEN])
    assert digests.send_digests(store, cfg, policy(), NOW) == 1
    # Another worker checked before the first one committed: its insert hits the unique key.
    monkeypatch.setattr(digests, "already_queued", lambda session, key: False)
    other = Store(db_url)
    try:
        assert digests.send_digests(other, cfg, policy(), NOW) == 0
    finally:
        other.dispose()
    assert len(digests_queued(store)) == 1


def test_two_workers_at_the_same_moment_queue_one_digest(store, db_url):
    cfg = make_cfg(addresses=[BEN])
    workers = [Store(db_url), Store(db_url)]
    start = threading.Barrier(len(workers))
    results: list[int] = []

    def run(worker: Store) -> None:
        start.wait()
        results.append(digests.send_digests(worker, cfg, policy(), NOW))

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for w in workers:
            w.dispose()
    assert sorted(results) == [0, 1]
    assert len(digests_queued(store)) == 1


def test_digest_due_from_the_configured_local_time():
    cfg = make_cfg(digest_time="08:30")
    assert not digests.digest_due(cfg, NOW - timedelta(minutes=1))
    assert digests.digest_due(cfg, NOW)
