"""Configuration: a TOML file, every key overridable by ``INBOX_BOT_<SECTION>_<KEY>``.

Start-up fails with one ``ConfigError`` line naming the offending key; library code never calls
``sys.exit``. Secrets come from the environment or from ``*_file`` keys, never from the repo.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email.utils import parseaddr

ENV_PREFIX = "INBOX_BOT_"
CONFIG_ENV = "INBOX_BOT_CONFIG"
SECURITY_MODES = ("none", "starttls", "tls")


class ConfigError(Exception):
    """A setting is wrong or missing; the message names the key."""


@dataclass(frozen=True)
class MailboxConfig:
    type: str = "maildir"              # "imap" | "maildir"
    host: str = ""
    port: int = 0                      # 0: 993 for tls, else 143
    username: str = ""
    password: str = ""
    password_file: str = ""
    security: str = "tls"
    ca_file: str = ""                  # extra CA bundle for self-hosted servers
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    path: str = "var/mailbox"          # maildir
    batch_size: int = 500


@dataclass(frozen=True)
class SmtpConfig:
    transport: str = "file"            # "smtp" | "file"
    host: str = ""
    port: int = 0                      # 0: 465 for tls, 587 for starttls, else 25
    username: str = ""
    password: str = ""
    password_file: str = ""
    security: str = "starttls"
    ca_file: str = ""
    timeout: float = 30.0
    outbox_dir: str = "var/outbox"     # file transport
    max_attempts: int = 12
    retry_base_seconds: float = 30.0
    connections: int = 4               # parallel connections while a long poll runs


@dataclass(frozen=True)
class BotConfig:
    address: str = "inquiries@ikaclo.example.jp"
    organisation: str = "Ikaclo"
    timezone: str = "Asia/Tokyo"
    poll_interval: int = 60
    send_interval: int = 30
    case_prefix: str = "PRIV"
    horizon_days: int = 14             # first connection: older mail is not acknowledged
    sender_budget: int = 5             # automatic mails per sender per budget window
    global_budget: int = 500           # automatic mails in all per budget window
    budget_window_minutes: int = 60
    reopen_days: int = 30              # a reply to a closed case reopens it within this window
    workers: int = -1                  # parse/classify processes; -1: one per CPU beyond the first


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///inbox-bot.sqlite3"


@dataclass(frozen=True)
class ClassifierConfig:
    model_path: str = ""               # empty: the model shipped with the package


@dataclass(frozen=True)
class StaffConfig:
    addresses: list[str] = field(default_factory=list)   # who may act on cases by mail
    supervisor: str = ""                                   # escalations, weekly summary
    dpo: str = ""                                          # copied on GDPR overdue escalations
    languages: dict[str, str] = field(default_factory=dict)   # address -> "en" | "ja"
    default_language: str = "en"
    token_secret: str = ""                                 # HMAC key for reply addresses
    token_secret_file: str = ""
    token_ttl_days: int = 30
    digest_time: str = "08:30"                             # local time of the daily digest
    summary_weekday: str = "mon"                           # weekly summary day and time
    summary_time: str = "09:00"
    excerpt: bool = True                                   # short excerpt of the inquiry in digests
    reminder_time: str = "09:00"                           # local time of reminder/escalation run


@dataclass(frozen=True)
class Config:
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    bot: BotConfig = field(default_factory=BotConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    staff: StaffConfig = field(default_factory=StaffConfig)
    deadlines: dict[str, Any] = field(default_factory=dict)   # passed to deadlines.Policy
    source_file: str = ""

    @property
    def domain(self) -> str:
        return self.bot.address.rpartition("@")[2]

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.bot.timezone)

    def mailbox_password(self) -> str:
        return _secret(self.mailbox.password, self.mailbox.password_file, "mailbox")

    def smtp_password(self) -> str:
        return _secret(self.smtp.password, self.smtp.password_file, "smtp")

    def token_secret(self) -> str:
        return _secret(self.staff.token_secret, self.staff.token_secret_file, "staff", "token_secret_file")

    def staff_language(self, address: str) -> str:
        return self.staff.languages.get(address.lower(), self.staff.default_language)


_SECTIONS: dict[str, type] = {
    "mailbox": MailboxConfig,
    "smtp": SmtpConfig,
    "bot": BotConfig,
    "database": DatabaseConfig,
    "classifier": ClassifierConfig,
    "staff": StaffConfig,
}


def load(path: str | os.PathLike[str] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (``path`` or ``$INBOX_BOT_CONFIG``), apply env overrides, validate."""
    env = os.environ if environ is None else environ
    path = path or env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    for name in data:
        if name not in _SECTIONS and name != "deadlines":
            raise ConfigError(f"unknown config section [{name}]")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = _build_section(name, cls, raw, env)
    cfg = Config(**sections, deadlines=dict(data.get("deadlines", {})), source_file=str(path or ""))
    validate(cfg)
    return cfg


def _build_section(name: str, cls: type, raw: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown setting {name}.{key}")
    values: dict[str, Any] = {}
    for key, f in known.items():
        default = f.default if f.default_factory is MISSING else f.default_factory()  # type: ignore[misc]
        value = raw.get(key, default)
        env_key = f"{ENV_PREFIX}{name.upper()}_{key.upper()}"
        if env_key in env:
            value = env[env_key]
        values[key] = _coerce(f"{name}.{key}", value, type(default))
    return cls(**values)


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is list:
        if isinstance(value, str):      # from the environment: comma-separated
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"setting {key} must be a list of strings, got {value!r}")
        return [v.strip().lower() if "@" in v else v.strip() for v in value]
    if kind is dict:
        if isinstance(value, str):      # from the environment: "a@x=ja,b@y=en"
            value = dict(p.split("=", 1) for p in value.split(",") if "=" in p)
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"setting {key} must be a table of strings, got {value!r}")
        return {k.strip().lower(): v.strip() for k, v in value.items()}
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        if kind is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {key} must be {kind.__name__}, got {value!r}") from None
    return value


def validate(cfg: Config) -> None:
    m, s, b = cfg.mailbox, cfg.smtp, cfg.bot
    if m.type not in ("imap", "maildir"):
        raise ConfigError(f"setting mailbox.type must be 'imap' or 'maildir', got {m.type!r}")
    if m.type == "imap":
        for key in ("host", "username"):
            if not getattr(m, key):
                raise ConfigError(f"setting mailbox.{key} is required when mailbox.type = 'imap'")
        if not (m.password or m.password_file):
            raise ConfigError("setting mailbox.password or mailbox.password_file is required "
                              "when mailbox.type = 'imap'")
    elif not m.path:
        raise ConfigError("setting mailbox.path is required when mailbox.type = 'maildir'")
    if m.security not in SECURITY_MODES:
        raise ConfigError(f"setting mailbox.security must be one of {SECURITY_MODES}, got {m.security!r}")
    for section, port in (("mailbox", m.port), ("smtp", s.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"setting {section}.port must be between 0 and 65535, got {port}")
    if m.batch_size < 1:
        raise ConfigError("setting mailbox.batch_size must be at least 1")
    if s.transport not in ("smtp", "file"):
        raise ConfigError(f"setting smtp.transport must be 'smtp' or 'file', got {s.transport!r}")
    if s.transport == "smtp" and not s.host:
        raise ConfigError("setting smtp.host is required when smtp.transport = 'smtp'")
    if s.connections < 1:
        raise ConfigError("setting smtp.connections must be at least 1")
    if s.security not in SECURITY_MODES:
        raise ConfigError(f"setting smtp.security must be one of {SECURITY_MODES}, got {s.security!r}")
    if s.username and not (s.password or s.password_file):
        raise ConfigError("setting smtp.password or smtp.password_file is required with smtp.username")
    _, addr = parseaddr(b.address)
    if not addr or "@" not in addr or addr != b.address.strip() or any(c in addr for c in "\r\n "):
        raise ConfigError(f"setting bot.address must be a plain e-mail address, got {b.address!r}")
    try:
        ZoneInfo(b.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"setting bot.timezone is not a known time zone: {b.timezone!r}") from None
    if b.workers < -1:
        raise ConfigError("setting bot.workers must be -1 (one per CPU beyond the first), 0 or more")
    for key in ("poll_interval", "send_interval"):
        if getattr(b, key) < 1:
            raise ConfigError(f"setting bot.{key} must be at least 1 second")
    if not b.case_prefix.isalnum():
        raise ConfigError("setting bot.case_prefix must be letters and digits only")
    if not cfg.database.url or "://" not in cfg.database.url:
        raise ConfigError(f"setting database.url must be an SQLAlchemy URL, got {cfg.database.url!r}")
    for section, pw_file in (("mailbox", m.password_file), ("smtp", s.password_file)):
        if pw_file and not Path(pw_file).is_file():
            raise ConfigError(f"setting {section}.password_file: file not found: {pw_file}")
    st = cfg.staff
    for i, address in enumerate(st.addresses):
        if "@" not in address or any(c in address for c in "\r\n <>,"):
            raise ConfigError(f"setting staff.addresses[{i}] is not an e-mail address: {address!r}")
    for key in ("supervisor", "dpo"):
        value = getattr(st, key)
        if value and ("@" not in value or any(c in value for c in "\r\n <>,")):
            raise ConfigError(f"setting staff.{key} is not an e-mail address: {value!r}")
    for address, lang in (*st.languages.items(), ("default_language", st.default_language)):
        if lang not in ("en", "ja"):
            raise ConfigError(f"setting staff.languages: {address} must be 'en' or 'ja', got {lang!r}")
    for key in ("digest_time", "summary_time", "reminder_time"):
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", getattr(st, key)):
            raise ConfigError(f"setting staff.{key} must be HH:MM, got {getattr(st, key)!r}")
    if st.summary_weekday not in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"):
        raise ConfigError(f"setting staff.summary_weekday must be mon..sun, got {st.summary_weekday!r}")
    if st.token_ttl_days < 1:
        raise ConfigError("setting staff.token_ttl_days must be at least 1")
    if st.token_secret_file and not Path(st.token_secret_file).is_file():
        raise ConfigError(f"setting staff.token_secret_file: file not found: {st.token_secret_file}")
    if st.addresses and not (st.token_secret or st.token_secret_file):
        raise ConfigError("setting staff.token_secret (or staff.token_secret_file) is required "
                          "when staff.addresses is set: it signs the digest reply addresses")
    if cfg.deadlines:
        from . import deadlines   # late: keeps config importable on its own
        try:
            deadlines.Policy.from_mapping(cfg.deadlines)
        except ValueError as e:
            raise ConfigError(f"setting deadlines: {e}") from None


def _secret(value: str, file: str, section: str, key: str = "password_file") -> str:
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"setting {section}.{key} cannot be read: {e}") from None
    return value
