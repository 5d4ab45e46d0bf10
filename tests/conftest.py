"""Shared fixtures: real Dovecot and SMTP servers (tests/servers.py), stores on SQLite and
PostgreSQL, the shipped classifier loaded once."""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.servers import *  # noqa: F401,F403  (dovecot / smtp fixtures)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REALWORLD = SHARED / "corpus" / "realworld"
PG_ADMIN_URL = os.environ.get("INBOX_BOT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# The language model cache (inbox_bot.language) of the tests and the bots they start: not the
# user's ~/.cache.
os.environ.setdefault("INBOX_BOT_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"inbox-bot-test-cache-{os.getuid()}"))


@pytest.fixture(scope="session")
def classifier():
    from inbox_bot.classify import Classifier
    return Classifier.load()


def _pg_available() -> bool:
    try:
        import psycopg
        with psycopg.connect(PG_ADMIN_URL.replace("postgresql://", "postgresql://", 1), connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is required in CI")
        pytest.skip("PostgreSQL not reachable")
    import psycopg
    name = f"inbox_bot_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> Iterator[str]:
    """Run a test on both stores."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'inbox-bot.sqlite3'}"
    else:
        yield request.getfixturevalue("pg_url")
