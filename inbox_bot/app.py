"""Composition root: builds the source, store, classifier, policy and transport from config."""
from __future__ import annotations

import logging
import ssl
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

    def poll(self) -> Report:
        source = open_source(self.cfg)
        try:
            report = self.intake.journal(source)
        finally:
            source.close()
        processed = self.intake.process_pending()
        report.processed = processed.processed
        report.dispositions = processed.dispositions
        report.cases_opened = processed.cases_opened
        report.held = processed.held
        return report

    def send(self) -> dict[str, int]:
        return outbox.send_due(self.store.session, self.transport, now=self.clock(),
                               max_attempts=self.cfg.smtp.max_attempts,
                               retry_base=self.cfg.smtp.retry_base_seconds)

    def remind(self) -> dict[str, int]:
        from .reminders import send_reminders
        return send_reminders(self.store, self.cfg, self.intake.policy, self.clock())

    def run_once(self) -> Report:
        report = self.poll()
        self.remind()
        counts = self.send()
        report.sent, report.send_retry, report.send_failed = counts["sent"], counts["retry"], counts["failed"]
        return report


def build_app(cfg: Config, *, clock: Callable[[], datetime] = utcnow, classifier: Any = None,
              transport: Transport | None = None) -> App:
    store = open_store(cfg)
    policy = case_ops.policy_from(cfg.deadlines, cfg.bot.timezone)
    intake = Intake(cfg=cfg, store=store, classifier=classifier or load_classifier(cfg),
                    policy=policy, clock=clock)
    return App(cfg=cfg, store=store, intake=intake, transport=transport or open_transport(cfg),
               clock=clock)
