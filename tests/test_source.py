"""Sources against a real Dovecot (IMAP) and a real Maildir on disk; no mocks."""
from __future__ import annotations

import logging
import os
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from inbox_bot.source import (
    ImapSource,
    MaildirSource,
    RawMail,
    Source,
    SourceUnavailable,
    UidValidityChanged,
    Watermark,
)
from tests.servers import DovecotServer, ImapAccount

JST = timezone(timedelta(hours=9))


def make_message(number: int, subject: str = "個人情報の開示請求") -> bytes:
    # Dovecot hands back exactly what was appended, so CRLF and 8-bit bytes must survive.
    return (
        f"From: requester{number}@example.jp\r\n"
        f"To: privacy@example.com\r\n"
        f"Subject: {subject} #{number}\r\n"
        f"Message-ID: <m{number}@example.jp>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        f"私の個人情報の開示をお願いします。番号 {number}\r\n"
    ).encode("utf-8")


SourceFactory = Callable[..., ImapSource]


@pytest.fixture
def imap_source() -> Iterator[SourceFactory]:
    """Build ImapSource for an account (plain port, fast backoff); all closed at teardown."""
    sources: list[ImapSource] = []

    def build(account: ImapAccount, **options: Any) -> ImapSource:
        settings: dict[str, Any] = dict(
            host=account.host, port=account.port, username=account.username,
            password=account.password, security="none", timeout=10,
            backoff_initial=0.01, backoff_max=0.1,
        )
        settings.update(options)
        source = ImapSource(**settings)
        sources.append(source)
        return source

    yield build
    for source in sources:
        source.close()


def append_three(account: ImapAccount) -> list[tuple[int, bytes, datetime]]:
    dates = [
        datetime(2024, 4, 1, 9, 0, 0, tzinfo=JST),
        datetime(2024, 4, 30, 23, 59, 59, tzinfo=JST),   # previous day in UTC
        datetime(2024, 5, 1, 12, 30, 15, tzinfo=timezone.utc),
    ]
    appended = []
    for number, date in enumerate(dates, start=1):
        raw = make_message(number)
        uid = account.server.append(account.username, "INBOX", raw, internaldate=date)
        appended.append((uid, raw, date))
    return appended


# --------------------------------------------------------------------------- IMAP: contract


def test_fetch_new_yields_each_message_with_uid_uidvalidity_internaldate_and_exact_bytes(
    dovecot_user: ImapAccount, imap_source: SourceFactory
) -> None:
    appended = append_three(dovecot_user)
    source = imap_source(dovecot_user)

    mails = list(source.fetch_new())

    uidvalidity = dovecot_user.server.uidvalidity(dovecot_user.username, "INBOX")
    assert [mail.uid for mail in mails] == [str(uid) for uid, _, _ in appended]
    assert {mail.uidvalidity for mail in mails} == {uidvalidity}
    assert [mail.raw for mail in mails] == [raw for _, raw, _ in appended]
    assert [mail.received_at for mail in mails] == [date for _, _, date in appended]
    assert all(mail.received_at.tzinfo is timezone.utc for mail in mails)
    assert mails[1].received_at == datetime(2024, 4, 30, 14, 59, 59, tzinfo=timezone.utc)
    assert mails[0].mailbox == (
        f"imap://{dovecot_user.username}@127.0.0.1:{dovecot_user.port}/INBOX"
    )
    assert source.uidvalidity == uidvalidity


def test_mark_processed_moves_messages_to_processed_folder_created_on_first_use(
    dovecot_user: ImapAccount, imap_source: SourceFactory
) -> None:
    server, user = dovecot_user.server, dovecot_user.username
    appended = append_three(dovecot_user)
    assert not server.folder_exists(user, "Processed")
    source = imap_source(dovecot_user)

    for mail in source.fetch_new():
        source.mark_processed([mail.uid])

    assert server.list_uids(user, "INBOX") == []
    assert sorted(server.fetch(user, "Processed").values()) == sorted(r for _, r, _ in appended)


def test_second_poll_after_moving_finds_only_new_mail(
    dovecot_user: ImapAccount, imap_source: SourceFactory
) -> None:
    append_three(dovecot_user)
    source = imap_source(dovecot_user)
    source.mark_processed([mail.uid for mail in source.fetch_new()])
    later = make_message(4, subject="追加の質問")
    dovecot_user.server.append(dovecot_user.username, "INBOX", later)

    assert [mail.raw for mail in source.fetch_new()] == [later]


def test_skip_callback_prevents_refetch_and_moves_journaled_messages(
    dovecot_user: ImapAccount, imap_source: SourceFactory
) -> None:
    server, user = dovecot_user.server, dovecot_user.username
    appended = append_three(dovecot_user)
    journal: set[tuple[int, str]] = set()
    # First run: journaled, then "crashed" before mark_processed.
    for mail in imap_source(dovecot_user).fetch_new():
        journal.add((mail.uidvalidity, mail.uid))
    newcomer = server.append(user, "INBOX", make_message(4))
    asked: list[tuple[int, str]] = []

    def already_journaled(uidvalidity: int, uid: str) -> bool:
        asked.append((uidvalidity, uid))
        return (uidvalidity, uid) in journal

    mails = list(imap_source(dovecot_user).fetch_new(skip=already_journaled))

    assert [mail.uid for mail in mails] == [str(newcomer)]
    assert len(asked) == 4
    assert server.list_uids(user, "INBOX") == [newcomer]
    assert len(server.list_uids(user, "Processed")) == len(appended)


def test_message_marked_seen_by_another_client_is_still_fetched(
    dovecot_user: ImapAccount, imap_source: SourceFactory
) -> None:
    server, user = dovecot_user.server, dovecot_user.username
    read_by_human = server.append(user, "INBOX", make_message(1))
    unread = server.append(user, "INBOX", make_message(2))
    server.add_flags(user, "INBOX", [read_by_human], [r"\Seen"])

    mails = list(imap_source(dovecot_user).fetch_new())

    assert [mail.uid for mail in mails] == [str(read_by_human), str(unread)]
    # BODY.PEEK: the bot does not mark anything read for the humans either.
    assert b"\\Seen" not in server.get_flags(user, "INBOX")[unread]


def test_large_folder_is_fetched_in_several_batches(
    dovecot_user: ImapAccount, imap_source: SourceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server, user = dovecot_user.server, dovecot_user.username
    server.append_many(user, "INBOX", (make_message(n) for n in range(1200)))
    source = imap_source(dovecot_user, batch_size=500)

    with caplog.at_level(logging.DEBUG, logger="inbox_bot.source"):
        mails = list(source.fetch_new())

    batches = [r for r in caplog.records if "fetched" in r.getMessage() and "requested" in
               r.getMessage()]
    assert [r.getMessage().split()[3] for r in batches] == ["500", "500", "200"]
    assert [int(mail.uid) for mail in mails] == server.list_uids(user, "INBOX")
    assert mails[-1].raw == make_message(1199)


def test_large_messages_are_fetched_in_smaller_batches_to_bound_memory(
    dovecot_user: ImapAccount, imap_source: SourceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server, user = dovecot_user.server, dovecot_user.username
    scan = b"A" * 76 + b"\r\n"
    attachments = [make_message(n) + scan * 1300 for n in range(6)]   # about 100 kB each
    server.append_many(user, "INBOX", attachments)
    source = imap_source(dovecot_user, batch_size=500, max_batch_bytes=250_000)

    with caplog.at_level(logging.DEBUG, logger="inbox_bot.source"):
        mails = list(source.fetch_new())

    batches = [r for r in caplog.records if "requested" in r.getMessage()]
    assert [r.getMessage().split()[3] for r in batches] == ["2", "2", "2"]
    assert [mail.raw for mail in mails] == attachments


def test_log_lines_name_host_and_folder_but_no_message_content(
    dovecot_user: ImapAccount, imap_source: SourceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    append_three(dovecot_user)
    source = imap_source(dovecot_user)

    with caplog.at_level(logging.DEBUG, logger="inbox_bot.source"):
        source.mark_processed([mail.uid for mail in source.fetch_new()])

    text = "\n".join(record.getMessage() for record in caplog.records)
    assert f"127.0.0.1:{dovecot_user.port}/INBOX" in text
    assert "requester" not in text and "開示" not in text and dovecot_user.password not in text


def test_leave_in_place_mode_keeps_messages_and_advances_a_gapless_watermark(
    dovecot_user: ImapAccount, imap_source: SourceFactory
) -> None:
    server, user = dovecot_user.server, dovecot_user.username
    (uid1, _, _), (uid2, _, _), (uid3, _, _) = append_three(dovecot_user)
    source = imap_source(dovecot_user, processed_folder=None)
    uidvalidity = server.uidvalidity(user, "INBOX")

    assert len(list(source.fetch_new())) == 3
    source.mark_processed([str(uid1), str(uid3)])
    assert source.watermark == Watermark(uidvalidity, uid1)   # uid2 not handled yet
    source.mark_processed([str(uid2)])
    assert source.watermark == Watermark(uidvalidity, uid3)

    assert list(source.fetch_new()) == []   # the source remembers its own watermark
    assert server.list_uids(user, "INBOX") == [uid1, uid2, uid3]
    assert not server.folder_exists(user, "Processed")

    later = server.append(user, "INBOX", make_message(4))
    restarted = imap_source(dovecot_user, processed_folder="")
    mails = list(restarted.fetch_new(after_uid=uid3, after_uidvalidity=uidvalidity))
    assert [mail.uid for mail in mails] == [str(later)]
    assert restarted.watermark == Watermark(uidvalidity, uid3)
    restarted.mark_processed([str(later)])
    assert restarted.watermark == Watermark(uidvalidity, later)


def test_after_uid_from_another_uidvalidity_is_ignored(
    dovecot_user: ImapAccount, imap_source: SourceFactory
) -> None:
    append_three(dovecot_user)
    uidvalidity = dovecot_user.server.uidvalidity(dovecot_user.username, "INBOX")
    source = imap_source(dovecot_user, processed_folder=None)

    mails = list(source.fetch_new(after_uid=2, after_uidvalidity=uidvalidity + 1))

    assert len(mails) == 3


def test_copy_and_uid_expunge_are_used_when_server_lacks_move(
    dovecot_user: ImapAccount, imap_source: SourceFactory
) -> None:
    class NoMoveImapSource(ImapSource):
        def _server_supports_move(self, client: IMAPClient) -> bool:
            return False

    server, user = dovecot_user.server, dovecot_user.username
    appended = append_three(dovecot_user)
    bystander = server.append(user, "INBOX", make_message(9), flags=[r"\Deleted"])
    source = NoMoveImapSource(
        host=dovecot_user.host, port=dovecot_user.port, username=user,
        password=dovecot_user.password, security="none",
    )
    try:
        uids = [mail.uid for mail in source.fetch_new() if mail.uid != str(bystander)]
        source.mark_processed(uids)
    finally:
        source.close()

    # UID EXPUNGE removed only ours: another client's \Deleted message is left alone.
    assert server.list_uids(user, "INBOX") == [bystander]
    assert len(server.list_uids(user, "Processed")) == len(appended)


def test_processed_folder_deleted_by_someone_else_is_recreated(
    dovecot_user: ImapAccount, imap_source: SourceFactory
) -> None:
    server, user = dovecot_user.server, dovecot_user.username
    server.append(user, "INBOX", make_message(1))
    source = imap_source(dovecot_user)
    source.mark_processed([mail.uid for mail in source.fetch_new()])
    with server.client(user) as other:
        other.delete_folder("Processed")
    server.append(user, "INBOX", make_message(2))

    source.mark_processed([mail.uid for mail in source.fetch_new()])

    assert server.list_uids(user, "INBOX") == []
    assert len(server.list_uids(user, "Processed")) == 1


def test_wrong_password_fails_at_once_without_retrying(
    dovecot_user: ImapAccount, imap_source: SourceFactory
) -> None:
    source = imap_source(dovecot_user, password="wrong", backoff_initial=5.0)
    started = time.monotonic()

    with pytest.raises(LoginError):
        list(source.fetch_new())
    assert time.monotonic() - started < 4.0


# --------------------------------------------------------------------------- IMAP: failures


def test_reconnects_after_server_restart_mid_session(
    private_dovecot: DovecotServer, imap_source: SourceFactory
) -> None:
    account = private_dovecot.add_user("alice", "pw")
    for number in range(5):
        private_dovecot.append("alice", "INBOX", make_message(number))
    source = imap_source(account, batch_size=2)
    mails = source.fetch_new()
    first = [next(mails), next(mails)]

    private_dovecot.restart()
    source.mark_processed([mail.uid for mail in first])
    rest = list(mails)
    private_dovecot.restart()
    source.mark_processed([mail.uid for mail in rest])

    assert [mail.raw for mail in first + rest] == [make_message(n) for n in range(5)]
    assert private_dovecot.list_uids("alice", "INBOX") == []
    assert len(private_dovecot.list_uids("alice", "Processed")) == 5


def test_reconnects_after_connections_are_killed(
    private_dovecot: DovecotServer, imap_source: SourceFactory
) -> None:
    account = private_dovecot.add_user("bob", "pw")
    private_dovecot.append("bob", "INBOX", make_message(1))
    source = imap_source(account)
    assert len(list(source.fetch_new())) == 1

    assert private_dovecot.kill_connections() >= 1
    private_dovecot.append("bob", "INBOX", make_message(2))

    assert [mail.raw for mail in source.fetch_new()] == [make_message(1), make_message(2)]


def test_backs_off_until_a_stopped_server_comes_back(
    private_dovecot: DovecotServer, imap_source: SourceFactory
) -> None:
    account = private_dovecot.add_user("carol", "pw")
    private_dovecot.append("carol", "INBOX", make_message(1))
    source = imap_source(account, reconnect_attempts=8, backoff_initial=0.05, backoff_max=0.2)
    assert len(list(source.fetch_new())) == 1
    private_dovecot.stop()
    comeback = threading.Timer(0.3, private_dovecot.start)
    comeback.start()
    try:
        mails = list(source.fetch_new())
    finally:
        comeback.join()

    assert [mail.raw for mail in mails] == [make_message(1)]


def test_gives_up_with_source_unavailable_when_server_stays_down(
    private_dovecot: DovecotServer, imap_source: SourceFactory
) -> None:
    account = private_dovecot.add_user("dave", "pw")
    source = imap_source(account, reconnect_attempts=3)
    private_dovecot.stop()

    with pytest.raises(SourceUnavailable, match="after 3 attempt"):
        list(source.fetch_new())


def test_recreated_folder_raises_uidvalidity_changed_instead_of_moving(
    private_dovecot: DovecotServer, imap_source: SourceFactory
) -> None:
    account = private_dovecot.add_user("erin", "pw")
    private_dovecot.append("erin", "Inquiries", make_message(1))
    source = imap_source(account, folder="Inquiries")
    old = list(source.fetch_new())
    private_dovecot.kill_connections()   # e.g. the server was migrated overnight
    with private_dovecot.client("erin") as other:
        other.delete_folder("Inquiries")
        other.create_folder("Inquiries")
    private_dovecot.append("erin", "Inquiries", make_message(2))

    with pytest.raises(UidValidityChanged):
        source.mark_processed([mail.uid for mail in old])

    assert private_dovecot.list_uids("erin", "Processed") == []
    assert [mail.raw for mail in source.fetch_new()] == [make_message(2)]


# --------------------------------------------------------------------------- IMAP: TLS


def tls_source(account: ImapAccount, imap_source: SourceFactory, security: str,
               **options: Any) -> ImapSource:
    port = account.imaps_port if security == "tls" else account.port
    return imap_source(account, port=port, security=security, reconnect_attempts=1, **options)


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_connection_verifies_the_server_certificate_against_the_given_ca(
    dovecot_user: ImapAccount, imap_source: SourceFactory, security: str
) -> None:
    dovecot_user.server.append(dovecot_user.username, "INBOX", make_message(1))
    source = tls_source(dovecot_user, imap_source, security, ca_file=dovecot_user.ca_path)

    assert [mail.raw for mail in source.fetch_new()] == [make_message(1)]


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_connection_accepts_a_custom_ssl_context(
    dovecot_user: ImapAccount, imap_source: SourceFactory, security: str
) -> None:
    context = ssl.create_default_context(cafile=str(dovecot_user.ca_path))
    source = tls_source(dovecot_user, imap_source, security, ssl_context=context)

    assert list(source.fetch_new()) == []


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_connection_refuses_a_certificate_the_system_does_not_trust(
    dovecot_user: ImapAccount, imap_source: SourceFactory, security: str
) -> None:
    source = tls_source(dovecot_user, imap_source, security, backoff_initial=5.0)

    with pytest.raises(ssl.SSLCertVerificationError):
        list(source.fetch_new())


# --------------------------------------------------------------------------- Maildir


def deliver(maildir: Path, name: str, raw: bytes, delivered: datetime,
            subdir: str = "new") -> Path:
    path = maildir / subdir / name
    path.write_bytes(raw)
    stamp = delivered.timestamp()
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    return tmp_path / "Maildir"


def test_maildir_source_creates_a_missing_maildir(maildir: Path) -> None:
    source = MaildirSource(maildir)

    assert list(source.fetch_new()) == []
    assert all((maildir / sub).is_dir() for sub in ("new", "cur", "tmp"))


def test_maildir_source_yields_key_stable_uidvalidity_delivery_time_and_exact_bytes(
    maildir: Path,
) -> None:
    MaildirSource(maildir)
    first = datetime(2024, 4, 1, 0, 0, 0, tzinfo=timezone.utc)
    deliver(maildir, "1711929600.M1P1.host", make_message(1), first)
    deliver(maildir, "1711929601.M2P1.host:2,S", make_message(2), first + timedelta(hours=1),
            subdir="cur")

    source: Source = MaildirSource(maildir)
    mails = list(source.fetch_new())

    assert [mail.uid for mail in mails] == ["1711929600.M1P1.host", "1711929601.M2P1.host"]
    assert [mail.raw for mail in mails] == [make_message(1), make_message(2)]
    assert [mail.received_at for mail in mails] == [first, first + timedelta(hours=1)]
    assert all(mail.received_at.tzinfo is timezone.utc for mail in mails)
    assert {mail.uidvalidity for mail in mails} == {MaildirSource(maildir).uidvalidity}
    assert mails[0].mailbox == f"maildir:{maildir.resolve()}"


def test_maildir_uidvalidity_survives_moving_the_maildir(maildir: Path, tmp_path: Path) -> None:
    before = MaildirSource(maildir).uidvalidity
    moved = tmp_path / "elsewhere"
    shutil.move(maildir, moved)

    assert MaildirSource(moved).uidvalidity == before


def test_maildir_mark_processed_moves_into_processed_subfolder_keeping_flags(
    maildir: Path,
) -> None:
    source = MaildirSource(maildir)
    now = datetime.now(timezone.utc)
    deliver(maildir, "a.host", make_message(1), now)
    deliver(maildir, "b.host:2,RS", make_message(2), now, subdir="cur")

    for mail in source.fetch_new():
        source.mark_processed([mail.uid])

    processed = maildir / ".Processed"
    assert sorted(p.name for p in (processed / "cur").iterdir()) == ["a.host:2,", "b.host:2,RS"]
    assert (processed / "maildirfolder").exists()
    assert list(source.fetch_new()) == []


def test_maildir_skip_callback_prevents_refetch_and_moves_journaled_messages(
    maildir: Path,
) -> None:
    source = MaildirSource(maildir)
    now = datetime.now(timezone.utc)
    deliver(maildir, "old.host", make_message(1), now)
    deliver(maildir, "new.host", make_message(2), now + timedelta(seconds=1))

    mails = list(source.fetch_new(skip=lambda uidvalidity, uid: uid == "old.host"))

    assert [mail.uid for mail in mails] == ["new.host"]
    assert (maildir / ".Processed" / "cur" / "old.host:2,").exists()


def test_maildir_message_vanishing_between_listing_and_reading_is_skipped(
    maildir: Path,
) -> None:
    source = MaildirSource(maildir)
    now = datetime.now(timezone.utc)
    deliver(maildir, "first.host", make_message(1), now)
    doomed = deliver(maildir, "second.host", make_message(2), now + timedelta(seconds=1))
    deliver(maildir, "third.host", make_message(3), now + timedelta(seconds=2))

    mails = source.fetch_new()
    received: list[RawMail] = [next(mails)]   # the folder has been listed by now
    doomed.unlink()
    received.extend(mails)

    assert [mail.uid for mail in received] == ["first.host", "third.host"]


def test_maildir_message_renamed_by_a_mail_client_after_listing_is_still_read(
    maildir: Path,
) -> None:
    source = MaildirSource(maildir)
    now = datetime.now(timezone.utc)
    deliver(maildir, "first.host", make_message(1), now)
    renamed = deliver(maildir, "second.host", make_message(2), now + timedelta(seconds=1))

    mails = source.fetch_new()
    received = [next(mails)]
    renamed.rename(maildir / "cur" / "second.host:2,S")   # a human opened it
    received.extend(mails)

    assert [mail.raw for mail in received] == [make_message(1), make_message(2)]
    source.mark_processed(["second.host"])
    assert (maildir / ".Processed" / "cur" / "second.host:2,S").exists()


def test_maildir_leave_in_place_mode_never_moves(maildir: Path) -> None:
    source = MaildirSource(maildir, processed_folder=None)
    deliver(maildir, "a.host", make_message(1), datetime.now(timezone.utc))

    source.mark_processed([mail.uid for mail in source.fetch_new()])

    assert (maildir / "new" / "a.host").exists()
    assert not (maildir / ".Processed").exists()


def test_both_sources_satisfy_the_source_protocol(
    dovecot_user: ImapAccount, maildir: Path
) -> None:
    sources: list[Source] = [
        MaildirSource(maildir),
        ImapSource(dovecot_user.host, dovecot_user.port, dovecot_user.username,
                   dovecot_user.password, security="none"),
    ]
    for source in sources:
        assert list(source.fetch_new(skip=lambda uidvalidity, uid: False)) == []
        source.mark_processed([])
        source.close()
