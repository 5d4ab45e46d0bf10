"""The command line: the demo, start-up errors, and the worker's clean shutdown."""
from __future__ import annotations

import json
import mailbox
import os
import signal
import subprocess
import sys
import time

from click.testing import CliRunner

from inbox_bot.cli import main
from tests import mailgen


def test_demo_opens_cases_for_the_sample_mailbox_and_writes_acks(tmp_path):
    result = CliRunner().invoke(main, ["--log-level", "ERROR", "demo", "--dir", str(tmp_path / "d"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["seeded"] == 7
    assert len(data["cases"]) == 6                       # the auto-reply is screened
    assert {c["language"] for c in data["cases"]} >= {"en", "ja", "de", "fr"}
    assert len(list((tmp_path / "d" / "outbox").glob("*.eml"))) == 6
    again = CliRunner().invoke(main, ["--log-level", "ERROR", "demo", "--dir", str(tmp_path / "d"), "--json"])
    assert json.loads(again.output.strip().splitlines()[-1])["seeded"] == 0


def test_a_bad_setting_fails_at_start_up_with_one_line_naming_the_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[mailbox]\ntype = "imap"\nhost = "h"\nusername = "u"\npassword = "p"\nsecurity = "ssl"\n')
    result = CliRunner().invoke(main, ["--config", str(cfg), "cases", "list"])
    assert result.exit_code != 0
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "mailbox.security" in lines[0]


def test_an_env_override_names_the_key_too(tmp_path):
    result = CliRunner().invoke(main, ["cases", "list"], env={"INBOX_BOT_BOT_POLL_INTERVAL": "soon"})
    assert result.exit_code != 0 and "bot.poll_interval" in result.output


def test_worker_processes_mail_and_stops_cleanly_on_sigterm(tmp_path):
    box = mailbox.Maildir(str(tmp_path / "mailbox"), create=True)
    box.add(mailbox.MaildirMessage(mailgen.english(1).raw))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[mailbox]
path = "{tmp_path / 'mailbox'}"
[smtp]
outbox_dir = "{tmp_path / 'outbox'}"
[bot]
poll_interval = 1
send_interval = 1
[database]
url = "sqlite:///{tmp_path / 'db.sqlite3'}"
""")
    proc = subprocess.Popen([sys.executable, "-m", "inbox_bot.cli", "--config", str(cfg), "run"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((tmp_path / "outbox").glob("*.eml")):
            time.sleep(0.2)
        assert list((tmp_path / "outbox").glob("*.eml")), "no acknowledgement written"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "worker stopped" in err
    # Its parse/classify processes stopped with it (they run with the default bot.workers).
    assert "worker process(es) started" in err or os.cpu_count() == 1
    from tests.e2e import processes_running
    assert processes_running(str(cfg)) == []
