"""Classify an inquiry's new text into the privacy taxonomy (docs: shared/docs/taxonomy.md).

One spaCy ``textcat_multilabel`` model serves every language. Its tokenizer is registered here
(``inbox_bot.intake_tokenizer.v1``) and named in the model's config, so loading the model only
needs ``import inbox_bot.classify``. The model reads ``textprep.classifier_text(subject,
new_text)``; training builds its examples with the same function (see ``model_input``).

The model (``inbox_bot.HashedNgramTextCat.v1``, also registered here) is a logistic regression
per label over hashed word 1-2-grams and in-word character 2-5-grams with TF-IDF weights; the
choice against spaCy's stock architectures is measured in models/COMPARISON.md.

Scores become labels through ``decide`` with per-label thresholds tuned at training time and
stored next to the model in ``thresholds.json``.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import spacy
from spacy.attrs import IS_SPACE, ORTH
from spacy.language import Language
from spacy.ml.models.textcat import resize_and_set_ref
from spacy.tokens import Doc
from spacy.vocab import Vocab
from thinc.api import Logistic, Model, NumpyOps, SparseLinear_v2, chain, resizable
from thinc.layers.resizable import resize_linear_weighted

from inbox_bot import textprep
from inbox_bot.model_files import MODEL_ENV, check_model_dir, default_model_path  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

LABELS: tuple[str, ...] = (
    "disclosure", "revision", "deletion", "gdpr_request", "complaint", "other")
EXCLUSIVE_LABEL = "other"
ACTION_LABELS: tuple[str, ...] = tuple(label for label in LABELS if label != EXCLUSIVE_LABEL)

THRESHOLDS_FILE = "thresholds.json"
PIPE_NAME = "textcat_multilabel"
DEFAULT_THRESHOLD = 0.5
DEFAULT_CLOSE_CALL_MARGIN = 0.10
# Tuned thresholds can be low (an F1 optimum, not a confidence): a label chosen with a score
# under this floor is still marked for review. 0.5 flags about 6 % of the held-out mails, 40 %
# of them wrong (against 15 % overall), and mail in languages the model never saw.
DEFAULT_REVIEW_BELOW = 0.5
PIPE_BATCH_SIZE = 256


# --- tokenizer --------------------------------------------------------------------------------

# Kana, kanji (with extensions and compatibility forms), half-width katakana, hangul and the
# Japanese iteration marks. Japanese has no spaces, so a whole sentence would otherwise be one
# "word"; as single characters, their word bigrams are character bigrams (個人, 開示, 削除).
_CJK = (
    "\u3005\u3006\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\uff66-\uff9f\uac00-\ud7af"
)
# A CJK character, a word, a whitespace run or a punctuation mark; only the whitespace run is
# all whitespace (split_tokens tells them apart by that).
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|\s+|[^\w\s]")
# The text a Doc was made from: the features read it from here rather than rebuilding it from
# the tokens (``Doc.text`` creates a Token object per token, a fifth of the classifier's time).
_TEXT_KEY = "inbox_bot.text"


class IntakeTokenizer:
    """Words for alphabetic scripts, one token per character for CJK, one per punctuation mark.

    Lower-casing happens here because the bag-of-words features read the token text (ORTH); the
    doc is a feature view for the classifier, not a faithful copy of the mail. Whitespace
    follows spaCy's convention (a single trailing space is a flag, anything else a token).
    """

    def __init__(self, vocab: Vocab, lowercase: bool = True) -> None:
        self.vocab = vocab
        self.lowercase = lowercase

    def __call__(self, text: str) -> Doc:
        text = text.lower() if self.lowercase else text
        words, spaces = split_tokens(text)
        doc = Doc(self.vocab, words=words, spaces=spaces)
        doc.user_data[_TEXT_KEY] = text        # == doc.text: the tokens cover every character
        return doc

    # Settings live in the pipeline config; the file only keeps the directory (git and wheels
    # drop empty ones) and says what the tokenizer is.
    def to_disk(self, path: Path, **_: Any) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "settings.json").write_text(
            json.dumps({"tokenizer": "inbox_bot.intake_tokenizer.v1",
                        "lowercase": self.lowercase}) + "\n", encoding="utf-8")

    def from_disk(self, path: Path, **_: Any) -> "IntakeTokenizer":
        return self

    def to_bytes(self, **_: Any) -> bytes:
        return b""

    def from_bytes(self, data: bytes, **_: Any) -> "IntakeTokenizer":
        return self


def split_tokens(text: str) -> tuple[list[str], list[bool]]:
    """Split ``text`` into (words, spaces) as ``spacy.tokens.Doc`` expects them."""
    words: list[str] = []
    spaces: list[bool] = []
    for piece in _TOKEN_RE.findall(text):
        if not piece.isspace():
            words.append(piece)
            spaces.append(False)
            continue
        if words and not spaces[-1] and piece[0] == " ":
            spaces[-1] = True
            piece = piece[1:]
        if piece:
            words.append(piece)
            spaces.append(False)
    return words, spaces


@spacy.registry.tokenizers("inbox_bot.intake_tokenizer.v1")
def create_intake_tokenizer(lowercase: bool = True) -> Callable[[Language], IntakeTokenizer]:
    def make_tokenizer(nlp: Language) -> IntakeTokenizer:
        return IntakeTokenizer(nlp.vocab, lowercase=lowercase)

    return make_tokenizer


# --- model architecture -----------------------------------------------------------------------

# spaCy's TextCatBOW counts whole-word n-grams. With ~130 training mails per European language,
# inflected forms (löschen/gelöscht/Löschung, supprimer/suppression) would each need their own
# examples; character n-grams inside words share evidence between them, and over Japanese runs
# they give the 2-5 character words (個人情報, 開示, 削除) directly. Counts are dampened (1+log)
# and each feature group is L2-normalised so that long mails do not get extreme scores.

_WHITESPACE_RE = re.compile(r"\s+")
_NUMPY_OPS = NumpyOps()
_NEW_LABEL_BIAS = -5000  # a label added to a trained model stays off until it is trained


def _ngram_keys(ops: NumpyOps, ids: np.ndarray, sizes: Iterable[int]) -> np.ndarray:
    parts = [ops.ngrams(n, ids) for n in sizes if len(ids) >= n]
    return np.concatenate(parts) if parts else np.zeros((0,), dtype="uint64")


def _char_ngram_keys(ops: NumpyOps, text: str, smallest: int, largest: int) -> np.ndarray:
    """Hashed character n-grams within space-delimited chunks, each chunk padded by one space on
    both sides (scikit-learn's ``char_wb``): n-grams never straddle two words."""
    padded = " " + _WHITESPACE_RE.sub(" ", text).strip() + " "
    codes = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    is_space = (codes == ord(" ")).astype(np.int32)
    inner_spaces = np.concatenate(([0], np.cumsum(is_space)))  # inner_spaces[i] = spaces before i
    parts = []
    for n in range(smallest, largest + 1):
        if len(codes) < n:
            break
        keys = ops.ngrams(n, codes)
        if n > 2:  # no space strictly inside the n-gram
            starts = np.arange(len(keys))
            keys = keys[inner_spaces[starts + n - 1] - inner_spaces[starts + 1] == 0]
        parts.append(keys)
    return np.concatenate(parts) if parts else np.zeros((0,), dtype="uint64")


def _weighted_unit_values(keys: np.ndarray, idf: np.ndarray | None
                          ) -> tuple[np.ndarray, np.ndarray]:
    unique, counts = np.unique(keys, return_counts=True)
    values = 1.0 + np.log(counts.astype("float32"))
    if idf is not None:
        values *= idf[unique % np.uint64(len(idf))]
    norm = float(np.sqrt((values * values).sum()))
    return unique, (values / norm if norm else values).astype("float32")


def _doc_feature_groups(model: Model, doc: Doc) -> tuple[np.ndarray, np.ndarray]:
    """(word n-gram keys, character n-gram keys) of one doc, with repeats."""
    table = doc.to_array([ORTH, IS_SPACE])
    words = np.ascontiguousarray(table[table[:, 1] == 0, 0], dtype="uint64")
    word_keys = _ngram_keys(_NUMPY_OPS, words, range(1, model.attrs["word_ngrams"] + 1))
    text = doc.user_data.get(_TEXT_KEY)
    char_keys = _char_ngram_keys(_NUMPY_OPS, doc.text if text is None else text,
                                 model.attrs["char_ngram_min"],
                                 model.attrs["char_ngram_max"])
    return word_keys, char_keys


_Features = tuple[np.ndarray, np.ndarray, np.ndarray]  # keys (uint64), values, lengths per doc


def _features_forward(model: Model, docs: list[Doc], is_train: bool
                      ) -> tuple[_Features, Callable[[Any], list]]:
    idf = model.get_param("idf") if model.has_param("idf") else None
    all_keys, all_values, lengths = [], [], []
    for doc in docs:
        doc_keys, doc_values = [], []
        for keys in _doc_feature_groups(model, doc):
            if len(keys):
                unique, values = _weighted_unit_values(keys, idf)
                doc_keys.append(unique)
                doc_values.append(values)
        keys = np.concatenate(doc_keys) if doc_keys else np.zeros((0,), dtype="uint64")
        all_keys.append(keys)
        all_values.append(np.concatenate(doc_values) if doc_values else np.zeros((0,), "float32"))
        lengths.append(len(keys))
    output = (np.ascontiguousarray(np.concatenate(all_keys), dtype="uint64"),
              np.ascontiguousarray(np.concatenate(all_values), dtype="float32"),
              np.asarray(lengths, dtype="int32"))
    return output, lambda d_output: []


def _features_init(model: Model, X: Any = None, Y: Any = None) -> Model:
    if model.attrs["idf_buckets"]:
        # Neutral until fit_document_frequencies sees the training docs.
        model.set_param("idf", np.ones((model.attrs["idf_buckets"],), dtype="float32"))
    return model


def hashed_ngram_features(word_ngrams: int, char_ngram_min: int, char_ngram_max: int,
                          idf_buckets: int) -> Model:
    return Model("hashed_ngram_features", _features_forward, init=_features_init,
                 params={"idf": None} if idf_buckets else {},
                 attrs={"word_ngrams": word_ngrams, "char_ngram_min": char_ngram_min,
                        "char_ngram_max": char_ngram_max, "idf_buckets": idf_buckets})


def fit_document_frequencies(nlp: Language, docs: Iterable[Doc]) -> None:
    """Set the feature layer's IDF table from the training docs (smoothed, as scikit-learn's
    TfidfVectorizer). The table is a parameter without gradient: saved, never trained."""
    textcat = nlp.get_pipe(PIPE_NAME).model
    if not textcat.has_ref("features") or not textcat.get_ref("features").has_param("idf"):
        return
    features = textcat.get_ref("features")
    buckets = np.uint64(features.attrs["idf_buckets"])
    df = np.zeros((int(buckets),), dtype="float64")
    n_docs = 0
    for doc in docs:
        for keys in _doc_feature_groups(features, doc):
            df[np.unique(np.unique(keys) % buckets).astype(np.int64)] += 1
        n_docs += 1
    features.set_param("idf", (np.log((1 + n_docs) / (1 + df)) + 1).astype("float32"))


@spacy.registry.architectures("inbox_bot.HashedNgramTextCat.v1")
def build_hashed_ngram_textcat(word_ngrams: int = 2, char_ngram_min: int = 2,
                               char_ngram_max: int = 5, length: int = 2**20,
                               idf: bool = True, nO: int | None = None) -> Model:
    """Multi-label text classifier: word 1..``word_ngrams``-grams and in-word character n-grams,
    TF-IDF weighted, hashed into a sparse linear layer with a sigmoid per label (a logistic
    regression per label sharing the features)."""
    length = 2 ** (length - 1).bit_length()
    features = hashed_ngram_features(word_ngrams, char_ngram_min, char_ngram_max,
                                     idf_buckets=length if idf else 0)
    sparse_linear = SparseLinear_v2(nO=nO, length=length)
    resizable_layer = resizable(sparse_linear, resize_layer=partial(
        resize_linear_weighted, fill_defaults={"b": _NEW_LABEL_BIAS, "W": 0}))
    model = chain(features, resizable_layer, Logistic())
    if nO is not None:
        model.set_dim("nO", nO)
    model.set_ref("features", features)
    model.set_ref("output_layer", sparse_linear)
    model.attrs["multi_label"] = True
    model.attrs["resize_output"] = partial(resize_and_set_ref, resizable_layer=resizable_layer)
    return model


# --- decision rule ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Classification:
    labels: tuple[str, ...]        # best first; ("other",) alone or some of the five others
    scores: dict[str, float]       # every label's model score, 0..1
    needs_review: bool             # no label was confident: ``labels`` is a guess to confirm
    close_call: bool               # the top two labels are within the margin and disagree

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "scores": {label: round(score, 4) for label, score in self.scores.items()},
            "needs_review": self.needs_review,
            "close_call": self.close_call,
        }


@dataclass(frozen=True)
class DecisionRule:
    thresholds: Mapping[str, float] = field(default_factory=dict)  # missing: DEFAULT_THRESHOLD
    close_call_margin: float = DEFAULT_CLOSE_CALL_MARGIN
    review_below: float = DEFAULT_REVIEW_BELOW

    def threshold(self, label: str) -> float:
        return float(self.thresholds.get(label, DEFAULT_THRESHOLD))

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": {label: self.threshold(label) for label in LABELS},
            "close_call_margin": self.close_call_margin,
            "review_below": self.review_below,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DecisionRule":
        return cls(
            thresholds={k: float(v) for k, v in data.get("thresholds", {}).items()},
            close_call_margin=float(data.get("close_call_margin", DEFAULT_CLOSE_CALL_MARGIN)),
            review_below=float(data.get("review_below", DEFAULT_REVIEW_BELOW)),
        )


def decide(scores: Mapping[str, float], rule: DecisionRule = DecisionRule()) -> Classification:
    """Turn model scores into labels.

    - Each of the five action labels applies when its score reaches its threshold.
    - ``other`` is exclusive: it wins when it passes its threshold and either outscores every
      action label or no action label passed.
    - Nothing passed: needs_review, and the single best-scoring label is the guess. Labels
      that passed but whose best score is under ``review_below`` are also needs_review.
    - close_call: the top two scores are within the margin *and* only one of them made it into
      the labels (two confident labels of a multi-label request are not a conflict).
    """
    scores = {label: float(scores.get(label, 0.0)) for label in LABELS}
    ranked = sorted(LABELS, key=lambda label: scores[label], reverse=True)
    passed = [label for label in ranked if label in ACTION_LABELS
              and scores[label] >= rule.threshold(label)]
    other_passed = scores[EXCLUSIVE_LABEL] >= rule.threshold(EXCLUSIVE_LABEL)

    if other_passed and (not passed or ranked[0] == EXCLUSIVE_LABEL):
        labels: tuple[str, ...] = (EXCLUSIVE_LABEL,)
    elif passed:
        labels = tuple(passed)
    else:
        labels = (ranked[0],)
    needs_review = (not passed and not other_passed
                    or max(scores[label] for label in labels) < rule.review_below)

    top, runner_up = ranked[0], ranked[1]
    close = scores[top] - scores[runner_up] <= rule.close_call_margin
    close_call = close and not (top in labels and runner_up in labels)
    return Classification(labels=labels, scores=scores, needs_review=needs_review,
                          close_call=close_call)


def nothing_to_classify() -> Classification:
    """No subject and no new text (e.g. a reply carrying only attachments): ``other`` for a
    human to look at, rather than whatever label the model's biases favour."""
    return Classification(labels=(EXCLUSIVE_LABEL,), scores={label: 0.0 for label in LABELS},
                          needs_review=True, close_call=False)


# --- model ------------------------------------------------------------------------------------


def model_input(subject: str, new_text: str) -> str:
    """The text the model sees; training and prediction both go through here."""
    return textprep.classifier_text(subject or "", new_text or "")


class Classifier:
    """A loaded model plus its decision rule. Load once and reuse it (about 0.1 s to load, plus
    spaCy's import); ``classify_many`` batches through ``nlp.pipe``."""

    def __init__(self, nlp: Language, rule: DecisionRule, version: str) -> None:
        self.nlp = nlp
        self.rule = rule
        self.version = version

    @classmethod
    def load(cls, path: Path | None = None, *, close_call_margin: float | None = None,
             review_below: float | None = None) -> "Classifier":
        model_dir = check_model_dir(path)
        nlp = spacy.load(model_dir)
        rule = load_decision_rule(model_dir)
        rule = replace(rule, **{name: value for name, value in (
            ("close_call_margin", close_call_margin), ("review_below", review_below))
            if value is not None})
        version = model_version(nlp.meta)
        logger.info("classifier %s loaded from %s", version, model_dir)
        return cls(nlp, rule, version)

    def classify(self, subject: str, new_text: str) -> Classification:
        return self.classify_many([(subject, new_text)])[0]

    def classify_many(self, items: Iterable[tuple[str, str]]) -> list[Classification]:
        texts = [model_input(subject, new_text) for subject, new_text in items]
        docs = self.nlp.pipe(texts, batch_size=PIPE_BATCH_SIZE)
        return [decide(doc.cats, self.rule) if text.strip() else nothing_to_classify()
                for text, doc in zip(texts, docs)]


def load_decision_rule(model_dir: Path) -> DecisionRule:
    path = model_dir / THRESHOLDS_FILE
    if not path.is_file():
        logger.warning("no %s next to the model; using %.2f for every label",
                       THRESHOLDS_FILE, DEFAULT_THRESHOLD)
        return DecisionRule()
    return DecisionRule.from_dict(json.loads(path.read_text(encoding="utf-8")))


def save_decision_rule(model_dir: Path, rule: DecisionRule) -> None:
    (model_dir / THRESHOLDS_FILE).write_text(
        json.dumps(rule.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def model_version(meta: Mapping[str, Any]) -> str:
    """``intake-<version>+<corpus digest>``: tells apart two models trained on different data."""
    name = meta.get("name", "intake")
    version = meta.get("version", "0.0.0")
    digest = meta.get("inbox_bot", {}).get("training_data_sha256", "")[:8]
    return f"{name}-{version}+{digest}" if digest else f"{name}-{version}"

