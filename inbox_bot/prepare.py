"""Parse and classify: the CPU-heavy step of the intake, with no database work.

It runs inline, or in worker processes on the other cores while the main process writes the
previous batch (``WorkerPool``). The workers are forked once the classifier and the language
models are loaded, so they share those pages with the main process (copy-on-write) rather
than loading copies of their own.
"""
from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from . import language
from .parse import InboundMessage, parse

logger = logging.getLogger(__name__)

Prepared = tuple["InboundMessage | Exception", Any]     # (message or why not, classification)


class PrepareError(Exception):
    """What went wrong in a worker, as text (any exception can cross the process boundary)."""


def prepare(classifier: Any, raws: list[bytes]) -> list[Prepared]:
    """Parse and classify a batch; a failure is returned in place of its message."""
    parsed: list[InboundMessage | Exception] = []
    for raw in raws:
        try:
            parsed.append(parse(raw))
        except Exception as e:  # parse should never raise; the message is held if it does
            parsed.append(e)
    good = [m for m in parsed if isinstance(m, InboundMessage)]
    try:
        verdicts = iter(classifier.classify_many([(m.subject, m.new_text) for m in good]))
        return [(m, next(verdicts) if isinstance(m, InboundMessage) else None) for m in parsed]
    except Exception:
        logger.exception("batch classification failed; classifying one by one")
    out: list[Prepared] = []
    for m in parsed:
        if isinstance(m, Exception):
            out.append((m, None))
            continue
        try:
            out.append((m, classifier.classify(m.subject, m.new_text)))
        except Exception as e:
            out.append((e, None))
    return out


def default_processes(setting: int) -> int:
    """``bot.workers``: -1 means one per CPU beyond the first (none on a single CPU).
    Workers are forked: where the platform cannot fork (Windows), there are none."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    if setting >= 0:
        return setting
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:                       # not Linux
        cpus = os.cpu_count() or 1
    return max(cpus - 1, 0)


_context: Any = None     # set in the parent before the fork; the workers inherit it


def _work(items: list[tuple[bytes, Any]]) -> tuple[list[Prepared], list[Any]]:
    """Parse and classify, then draft each acknowledgement as far as it goes without the
    database (``context.draft_ack``: due dates and rendered text; the case id comes later)."""
    prepared = [(PrepareError(f"{type(m).__name__}: {m}") if isinstance(m, Exception) else m, v)
                for m, v in prepare(_context.classifier, [raw for raw, _ in items])]
    drafts = []
    for (msg, verdict), (_, received_at) in zip(prepared, items):
        draft = None
        if isinstance(msg, InboundMessage) and verdict is not None:
            try:
                draft = _context.draft_ack(msg, verdict, received_at)
            except Exception:      # the main process builds the acknowledgement itself
                logger.warning("drafting an acknowledgement failed", exc_info=True)
        drafts.append(draft)
    return prepared, drafts


def _ready() -> int:
    return os.getpid()


def _init_worker(parent: int) -> None:
    # Ctrl-C and SIGTERM are the parent's to handle; the parent closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    if os.getppid() != parent:
        os._exit(0)


def die_with_parent() -> None:
    """A parent killed with SIGKILL cannot stop its children: have the kernel do it (Linux)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except Exception:
        pass


class WorkerPool:
    """Processes that parse and classify batches; create it before starting any thread."""

    def __init__(self, context: Any, processes: int) -> None:
        """``context``: the intake (its ``classifier`` and ``draft_ack``)."""
        global _context
        _context = context
        language.warm_up()        # loaded before the fork: shared by every worker
        # Everything loaded so far lives as long as the process: keep the collector off it,
        # in here and in the workers (a collection would also touch, and so copy, every
        # shared page).
        gc.freeze()
        self.processes = processes
        self._executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_init_worker, initargs=(os.getpid(),))
        # The fork happens on the first submit: do it now, while this is the only thread.
        pids = {self._executor.submit(_ready).result() for _ in range(processes)}
        logger.info("%d parse/classify worker process(es) started", len(pids))

    def submit(self, items: list[tuple[bytes, Any]]) -> Future[tuple[list[Prepared], list[Any]]]:
        """(raw bytes, receipt time) of each message -> (prepared, drafts)."""
        return self._executor.submit(_work, items)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
