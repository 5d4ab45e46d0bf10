"""Schema migrations: start-up skips Alembic only when the database is already at the head."""
from __future__ import annotations

from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from inbox_bot import store as store_mod
from inbox_bot.store import SCHEMA_HEAD, Store, at_head


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(store_mod.__file__).with_name("migrations")))
    return cfg


def test_the_schema_head_constant_is_alembics_newest_revision():
    assert ScriptDirectory.from_config(_alembic_config()).get_current_head() == SCHEMA_HEAD


def test_a_new_database_is_migrated_and_a_second_start_skips_alembic(db_url, monkeypatch):
    store = Store(db_url)
    assert not at_head(store.engine)
    store.migrate()
    assert at_head(store.engine)
    assert {"cases", "case_events", "inbound_messages", "outbox"} <= set(inspect(store.engine).get_table_names())

    import alembic.command

    def fail(*a, **k):
        raise AssertionError("Alembic ran although the schema is at the head")
    monkeypatch.setattr(alembic.command, "upgrade", fail)
    store.migrate()
    store.dispose()


def test_a_database_at_an_older_revision_is_upgraded(db_url):
    store = Store(db_url)
    store.migrate()
    import alembic.command
    with store.engine.begin() as conn:
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        alembic.command.downgrade(cfg, "0003")
    assert "next_notice_on" not in {c["name"] for c in inspect(store.engine).get_columns("cases")}
    assert not at_head(store.engine)
    store.migrate()
    assert at_head(store.engine)
    assert "next_notice_on" in {c["name"] for c in inspect(store.engine).get_columns("cases")}
    store.dispose()
