"""The scheduled worker: APScheduler jobs that call into the app, and a clean shutdown.

Kept thin on purpose: each job is one call (poll, send); the work lives in the app.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from .app import App

logger = logging.getLogger(__name__)


def poll_inbox(app: App) -> None:
    try:
        report = app.poll()
        if report.journaled or report.processed:
            logger.info("poll: %d journaled, %d processed %s", report.journaled, report.processed,
                        report.dispositions)
    except Exception:
        # A failing poll (server down, login refused) must not stop the worker; the next
        # run retries, and the source itself backs off between reconnects.
        logger.exception("poll failed")


def send_outbox(app: App) -> None:
    try:
        counts = app.send()
        if any(counts.values()):
            logger.info("outbox: %s", counts)
    except Exception:
        logger.exception("sending the outbox failed")


def send_reminders(app: App) -> None:
    """Reminders and escalations, plus the daily digest and the weekly summary once their
    local time has come. Each is queued with a per-period dedupe key, so running this often
    (and after downtime) sends each exactly once, also with several workers."""
    from . import digests, summary
    now = app.clock()
    for name, due, call in (("reminders", lambda: True, app.remind),
                            ("staff digest", lambda: digests.digest_due(app.cfg, now), app.digest),
                            ("weekly summary", lambda: summary.summary_due(app.cfg, now), app.weekly_summary)):
        try:
            if due():
                call()
        except Exception:
            logger.exception("%s failed", name)


REMINDER_INTERVAL = 300   # seconds; dedupe keys make every notice go out once


def run_forever(app: App, stop: threading.Event | None = None) -> None:
    """Run the jobs until SIGTERM/SIGINT (or ``stop`` is set), then shut down cleanly."""
    stop = stop or threading.Event()
    scheduler = BackgroundScheduler(timezone=app.cfg.bot.timezone)
    # max_instances=1 + coalesce: a slow poll never overlaps itself or piles up.
    common: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
    scheduler.add_job(poll_inbox, "interval", args=[app], seconds=app.cfg.bot.poll_interval,
                      id="poll_inbox", next_run_time=_now(), **common)
    scheduler.add_job(send_outbox, "interval", args=[app], seconds=app.cfg.bot.send_interval,
                      id="send_outbox", next_run_time=_now(), **common)
    scheduler.add_job(send_reminders, "interval", args=[app], seconds=REMINDER_INTERVAL,
                      id="send_reminders", next_run_time=_now(), **common)

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    app.start_workers()                    # forks: before the scheduler's threads exist
    scheduler.start()
    logger.info("worker started: poll every %ss, send every %ss", app.cfg.bot.poll_interval,
                app.cfg.bot.send_interval)
    try:
        stop.wait()
    finally:
        scheduler.shutdown(wait=True)      # lets a running job finish its transaction
        app.close()
        logger.info("worker stopped")


def _now() -> Any:
    from datetime import datetime, timezone
    return datetime.now(timezone.utc)
