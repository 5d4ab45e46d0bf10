"""Parse and classify: the CPU-heavy step of the intake, with no database work.

It runs inline, or in worker processes on the other cores while the main process writes the
previous batch (``WorkerPool``). Each worker loads the classifier and the language model as it
starts, while the main process already fetches and journals the first batches: start-up
overlaps with work instead of preceding it, and the main process, which then never
classifies, never loads the models at all (``LazyClassifier``).
"""
from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable

from . import language
from .model_files import check_model_dir
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


class LazyClassifier:
    """The classifier, loaded on first use together with the language model.

    The model directory is checked at once, so a wrong path still fails at start-up; the
    loading itself (spaCy's import and the model: about 0.6 s and 100 MB) waits until this
    process really classifies: never, in the main process of a worker setup, unless the pool
    breaks and it has to prepare messages itself."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = check_model_dir(path)
        self._model: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = _load_models(self.path)
        return self._model

    def classify(self, subject: str, new_text: str) -> Any:
        return self.get().classify(subject, new_text)

    def classify_many(self, items: Iterable[tuple[str, str]]) -> list[Any]:
        items = list(items)
        return self.get().classify_many(items) if items else []


def _load_models(path: Path) -> Any:
    """The classifier, with the language model loading beside it in a thread (its file reads
    and numpy copies run outside the interpreter lock)."""
    from .classify import Classifier
    languages = threading.Thread(target=language.warm_up, name="language-model", daemon=True)
    languages.start()
    try:
        return Classifier.load(path)
    finally:
        languages.join()


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


_classifier: Any = None     # set in the parent before the fork; the workers inherit it


def _work(raws: list[bytes]) -> list[Prepared]:
    """``prepare`` in a worker, failures turned into text (any exception can cross back)."""
    return [(PrepareError(f"{type(m).__name__}: {m}") if isinstance(m, Exception) else m, v)
            for m, v in prepare(_classifier, raws)]


def _ready() -> int:
    return os.getpid()


def _init_worker(parent: int) -> None:
    # Ctrl-C and SIGTERM are the parent's to handle; the parent closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent("inbox-bot-work")
    if os.getppid() != parent:
        os._exit(0)
    # Load the models now, before the first batch, while the parent fetches. A failure
    # breaks the pool: the parent then prepares (and so loads, and reports) itself.
    load = getattr(_classifier, "get", None)
    if load is not None:
        load()
    else:                        # a classifier handed in ready-made (tests, tools)
        language.warm_up()
    # What is loaded now lives as long as the process: the collector need not scan it again.
    gc.freeze()


def die_with_parent(name: str) -> None:
    """A parent killed with SIGKILL cannot stop its children: have the kernel do it (Linux).
    ``name`` becomes the process's name in ps and top, so operators can tell it apart."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)                                  # PR_SET_PDEATHSIG
        libc.prctl(15, ctypes.c_char_p(name.encode()[:15]))            # PR_SET_NAME
    except Exception:
        pass


class WorkerPool:
    """Processes that parse and classify batches; create it before starting any thread."""

    def __init__(self, classifier: Any, processes: int) -> None:
        """``classifier``: a ``LazyClassifier`` (each worker loads it as it starts) or a
        loaded one (shared with the workers)."""
        global _classifier
        _classifier = classifier
        # Everything loaded so far lives as long as the process: keep the collector off it,
        # in here and in the workers (a collection would also touch, and so copy, every
        # page they share).
        gc.freeze()
        self.processes = processes
        self._executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_init_worker, initargs=(os.getpid(),))
        # With "fork", the first submit forks every worker and only then starts the pool's
        # thread: do it now, while this is the only thread. No waiting: the workers load
        # their models while this process goes on.
        self._executor.submit(_ready)
        logger.info("%d parse/classify worker process(es) started", processes)

    def submit(self, raws: list[bytes]) -> Future[list[Prepared]]:
        """The raw bytes of a batch -> (message or failure, classification) of each."""
        return self._executor.submit(_work, raws)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
