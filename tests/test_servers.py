"""The test servers themselves: they must behave like real servers, or other tests prove nothing."""
from __future__ import annotations

import mailbox
import smtplib
import ssl
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from tests.servers import (
    DovecotServer,
    ImapAccount,
    SmtpServer,
    _session_pids,
    ensure_dovecot,
)

SmtpFactory = Callable[..., SmtpServer]


def inquiry(subject: str = "開示請求") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "requester@example.jp"
    message["To"] = "privacy@example.com"
    message["Subject"] = subject
    message.set_content("保有個人データの開示を請求します。")
    return message


# --------------------------------------------------------------------------- Dovecot


def test_ensure_dovecot_finds_the_installed_binary() -> None:
    assert Path(ensure_dovecot()).name == "dovecot"


def test_append_sets_internaldate_and_flags_and_returns_the_uid(
    dovecot_user: ImapAccount,
) -> None:
    server, user = dovecot_user.server, dovecot_user.username
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=9)))

    uid = server.append(user, "INBOX", b"Subject: a\r\n\r\nbody\r\n", internaldate=when,
                        flags=[r"\Seen"])

    assert server.list_uids(user, "INBOX") == [uid]
    assert server.fetch(user, "INBOX") == {uid: b"Subject: a\r\n\r\nbody\r\n"}
    assert b"\\Seen" in server.get_flags(user, "INBOX")[uid]
    with server.client(user) as client:
        client.select_folder("INBOX", readonly=True)
        assert client.fetch([uid], ["INTERNALDATE"])[uid][b"INTERNALDATE"] == when


def test_each_fresh_user_starts_with_an_empty_mailbox(dovecot: DovecotServer) -> None:
    first = dovecot.add_user("isolation-a", "pw-a")
    second = dovecot.add_user("isolation-b", "pw-b")
    dovecot.append(first.username, "INBOX", b"Subject: only for a\r\n\r\n")

    assert dovecot.list_uids(second.username, "INBOX") == []
    assert first.server is second.server is dovecot


def test_multiappend_stores_many_messages_in_order(dovecot_user: ImapAccount) -> None:
    server, user = dovecot_user.server, dovecot_user.username
    messages = [f"Subject: {n}\r\n\r\n{n}\r\n".encode() for n in range(50)]

    server.append_many(user, "Archive", messages, chunk=20)

    assert list(server.fetch(user, "Archive").values()) == messages


def test_dovecot_offers_starttls_and_implicit_tls_with_its_own_ca(
    dovecot_user: ImapAccount,
) -> None:
    context = ssl.create_default_context(cafile=str(dovecot_user.ca_path))
    with IMAPClient(dovecot_user.host, dovecot_user.imaps_port, ssl_context=context) as client:
        client.login(dovecot_user.username, dovecot_user.password)
    with IMAPClient(dovecot_user.host, dovecot_user.port, ssl=False) as client:
        client.starttls(context)
        client.login(dovecot_user.username, dovecot_user.password)


def test_restart_keeps_port_mail_and_uidvalidity(private_dovecot: DovecotServer) -> None:
    private_dovecot.add_user("frank", "pw")
    uid = private_dovecot.append("frank", "INBOX", b"Subject: keep\r\n\r\n")
    uidvalidity = private_dovecot.uidvalidity("frank", "INBOX")
    port = private_dovecot.port

    private_dovecot.restart()

    assert private_dovecot.port == port
    assert private_dovecot.list_uids("frank", "INBOX") == [uid]
    assert private_dovecot.uidvalidity("frank", "INBOX") == uidvalidity


def test_restart_and_kill_connections_drop_open_clients(private_dovecot: DovecotServer) -> None:
    private_dovecot.add_user("grace", "pw")
    with private_dovecot.client("grace") as client:
        private_dovecot.kill_connections()
        with pytest.raises(IMAPClient.AbortError):
            client.noop()
    with private_dovecot.client("grace") as client:
        private_dovecot.restart()
        with pytest.raises((IMAPClient.AbortError, OSError)):
            client.noop()


def test_stop_leaves_no_dovecot_process_behind() -> None:
    ensure_dovecot()
    server = DovecotServer(tls=False).start()
    session = server._process.pid if server._process else -1
    server.add_user("henry", "pw")
    server.append("henry", "INBOX", b"Subject: x\r\n\r\n")

    server.cleanup()

    assert _session_pids(session) == []
    assert not server.root.exists()


def test_dovecot_without_tls_offers_no_starttls() -> None:
    ensure_dovecot()
    plain = DovecotServer(tls=False)
    with plain:
        plain.add_user("ivan", "pw")
        with IMAPClient(plain.host, plain.port, ssl=False) as client:
            assert not client.has_capability("STARTTLS")
            client.login("ivan", "pw")


# --------------------------------------------------------------------------- SMTP


def test_smtp_server_receives_plain_mail_in_memory_and_maildir(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        client.send_message(inquiry(), from_addr="bounce@example.com",
                            to_addrs=["privacy@example.com", "staff@example.com"])

    [mail] = smtp_server.wait_for(1)
    assert mail.mail_from == "bounce@example.com"
    assert mail.rcpt_tos == ("privacy@example.com", "staff@example.com")
    assert b"Subject: =?utf-8?b?" in mail.raw
    assert mail.auth_user is None
    stored = mailbox.Maildir(tmp_path / "smtp-maildir")
    assert [message.get_payload(decode=True).decode() for message in stored] == [
        "保有個人データの開示を請求します。\n"
    ]


def test_smtp_server_keeps_dot_stuffed_lines_and_8bit_bytes(smtp_server: SmtpServer) -> None:
    raw = "Subject: dots\r\n\r\n.leading dot\r\n日本語\r\n".encode()
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        client.sendmail("a@example.com", ["b@example.com"], raw)

    assert smtp_server.wait_for(1)[0].raw == raw


def test_smtp_starttls_verifies_against_the_test_ca(smtp_server_factory: SmtpFactory) -> None:
    server = smtp_server_factory(security="starttls", require_starttls=True)

    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.starttls(context=server.client_ssl_context())
        client.send_message(inquiry("starttls"))

    assert server.wait_for(1)[0].rcpt_tos == ("privacy@example.com",)


def test_smtp_starttls_fails_without_the_test_ca(smtp_server_factory: SmtpFactory) -> None:
    server = smtp_server_factory(security="starttls")

    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ssl.create_default_context())


def test_smtp_required_starttls_rejects_plaintext_mail(smtp_server_factory: SmtpFactory) -> None:
    server = smtp_server_factory(security="starttls", require_starttls=True)

    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPSenderRefused):
            client.send_message(inquiry())
    assert server.messages == []


def test_smtp_implicit_tls(smtp_server_factory: SmtpFactory) -> None:
    server = smtp_server_factory(security="tls")

    with smtplib.SMTP_SSL(server.host, server.port, timeout=5,
                          context=server.client_ssl_context()) as client:
        client.send_message(inquiry("tls"))

    assert server.wait_for(1)[0].mail_from == "requester@example.jp"


def test_smtp_implicit_tls_fails_without_the_test_ca(smtp_server_factory: SmtpFactory) -> None:
    server = smtp_server_factory(security="tls")

    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(server.host, server.port, timeout=5,
                         context=ssl.create_default_context())


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtp_auth_over_starttls_records_the_user(
    smtp_server_factory: SmtpFactory, mechanism: str
) -> None:
    server = smtp_server_factory(security="starttls", auth=("bot", "s3cret"))

    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.starttls(context=server.client_ssl_context())
        client.ehlo()
        client.user, client.password = "bot", "s3cret"
        method: Any = getattr(client, f"auth_{mechanism.lower()}")
        client.auth(mechanism, method, initial_response_ok=False)
        client.send_message(inquiry())

    assert server.wait_for(1)[0].auth_user == "bot"


def test_smtp_auth_rejects_a_wrong_password_and_unauthenticated_mail(
    smtp_server_factory: SmtpFactory,
) -> None:
    server = smtp_server_factory(security="starttls", auth=("bot", "s3cret"))

    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.starttls(context=server.client_ssl_context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("bot", "wrong")
        with pytest.raises(smtplib.SMTPSenderRefused):
            client.send_message(inquiry())
    assert server.messages == []


def test_smtp_auth_is_not_offered_in_plaintext_when_tls_is_available(
    smtp_server_factory: SmtpFactory,
) -> None:
    server = smtp_server_factory(security="starttls", auth=("bot", "s3cret"))

    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.ehlo()
        assert not client.has_extn("auth")


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_auth_over_plaintext_when_explicitly_allowed(smtp_server_factory: SmtpFactory) -> None:
    server = smtp_server_factory(auth=("bot", "s3cret"), auth_require_tls=False)

    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.login("bot", "s3cret")
        client.send_message(inquiry())

    assert server.wait_for(1)[0].auth_user == "bot"


def test_smtp_server_can_go_down_and_come_back_on_the_same_port(
    smtp_server: SmtpServer,
) -> None:
    port = smtp_server.port
    with smtplib.SMTP(smtp_server.host, port, timeout=5) as client:
        client.send_message(inquiry("before"))

    smtp_server.stop()
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP(smtp_server.host, port, timeout=5)

    smtp_server.start()
    assert smtp_server.port == port
    with smtplib.SMTP(smtp_server.host, port, timeout=5) as client:
        client.send_message(inquiry("after"))
    subjects = [mail.raw.split(b"Subject: ")[1].split(b"\n")[0].strip()
                for mail in smtp_server.wait_for(2)]
    assert subjects == [b"before", b"after"]


def test_smtp_reject_next_answers_with_a_temporary_failure_once(smtp_server: SmtpServer) -> None:
    smtp_server.reject_next("451 4.3.0 Try again later")

    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.send_message(inquiry())
        assert refused.value.smtp_code == 451
        client.send_message(inquiry())

    assert len(smtp_server.wait_for(1)) == 1


def test_wait_for_times_out_when_nothing_arrives(smtp_server: SmtpServer) -> None:
    with pytest.raises(TimeoutError, match="expected 1 messages"):
        smtp_server.wait_for(1, timeout=0.1)
