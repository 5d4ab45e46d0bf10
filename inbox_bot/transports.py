"""Outgoing transports, one interface (Django's ``open/close/send`` contract).

``SmtpTransport`` for production (none / STARTTLS / implicit TLS, optional AUTH),
``FileTransport`` for the embedded default (one .eml per mail), ``MemoryTransport`` for tests.
"""
from __future__ import annotations

import hashlib
import logging
import os
import smtplib
import ssl
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)


class TransportError(Exception):
    def __init__(self, message: str, *, permanent: bool = False, connection_lost: bool = False):
        super().__init__(message)
        self.permanent = permanent            # 5xx: retrying will not help
        self.connection_lost = connection_lost


class Transport(Protocol):
    def open(self) -> None: ...
    def send(self, sender: str, recipients: list[str], raw: bytes) -> None: ...
    def close(self) -> None: ...


class SmtpTransport:
    shareable = True          # works from a forked process (see App.run_once)
    def __init__(self, host: str, port: int = 0, *, security: str = "starttls", username: str = "",
                 password: str = "", timeout: float = 30.0, ca_file: str = "",
                 local_hostname: str | None = None) -> None:
        self.host, self.security = host, security
        self.port = port or {"tls": 465, "starttls": 587}.get(security, 25)
        self.username, self.password, self.timeout = username, password, timeout
        self.ca_file, self.local_hostname = ca_file, local_hostname
        self._conn: smtplib.SMTP | None = None

    def _context(self) -> ssl.SSLContext:
        # Certificates are always verified; a private CA can be added for self-hosted relays.
        return ssl.create_default_context(cafile=self.ca_file or None)

    def fresh(self) -> "SmtpTransport":
        """The same settings, its own connection (one per sending thread)."""
        return SmtpTransport(self.host, self.port, security=self.security, username=self.username,
                             password=self.password, timeout=self.timeout, ca_file=self.ca_file,
                             local_hostname=self.local_hostname)

    def open(self) -> None:
        if self._conn is not None:
            return
        try:
            if self.security == "tls":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                      context=self._context(),
                                                      local_hostname=self.local_hostname)
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout,
                                    local_hostname=self.local_hostname)
                if self.security == "starttls":
                    conn.starttls(context=self._context())
            if self.username:
                conn.login(self.username, self.password)
        except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
            raise TransportError(f"cannot connect to SMTP {self.host}:{self.port}: {e}",
                                 connection_lost=True) from e
        self._conn = conn

    def send(self, sender: str, recipients: list[str], raw: bytes) -> None:
        if self._conn is None:
            self.open()
        assert self._conn is not None
        try:
            refused = self._conn.sendmail(sender, recipients, raw)
        except smtplib.SMTPRecipientsRefused as e:
            raise TransportError(f"recipient refused: {_codes(e.recipients)}", permanent=_all_5xx(e.recipients)) from e
        except smtplib.SMTPResponseException as e:
            raise TransportError(f"SMTP {e.smtp_code}: {_text(e.smtp_error)}",
                                 permanent=500 <= e.smtp_code < 600) from e
        except (OSError, smtplib.SMTPException) as e:
            self._conn = None
            raise TransportError(f"SMTP connection lost: {e}", connection_lost=True) from e
        if refused:
            raise TransportError(f"recipient refused: {_codes(refused)}", permanent=_all_5xx(refused))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._conn = None


def _text(b: bytes | str) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def _codes(refused: dict) -> str:
    return ", ".join(f"{code} {_text(msg)[:80]}" for code, msg in refused.values())


def _all_5xx(refused: dict) -> bool:
    return all(500 <= code < 600 for code, _ in refused.values())


class FileTransport:
    """Writes each mail to ``<dir>/<sha1 of Message-ID>.eml`` (idempotent on retry)."""

    shareable = True

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TransportError(f"cannot create outbox directory {self.directory}: {e}") from e

    def send(self, sender: str, recipients: list[str], raw: bytes) -> None:
        name = hashlib.sha1(raw.split(b"Message-ID:", 1)[-1][:300]).hexdigest()[:20] + ".eml"
        tmp = self.directory / (name + ".tmp")
        try:
            tmp.write_bytes(raw)
            os.replace(tmp, self.directory / name)
        except OSError as e:
            raise TransportError(f"cannot write {name}: {e}") from e

    def close(self) -> None:
        pass


class MemoryTransport:
    """Keeps mail on the instance (tests)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], bytes]] = []
        self.fail_with: TransportError | None = None

    def open(self) -> None:
        if self.fail_with is not None and self.fail_with.connection_lost:
            raise self.fail_with

    def send(self, sender: str, recipients: list[str], raw: bytes) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((sender, list(recipients), raw))

    def close(self) -> None:
        pass
