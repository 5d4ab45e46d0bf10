"""Every real-world message from other projects' test suites goes through the whole intake
(Maildir source, real classifier) without a crash, and each gets a disposition (acceptance f)."""
from __future__ import annotations

import json
import mailbox
from pathlib import Path

import pytest
from click.testing import CliRunner

from inbox_bot.cli import main
from tests.conftest import REALWORLD


def realworld_messages() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for path in sorted(REALWORLD.rglob("*")):
        if not path.is_file() or path.name in ("SOURCES.md", "README.md", "COPYING", "LICENSE"):
            continue
        if path.parent.name == "mbox":
            for i, msg in enumerate(mailbox.mbox(str(path))):
                out.append((f"{path.relative_to(REALWORLD)}#{i}", msg.as_bytes()))
        else:
            out.append((str(path.relative_to(REALWORLD)), path.read_bytes()))
    return out


@pytest.mark.skipif(not REALWORLD.is_dir(), reason="../shared/corpus/realworld not present")
def test_every_realworld_message_gets_a_disposition(tmp_path: Path, monkeypatch):
    messages = realworld_messages()
    assert len(messages) > 700
    box = mailbox.Maildir(str(tmp_path / "mailbox"), create=True)
    for _, raw in messages:
        box.add(mailbox.MaildirMessage(raw))
    config = tmp_path / "inbox-bot.toml"
    config.write_text(f"""
[mailbox]
type = "maildir"
path = "{tmp_path / 'mailbox'}"
[smtp]
transport = "file"
outbox_dir = "{tmp_path / 'outbox'}"
[bot]
horizon_days = 0
sender_budget = 1000
global_budget = 100000
[database]
url = "sqlite:///{tmp_path / 'db.sqlite3'}"
""")
    runner = CliRunner()
    result = runner.invoke(main, ["--config", str(config), "--log-level", "ERROR", "run", "--once", "--json"])
    assert result.exit_code == 0, result.output
    listed = runner.invoke(main, ["--config", str(config), "messages", "list", "--json"])
    rows = [json.loads(line) for line in listed.output.splitlines() if line.startswith("{")]
    assert len(rows) == len(messages)
    dispositions = {r["disposition"] for r in rows}
    assert dispositions <= {"case_opened", "follow_up", "staff_reply", "screened", "held"}
    assert "pending" not in dispositions
    held = [r for r in rows if r["disposition"] == "held"]
    assert not held, f"held with errors: {[(r['id'], r['error']) for r in held[:5]]}"
    screened = [r for r in rows if r["disposition"] == "screened"]
    assert all(r["rule"] for r in screened)
    assert list(box.keys()) == []
