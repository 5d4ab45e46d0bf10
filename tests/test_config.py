"""Configuration: defaults, the TOML file, INBOX_BOT_<SECTION>_<KEY> overrides, and one-line
errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from inbox_bot import config as config_mod
from inbox_bot.config import Config, ConfigError

IMAP = {"INBOX_BOT_MAILBOX_TYPE": "imap", "INBOX_BOT_MAILBOX_HOST": "imap.example.jp",
        "INBOX_BOT_MAILBOX_USERNAME": "inquiries@ikaclo.example.jp"}


def load(tmp_path: Path, toml: str | None = None, env: dict[str, str] | None = None) -> Config:
    path = None
    if toml is not None:
        path = tmp_path / "inbox-bot.toml"
        path.write_text(toml, encoding="utf-8")
    return config_mod.load(path, env or {})


def config_error(tmp_path: Path, toml: str | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, toml, env)
    message = str(err.value)
    assert "\n" not in message and "\r" not in message and message.strip() == message
    return message


def test_defaults_load_without_a_file(tmp_path):
    cfg = load(tmp_path)
    assert cfg.mailbox.type == "maildir" and cfg.smtp.transport == "file"
    assert cfg.bot.address == "inquiries@ikaclo.example.jp" and cfg.domain == "ikaclo.example.jp"
    assert str(cfg.tz) == "Asia/Tokyo"
    assert cfg.bot.case_prefix == "PRIV" and cfg.smtp.max_attempts == 12
    assert cfg.deadlines == {} and cfg.source_file == ""


def test_values_come_from_the_toml_file(tmp_path):
    cfg = load(tmp_path, """
[mailbox]
type = "imap"
host = "imap.example.jp"
port = 993
username = "inquiries@ikaclo.example.jp"
password = "from-file"
[smtp]
transport = "smtp"
host = "smtp.example.jp"
security = "tls"
retry_base_seconds = 10
[bot]
timezone = "Europe/Berlin"
sender_budget = 3
[deadlines]
internal_margin_bd = 3
""")
    assert (cfg.mailbox.type, cfg.mailbox.host, cfg.mailbox.port) == ("imap", "imap.example.jp", 993)
    assert cfg.mailbox_password() == "from-file"
    assert (cfg.smtp.transport, cfg.smtp.security, cfg.smtp.retry_base_seconds) == ("smtp", "tls", 10.0)
    assert str(cfg.tz) == "Europe/Berlin" and cfg.bot.sender_budget == 3
    assert cfg.deadlines == {"internal_margin_bd": 3}
    assert cfg.source_file.endswith("inbox-bot.toml")


def test_the_config_path_can_come_from_inbox_bot_config(tmp_path):
    path = tmp_path / "elsewhere.toml"
    path.write_text('[bot]\norganisation = "Elsewhere"\n')
    assert config_mod.load(None, {"INBOX_BOT_CONFIG": str(path)}).bot.organisation == "Elsewhere"


def test_an_environment_variable_beats_the_file(tmp_path):
    cfg = load(tmp_path, '[bot]\norganisation = "From file"\npoll_interval = 60\n',
               {"INBOX_BOT_BOT_ORGANISATION": "From env", "INBOX_BOT_BOT_POLL_INTERVAL": "15",
                "INBOX_BOT_DATABASE_URL": "postgresql://inbox@db/inbox"})
    assert cfg.bot.organisation == "From env"
    assert cfg.bot.poll_interval == 15
    assert cfg.database.url == "postgresql://inbox@db/inbox"


def test_the_password_can_come_from_the_environment(tmp_path):
    cfg = load(tmp_path, env={**IMAP, "INBOX_BOT_MAILBOX_PASSWORD": "from-env"})
    assert cfg.mailbox_password() == "from-env"


def test_a_password_file_is_read_and_stripped(tmp_path):
    secret = tmp_path / "imap-secret"
    secret.write_text("s3cret\n")
    cfg = load(tmp_path, env={**IMAP, "INBOX_BOT_MAILBOX_PASSWORD_FILE": str(secret)})
    assert cfg.mailbox_password() == "s3cret"


def test_a_password_file_that_vanished_after_start_up_names_the_key(tmp_path):
    secret = tmp_path / "smtp-secret"
    secret.write_text("x")
    cfg = load(tmp_path, env={"INBOX_BOT_SMTP_USERNAME": "u", "INBOX_BOT_SMTP_PASSWORD_FILE": str(secret)})
    secret.unlink()
    with pytest.raises(ConfigError, match=r"smtp\.password_file"):
        cfg.smtp_password()


@pytest.mark.parametrize("toml,env,key", [
    ('[mailbox]\ntype = "pop3"\n', {}, "mailbox.type"),
    ("", {"INBOX_BOT_MAILBOX_TYPE": "pop3"}, "mailbox.type"),
    ('[mailbox]\nport = "imaps"\n', {}, "mailbox.port"),
    ("", {"INBOX_BOT_MAILBOX_PORT": "99x"}, "mailbox.port"),
    ("[mailbox]\nport = 993.5\n", {}, "mailbox.port"),
    ("[mailbox]\nport = true\n", {}, "mailbox.port"),
    ('[mailbox]\nsecurity = "ssl"\n', {}, "mailbox.security"),
    ('[smtp]\nsecurity = "ssl"\n', {}, "smtp.security"),
    ("", {"INBOX_BOT_SMTP_SECURITY": "STARTTLS!"}, "smtp.security"),
    ('[smtp]\ntransport = "sendmail"\n', {}, "smtp.transport"),
    ('[smtp]\ntransport = "smtp"\n', {}, "smtp.host"),
    ('[smtp]\nusername = "u"\n', {}, "smtp.password"),
    ('[smtp]\ntimeout = "soon"\n', {}, "smtp.timeout"),
    ('[bot]\ntimezone = "Asia/Tokio"\n', {}, "bot.timezone"),
    ('[bot]\ntimezone = ""\n', {}, "bot.timezone"),
    ('[bot]\naddress = "inquiries@ikaclo.example.jp\\r\\nBcc: x@example.net"\n', {}, "bot.address"),
    ("", {"INBOX_BOT_BOT_ADDRESS": "inquiries@ikaclo.example.jp\nBcc: x@example.net"}, "bot.address"),
    ('[bot]\naddress = "Ikaclo <inquiries@ikaclo.example.jp>"\n', {}, "bot.address"),
    ('[bot]\naddress = "inquiries"\n', {}, "bot.address"),
    ("[bot]\npoll_interval = 0\n", {}, "bot.poll_interval"),
    ('[bot]\ncase_prefix = "PRIV-"\n', {}, "bot.case_prefix"),
    ('[database]\nurl = "inbox.sqlite3"\n', {}, "database.url"),
    ("[mailbox]\nbatch_size = 0\n", {}, "mailbox.batch_size"),
    ("[bot]\nworkers = -2\n", {}, "bot.workers"),
    ("", {"INBOX_BOT_BOT_WORKERS": "many"}, "bot.workers"),
    ("[smtp]\nconnections = 0\n", {}, "smtp.connections"),
    ('[mailbox]\nhost = ["a", "b"]\n', {}, "mailbox.host"),
    ("", {**IMAP, "INBOX_BOT_MAILBOX_HOST": "", "INBOX_BOT_MAILBOX_PASSWORD": "p"}, "mailbox.host"),
    ("", {**IMAP, "INBOX_BOT_MAILBOX_USERNAME": "", "INBOX_BOT_MAILBOX_PASSWORD": "p"}, "mailbox.username"),
    ("", IMAP, "mailbox.password"),
    ("", {**IMAP, "INBOX_BOT_MAILBOX_PASSWORD_FILE": "/nonexistent/imap-secret"}, "mailbox.password_file"),
    ('[mail]\nhost = "x"\n', {}, "[mail]"),
    ("[bot]\npoll_intervall = 5\n", {}, "bot.poll_intervall"),
    ("bot = 5\n", {}, "[bot]"),
    ("[deadlines]\ninternal_margin = 2\n", {}, "internal_margin"),
    ('[deadlines]\nclock_mode = "sometimes"\n', {}, "clock_mode"),
    ('[deadlines]\ninternal_margin_bd = "two"\n', {}, "internal_margin_bd"),
    ("[deadlines.categories.bogus]\nsla_days = 3\n", {}, "bogus"),
])
def test_a_bad_setting_fails_with_one_line_naming_the_key(tmp_path, toml, env, key):
    assert key in config_error(tmp_path, toml, env)


def test_a_deadlines_error_says_it_is_in_deadlines(tmp_path):
    assert config_error(tmp_path, "[deadlines]\ninternal_margin = 2\n").startswith("setting deadlines")


def test_a_missing_config_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config_mod.load(tmp_path / "missing.toml", {})


def test_a_toml_syntax_error_names_the_file(tmp_path):
    assert "inbox-bot.toml" in config_error(tmp_path, "[bot\naddress = 1\n")


@pytest.mark.parametrize("key", ["MAILBOX_PORT", "SMTP_PORT"])
def test_a_port_out_of_range_names_the_key(tmp_path, key):
    section = key.split("_")[0].lower()
    assert f"{section}.port" in config_error(tmp_path, env={f"INBOX_BOT_{key}": "70000"})
