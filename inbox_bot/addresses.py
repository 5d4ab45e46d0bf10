"""Signed reply addresses for staff: ``inquiries+<token>@domain`` (``.`` works as well as ``+``).

The token names the case and the day it was issued, and carries an HMAC over case id, staff
address and issue day with the configured secret. It verifies only for the staff member it
was made for, only for that case, and only until it expires. Tokens are redacted in logs.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Iterable

EPOCH = date(2020, 1, 1)
MAC_CHARS = 20                     # 100 bits of base32
_TOKEN_RE = re.compile(r"^(\d{1,9})-([0-9a-z]{1,6})-([a-z2-7]{" + str(MAC_CHARS) + r"})$")


@dataclass(frozen=True)
class Token:
    case_id: int
    issued: date
    mac: str

    def __str__(self) -> str:
        return f"{self.case_id}-{_b36((self.issued - EPOCH).days)}-{self.mac}"


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _mac(secret: str, case_id: int, staff: str, issued: date) -> str:
    msg = f"{case_id}|{staff.strip().lower()}|{issued.isoformat()}".encode()
    digest = hmac.new(secret.encode(), msg, hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower()[:MAC_CHARS]


def make_token(secret: str, case_id: int, staff: str, issued: date) -> Token:
    if not secret:
        raise ValueError("no token secret configured (staff.token_secret)")
    return Token(case_id, issued, _mac(secret, case_id, staff, issued))


def reply_address(bot_address: str, token: Token) -> str:
    local, _, domain = bot_address.partition("@")
    return f"{local}+{token}@{domain}"


def token_in(addresses: Iterable[str], bot_address: str) -> str | None:
    """The raw token from the first recipient that is one of our reply addresses."""
    local, _, domain = bot_address.lower().partition("@")
    for address in addresses:
        a_local, _, a_domain = address.lower().partition("@")
        if a_domain == domain and len(a_local) > len(local) + 1 and a_local.startswith(local) \
                and a_local[len(local)] in "+.":
            return a_local[len(local) + 1:]
    return None


class TokenError(Exception):
    """Why a reply token was not accepted (for the record; never sent to the sender)."""


def verify(secret: str, raw: str, staff: str, *, today: date, ttl_days: int) -> Token:
    m = _TOKEN_RE.match(raw.strip().lower())
    if not m:
        raise TokenError("malformed token")
    case_id = int(m.group(1))
    issued = EPOCH + _days(m.group(2))
    expected = _mac(secret, case_id, staff, issued)
    if not hmac.compare_digest(expected, m.group(3)):
        raise TokenError("token does not verify for this sender and case")
    if (today - issued).days > ttl_days:
        raise TokenError(f"token expired (issued {issued.isoformat()})")
    if issued > today:
        raise TokenError("token issued in the future")
    return Token(case_id, issued, m.group(3))


def _days(b36: str) -> timedelta:
    return timedelta(days=int(b36, 36))


_REDACT = re.compile(r"([A-Za-z0-9._%-]+)[+.](\d{1,9}-[0-9a-z]{1,6}-)[a-z2-7]{" + str(MAC_CHARS) + r"}@", re.I)


def redact(text: str) -> str:
    """Hide the MAC of any reply token in a log line (Zulip's redact_email_address)."""
    return _REDACT.sub(lambda m: f"{m.group(1)}+{m.group(2)}{'x' * 6}@", text)
