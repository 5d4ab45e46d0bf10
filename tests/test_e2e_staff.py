"""The staff side end to end through Dovecot and SMTP: the daily digest (received, rendered in
headless Chromium, text part usable, sent once a day) and the weekly summary (sent once)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests import mailgen
from tests.e2e import cli, parsed, text_part, write_config
from tests.test_digest_render import assert_non_trivial, chromium, screenshot

pytestmark = pytest.mark.e2e

JST = timezone(timedelta(hours=9))
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=JST)
STAFF = "hana.staff@ikaclo.example.jp"


@pytest.fixture
def staffed(tmp_path, dovecot_user, smtp_server):
    config = write_config(tmp_path, dovecot_user, smtp_server)
    config.write_text(config.read_text().replace("horizon_days = 30", "horizon_days = 0") + f"""
[staff]
addresses = ["{STAFF}"]
supervisor = "boss@ikaclo.example.jp"
token_secret = "test-secret"
""")
    # Cases received 40, 10 and 1 day(s) ago: overdue, due within 7 days, due later.
    for i, days in enumerate((40, 10, 1)):
        inq = mailgen.english(400 + i)
        dovecot_user.server.append(dovecot_user.username, "INBOX", inq.raw,
                                   internaldate=NOW - timedelta(days=days))
    cli(config, "run", "--once", "--now", NOW.isoformat())
    smtp_server.wait_for(3, timeout=10)
    return config


def test_the_digest_is_received_renders_in_chromium_and_its_text_part_is_usable(staffed, smtp_server, tmp_path):
    chromium()
    before = len(smtp_server.messages)
    cli(staffed, "digest", "--send", "--now", NOW.isoformat())
    smtp_server.wait_for(before + 1, timeout=10)
    digests = [parsed(m.raw) for m in smtp_server.messages[before:] if m.rcpt_tos == (STAFF,)]
    assert len(digests) == 1
    mail = digests[0]
    text = text_part(mail)
    for heading in ("Overdue", "Due within 7 days", "Later"):
        assert heading.lower() in text.lower()
    assert text.count("PRIV-2026-") >= 3
    assert "inquiries+" in text and "#close" in text        # reply address and commands, in plain text
    html = mail.get_body(preferencelist=("html",)).get_content()
    assert "mailto:inquiries+" in html
    png = screenshot(html, tmp_path, "digest")
    assert_non_trivial(png)
    # A second send the same day (a restarted worker) sends nothing.
    cli(staffed, "digest", "--send", "--now", (NOW + timedelta(hours=3)).isoformat())
    assert len([m for m in smtp_server.messages[before:] if m.rcpt_tos == (STAFF,)]) == 1


def test_the_weekly_summary_is_sent_once_per_week(staffed, smtp_server):
    before = len(smtp_server.messages)
    monday = datetime(2026, 11, 30, 9, 30, tzinfo=JST)
    cli(staffed, "summary", "--send", "--now", monday.isoformat())
    cli(staffed, "summary", "--send", "--now", (monday + timedelta(hours=5)).isoformat())
    smtp_server.wait_for(before + 1, timeout=10)
    got = [parsed(m.raw) for m in smtp_server.messages[before:]]
    assert [m["To"].addresses[0].addr_spec for m in got] == ["boss@ikaclo.example.jp"]
    summary = got[0]
    assert "2026-W48" in str(summary["Subject"])
    kinds = {p.get_content_type() for p in summary.walk()}
    assert "image/png" in kinds and "text/csv" in kinds
