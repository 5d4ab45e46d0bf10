"""Language of a message: ISO 639-1 code among the languages we answer in, or "und".

Japanese is recognised by script (kana/kanji share) without a model: it is most of our mail,
and the script test costs microseconds. Everything else goes to py3langid (a maintained
langid.py: naive Bayes over byte n-grams, its model shipped inside the package), limited to
our six other languages and built once on first use.

Why py3langid: measured on the 2,900 Latin-script mails of models/data, on the 2-core dev
machine (subjects alone stand in for one-line mails):

| detector | whole mails | subjects only | resident memory | load |
|---|---|---|---|---|
| py3langid 0.4, with the English rule below | 99.8 % | 92.4 % | about 75 MB | 0.4 s |
| lingua 2.1, high accuracy | 99.3 % | 92.0 % | about 190 MB | 0.5-1.8 s |
| lingua 2.1, low accuracy | 99.1 % | 82.7 % | about 30 MB | 0.1 s |

Each parse/classify process loads its own copy. The first start also caches the model,
restricted to our six languages and uncompressed (see ``_cache_path``): later loads take
0.15 s and about 28 MB less.

A guess with a probability under one half counts as English, the service's common language: a
customer who writes two words ("Data request") gets an English acknowledgement rather than one
in a language picked by a coin toss.
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SUPPORTED = ("en", "ja", "de", "fr", "es", "it", "nl")
UNDETERMINED = "und"
_MODEL_LANGUAGES = tuple(l for l in SUPPORTED if l != "ja")   # Japanese never reaches the model
UNSURE_BELOW = 0.5             # the model's probability of its best guess; under it: English

# Enough text for a confident guess; longer input only costs time.
_DETECT_MAX_CHARS = 200
_JAPANESE_MIN_SHARE = 0.15     # of letters; a company name in kanji inside English stays English
_MIN_LETTERS = 2

_detector: Any = None
_detector_lock = threading.Lock()


def detect(text: str) -> str:
    """ISO 639-1 code ("en", "ja", "de", "fr", "es", "it", "nl") or "und" when undecidable."""
    if not text:
        return UNDETERMINED
    sample = _letters_window(text[:_DETECT_MAX_CHARS * 8])
    letters = len(_LETTER_RE.findall(sample))
    if letters < _MIN_LETTERS:
        return UNDETERMINED
    if len(_JAPANESE_RE.findall(sample)) / letters >= _JAPANESE_MIN_SHARE:
        return "ja"
    return _detect_with_model(sample)


_LETTER_RE = re.compile(r"[^\W\d_]")
# Hiragana, katakana (+ phonetic extensions), CJK ideographs (+ extension A), 々, half-width kana.
_JAPANESE_RE = re.compile(
    "[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\u3005\uff66-\uff9f]"
)


def _letters_window(text: str) -> str:
    return " ".join(text.split())[:_DETECT_MAX_CHARS]


def _detect_with_model(text: str) -> str:
    try:
        code, probability = _get_detector().classify(text)
    except Exception:  # a detector failure must not stop intake; the language is advisory
        logger.warning("language detection failed", exc_info=True)
        return UNDETERMINED
    if probability < UNSURE_BELOW:
        return "en"
    return code if code in SUPPORTED else UNDETERMINED


def _get_detector() -> Any:
    global _detector
    if _detector is None:
        with _detector_lock:
            if _detector is None:
                _detector = _build_detector()
    return _detector


def _build_detector() -> Any:
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    model_file = MODEL_DIR / MODEL_FILE
    cache = _cache_path(model_file)
    if cache is not None and cache.is_file():
        try:
            return _load_cached(cache, LanguageIdentifier)
        except Exception:          # unreadable or from another layout: rebuild it
            logger.warning("language model cache %s unusable; rebuilding it", cache, exc_info=True)
    logger.info("loading the language model")
    identifier = LanguageIdentifier.from_model_file(model_file, norm_probs=True)
    identifier.set_languages(list(_MODEL_LANGUAGES))
    if cache is not None:
        _save_cached(cache, identifier)
    return identifier


# py3langid ships its model LZMA-compressed, for about 100 languages: decompressing it costs
# 0.4 s of every start, and its 100-language table 28 MB that our 6 languages don't need. The
# first start therefore keeps the model restricted to our languages, uncompressed, in a cache
# directory: later starts read it in 0.15 s. Its name carries everything it derives from.
CACHE_ENV = "INBOX_BOT_CACHE_DIR"


def _cache_path(model_file: Path) -> Path | None:
    import os
    from importlib.metadata import version
    try:
        stat = model_file.stat()
        base = os.environ.get(CACHE_ENV) or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
            "inbox-bot")
        key = f"{version('py3langid')}-{stat.st_size}-{int(stat.st_mtime)}-{'-'.join(_MODEL_LANGUAGES)}"
    except Exception:
        return None
    return Path(base) / f"py3langid-{key}.npz"


def _save_cached(path: Path, identifier: Any) -> None:
    import os
    import tempfile
    import numpy as np
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            tmp_name = tmp.name
            np.savez(tmp, ptc=identifier.nb_ptc, pc=identifier.nb_pc,
                     classes=np.array(identifier.nb_classes),
                     nextmove=np.frombuffer(identifier.tk_nextmove, dtype=_array_dtype(identifier.tk_nextmove)),
                     row=np.frombuffer(identifier.tk_row, dtype=_array_dtype(identifier.tk_row)),
                     output=np.asarray(identifier.tk_output, dtype=np.int64))
        os.replace(tmp_name, path)          # whole or not at all, also with workers racing
    except OSError as e:                    # read-only home, full disk: start slower, that's all
        logger.info("language model not cached (%s)", e)
        if tmp_name is not None:            # a half-written 40 MB file must not stay behind
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _load_cached(path: Path, identifier_class: Any) -> Any:
    from array import array
    import numpy as np
    with np.load(path, allow_pickle=False) as data:
        def as_array(name: str) -> array:
            values = data[name]
            out = array({1: "B", 2: "H", 4: "I", 8: "L"}[values.dtype.itemsize])
            out.frombytes(memoryview(np.ascontiguousarray(values)).cast("B"))
            return out
        return identifier_class(data["ptc"], data["pc"], data["classes"].tolist(), as_array("nextmove"),
                                data["output"].tolist(), norm_probs=True, tk_row=as_array("row"))


def _array_dtype(values: Any) -> Any:
    import numpy as np
    return np.dtype(f"u{values.itemsize}")


def warm_up() -> None:
    """Build the detector now (e.g. at service start) instead of on the first message."""
    _get_detector()
