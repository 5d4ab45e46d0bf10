"""Composition root: builds the source, store, classifier, policy and transport from config."""
from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from . import cases as case_ops
from .config import Config
from .pipeline import Intake, Report
from .store import Store, utcnow
from .transports import FileTransport, SmtpTransport, Transport
from . import outbox

logger = logging.getLogger(__name__)


def open_store(cfg: Config) -> Store:
    store = Store(cfg.database.url)
    store.migrate()
    return store


def open_source(cfg: Config) -> Any:
    from .source import ImapSource, MaildirSource
    m = cfg.mailbox
    if m.type == "maildir":
        return MaildirSource(m.path, processed_folder=m.processed_folder)
    ctx = ssl.create_default_context(cafile=m.ca_file or None) if m.security != "none" else None
    return ImapSource(m.host, m.port or (993 if m.security == "tls" else 143), m.username,
                      cfg.mailbox_password(), security=m.security, folder=m.folder,
                      processed_folder=m.processed_folder, batch_size=m.batch_size,
                      ssl_context=ctx)


def open_transport(cfg: Config) -> Transport:
    s = cfg.smtp
    if s.transport == "file":
        return FileTransport(s.outbox_dir)
    return SmtpTransport(s.host, s.port, security=s.security, username=s.username,
                         password=cfg.smtp_password() if s.username else "", timeout=s.timeout,
                         ca_file=s.ca_file)


def load_classifier(cfg: Config) -> Any:
    from .classify import Classifier
    return Classifier.load(Path(cfg.classifier.model_path) if cfg.classifier.model_path else None)


@dataclass
class App:
    cfg: Config
    store: Store
    intake: Intake
    transport: Transport
    clock: Callable[[], datetime]

    def start_workers(self) -> None:
        """Fork the parse/classify processes (``bot.workers``); call before any thread starts."""
        if self.intake.workers is None:
            from .prepare import WorkerPool, default_processes
            processes = default_processes(self.cfg.bot.workers)
            if processes > 0:
                self.intake.workers = WorkerPool(self.intake.classifier, processes)

    def close(self) -> None:
        if self.intake.workers is not None:
            self.intake.workers.close()
            self.intake.workers = None
        self.store.dispose()

    def poll(self) -> Report:
        source = open_source(self.cfg)
        try:
            return self.intake.run_pass(source)
        finally:
            source.close()

    def send(self, *, first_attempts_only: bool = False) -> dict[str, int]:
        return outbox.send_due(self.store.session, self.transport, now=self.clock(),
                               max_attempts=self.cfg.smtp.max_attempts,
                               retry_base=self.cfg.smtp.retry_base_seconds,
                               first_attempts_only=first_attempts_only)

    def digest(self) -> int:
        from .digests import send_digests
        return send_digests(self.store, self.cfg, self.intake.policy, self.clock())

    def weekly_summary(self, week: str | None = None) -> bool:
        from .summary import send_summary
        return send_summary(self.store, self.cfg, self.intake.policy, self.clock(), week)

    def remind(self) -> dict[str, int]:
        from .reminders import send_reminders
        return send_reminders(self.store, self.cfg, self.intake.policy, self.clock())

    def run_once(self) -> Report:
        """Poll, remind and send until nothing is due. While a long poll processes its
        batches, a second thread already sends the acknowledgements each batch committed,
        so SMTP round trips overlap with parsing and classification."""
        self.start_workers()
        totals = {"sent": 0, "retry": 0, "failed": 0}
        stop = threading.Event()

        def add(counts: dict[str, int]) -> None:
            for k, v in counts.items():
                totals[k] += v

        def sender() -> None:
            while not stop.is_set():
                try:
                    add(self.send(first_attempts_only=True))
                except Exception:
                    logger.exception("sending beside the poll failed; the final send retries")
                    return
                stop.wait(0.2)

        thread = threading.Thread(target=sender, name="outbox-sender", daemon=True)
        thread.start()
        try:
            report = self.poll()
            self.remind()
        finally:
            stop.set()
            thread.join()
        add(self.send())
        report.sent, report.send_retry, report.send_failed = totals["sent"], totals["retry"], totals["failed"]
        return report


def build_app(cfg: Config, *, clock: Callable[[], datetime] = utcnow, classifier: Any = None,
              transport: Transport | None = None) -> App:
    store = open_store(cfg)
    policy = case_ops.policy_from(cfg.deadlines, cfg.bot.timezone)
    intake = Intake(cfg=cfg, store=store, classifier=classifier or load_classifier(cfg),
                    policy=policy, clock=clock)
    return App(cfg=cfg, store=store, intake=intake, transport=transport or open_transport(cfg),
               clock=clock)
