"""Schema migrations: start-up skips Alembic only when the database is already at the head."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=9)),
                                               timezone(timedelta(hours=-11, minutes=-30))])))
def test_utc_timestamps_are_stored_on_sqlite_exactly_as_sqlalchemy_would_store_them(value):
    # UTCDateTime formats SQLite's string itself (faster); comparisons in SQL need the
    # very same string as SQLAlchemy's own two-step processing would give.
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.types import TypeDecorator
    dialect = sqlite.dialect()
    column_type = store_mod.UTCDateTime()
    generic = TypeDecorator.bind_processor(column_type.dialect_impl(dialect), dialect)
    assert column_type._cached_bind_processor(dialect)(value) == generic(value)


def test_a_naive_timestamp_is_refused_on_sqlite_too():
    from sqlalchemy.dialects import sqlite
    with pytest.raises(ValueError, match="naive"):
        store_mod.UTCDateTime().bind_processor(sqlite.dialect())(datetime(2026, 1, 1))
