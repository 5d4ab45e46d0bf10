"""Composition root: builds the source, store, classifier, policy and transport from config."""
from __future__ import annotations

import gc
import logging
import multiprocessing
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
    """The configured model, checked now and loaded where it is first used: in the workers
    when there are any, so this process starts fetching at once (see prepare.LazyClassifier)."""
    from .prepare import LazyClassifier
    return LazyClassifier(Path(cfg.classifier.model_path) if cfg.classifier.model_path else None)


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

    def stop_workers(self) -> None:
        if self.intake.workers is not None:
            self.intake.workers.close()
            self.intake.workers = None

    def close(self) -> None:
        self.stop_workers()
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
        batches, a second sender already delivers the acknowledgements each batch committed,
        so SMTP round trips overlap with parsing and writing. The sender is a forked process
        (its own interpreter, so it does not compete for this one's lock) when there is a
        CPU to spare and the transport works from another process; else a thread."""
        totals = {"sent": 0, "retry": 0, "failed": 0}
        use_process = getattr(self.transport, "shareable", False) and self._spare_cpu()
        # Fork first: the sender must not inherit the worker pool's threads.
        sender: _SenderThread | _SenderProcess = _SenderProcess(self) if use_process else _SenderThread(self)
        own_pool = self.intake.workers is None       # started here: stopped here too
        self.start_workers()
        if isinstance(sender, _SenderProcess):
            self.intake.in_batch = sender.record       # "sent" rides on the batch transactions
        try:
            report = self.poll()
            self.remind()
        finally:
            self.intake.in_batch = None
            for k, v in sender.stop().items():
                totals[k] += v
            if own_pool:
                self.stop_workers()
        for k, v in self.send().items():
            totals[k] += v
        report.sent, report.send_retry, report.send_failed = totals["sent"], totals["retry"], totals["failed"]
        return report

    def _spare_cpu(self) -> bool:
        from .prepare import default_processes
        return default_processes(-1) > 0 and self.cfg.bot.workers != 0


class _SenderThread:
    """First attempts of whatever is queued, every 0.2 s, until stopped."""

    def __init__(self, app: App) -> None:
        self._stop = threading.Event()
        self._totals = {"sent": 0, "retry": 0, "failed": 0}
        self._thread = threading.Thread(target=self._run, args=(app,), name="outbox-sender", daemon=True)
        self._thread.start()

    def _run(self, app: App) -> None:
        while not self._stop.is_set():
            try:
                counts = app.send(first_attempts_only=True)
            except Exception:
                logger.exception("sending beside the poll failed; the final send retries")
                return
            for k, v in counts.items():
                self._totals[k] += v
            self._stop.wait(0.2)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self._totals


class _SenderProcess:
    """A forked process that sends the first attempt of each queued mail and reports what
    the server accepted through a pipe. It never writes to the database: on SQLite it would
    wait for the intake's write lock. This process records "sent" in its own transactions
    (``record``, called at the start of each batch) and, when the sender stops, for the rest.

    Failures are not reported: those mails stay queued for the final ``send``, which owns
    retries and backoff. A crash of this process between the server's acceptance and the
    recording re-sends those few mails on the next run with their same Message-ID."""

    def __init__(self, app: App) -> None:
        ctx = multiprocessing.get_context("fork")
        gc.freeze()         # the collector must not touch (and so copy) the shared pages
        self._stop = ctx.Event()
        self._results, child_end = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_sender_main, args=(app, self._stop, child_end),
                                    name="outbox-sender", daemon=True)
        self._process.start()
        child_end.close()
        self._app = app
        self._sent = 0
        self._done = False

    def _drain(self, wait: float = 0.0) -> list[tuple[int, datetime]]:
        got: list[tuple[int, datetime]] = []
        try:
            while not self._done and self._results.poll(wait):
                item = self._results.recv()
                if item is None:
                    self._done = True
                else:
                    got += item
        except (EOFError, OSError):
            self._done = True
        return got

    def record(self, session: Any) -> None:
        sent = self._drain()
        if sent:
            outbox.record_sent(session, sent)
            self._sent += len(sent)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        sent: list[tuple[int, datetime]] = []
        while not self._done:
            sent += self._drain(wait=60)
            if not self._process.is_alive() and not self._results.poll():
                break
        self._process.join(30)
        if self._process.is_alive():
            logger.error("outbox sender did not stop; killing it")
            self._process.kill()
            self._process.join()
        elif self._process.exitcode:
            logger.error("outbox sender exited with status %s", self._process.exitcode)
        if sent:
            with self._app.store.session() as s, s.begin():
                outbox.record_sent(s, sent)
            self._sent += len(sent)
        return {"sent": self._sent, "retry": 0, "failed": 0}


def _sender_main(app: App, stop: Any, results: Any) -> None:
    """The forked sender: its own database connections (read only), never the parent's."""
    import signal
    from .prepare import die_with_parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent("inbox-bot-send")
    app.store.engine.dispose(close=False)
    try:
        fresh = getattr(app.transport, "fresh", None)
        transports = [fresh() for _ in range(app.cfg.smtp.connections)] if fresh else [app.transport]
        outbox.send_first_attempts(app.store.read_session, transports, stop=stop, now=app.clock,
                                   report=results.send)
    except Exception:
        logger.exception("sending beside the poll failed; the final send retries")
    finally:
        results.send(None)
        app.store.engine.dispose()


def build_app(cfg: Config, *, clock: Callable[[], datetime] = utcnow, classifier: Any = None,
              transport: Transport | None = None) -> App:
    store = open_store(cfg)
    policy = case_ops.policy_from(cfg.deadlines, cfg.bot.timezone)
    intake = Intake(cfg=cfg, store=store, classifier=classifier or load_classifier(cfg),
                    policy=policy, clock=clock)
    return App(cfg=cfg, store=store, intake=intake, transport=transport or open_transport(cfg),
               clock=clock)
