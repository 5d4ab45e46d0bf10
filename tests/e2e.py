"""Helpers for end-to-end tests: a config pointing at the test Dovecot and SMTP servers."""
from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from inbox_bot import config as config_mod
from inbox_bot.config import Config

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, account: Any, smtp: Any, db_url: str | None = None,
                 **bot: Any) -> Path:
    bot_lines = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}"
                          for k, v in bot.items())
    text = f"""
[mailbox]
type = "imap"
host = "{account.host}"
port = {account.port}
username = "{account.username}"
password = "{account.password}"
security = "none"
batch_size = 200

[smtp]
transport = "smtp"
host = "{smtp.host}"
port = {smtp.port}
security = "none"
retry_base_seconds = 0.01
timeout = 5

[bot]
address = "inquiries@ikaclo.example.jp"
horizon_days = 30
sender_budget = 50
{bot_lines}

[database]
url = "{db_url or f'sqlite:///{tmp_path / "inbox-bot.sqlite3"}'}"
"""
    path = tmp_path / "inbox-bot.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path) -> Config:
    return config_mod.load(path, {})


def cli(config: Path, *args: str, check: bool = True, timeout: float = 300,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "inbox_bot.cli", "--config", str(config), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=config.parent,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def text_part(msg: email.message.EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""


def processes_running(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found
