"""Train, tune and evaluate the intake classifier (models/config.cfg -> models/intake).

Corpus: models/data/train/*.jsonl (format: models/data/FORMAT.md). The held-out split in
models/data/heldout/ is for ``evaluate`` only and is never read by ``train``.

Training examples go through the same pre-processing as live mail: body -> html_to_text (HTML
mails) -> split_reply -> new text -> ``classify.model_input(subject, new_text)``.
Thresholds: k-fold cross-validation over the training files (folds by a hash of the example
id) scores every example with a model that did not see it; per-label thresholds are tuned on
those scores and stored with the model, which is then trained on all training files. Staff
corrections join the training side of every run and are never scored.

Command line (the lead's CLI wraps the functions; this is for retraining by hand):
    python -m inbox_bot.training train --output models/intake --evaluate-on models/data/heldout
    python -m inbox_bot.training evaluate models/data/heldout [--model models/intake]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from spacy.language import Language
from spacy.schemas import ConfigSchemaTraining
from spacy.training import Example
from spacy.util import fix_random_seed, load_config, load_model_from_config, registry

from inbox_bot import textprep
from inbox_bot.classify import (
    DEFAULT_CLOSE_CALL_MARGIN,
    DEFAULT_THRESHOLD,
    EXCLUSIVE_LABEL,
    LABELS,
    Classification,
    Classifier,
    DecisionRule,
    decide,
    fit_document_frequencies,
    model_input,
    model_version,
    save_decision_rule,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "models" / "config.cfg"
DEFAULT_TRAIN_DIR = REPO_ROOT / "models" / "data" / "train"
DEFAULT_HELDOUT_DIR = REPO_ROOT / "models" / "data" / "heldout"
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "intake"
CV_FOLDS = 5
MODEL_NAME = "intake"
MODEL_VERSION = "1.0.0"
# Threshold search grid and bounds: extremes would follow a handful of examples.
THRESHOLD_GRID = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))
THRESHOLD_BOUNDS = (0.15, 0.85)
# Files spaCy writes that the shipped model does not need.
_JUNK_IN_MODEL_DIR = ("vocab/lookups.bin",)


# --- corpus -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledExample:
    id: str
    lang: str
    subject: str
    body: str                      # the body as it arrived, or an already separated new text
    labels: tuple[str, ...]
    html: bool = False


def validate_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Known labels, de-duplicated in taxonomy order; ``other`` must stand alone."""
    given = {label.strip() for label in labels if label and label.strip()}
    unknown = given - set(LABELS)
    if unknown:
        raise ValueError(f"unknown label(s): {', '.join(sorted(unknown))}")
    if not given:
        raise ValueError("no label")
    if EXCLUSIVE_LABEL in given and len(given) > 1:
        raise ValueError(f"'{EXCLUSIVE_LABEL}' combined with other labels")
    return tuple(label for label in LABELS if label in given)


def load_corpus(directory: Path) -> list[LabelledExample]:
    """All examples of ``directory``/*.jsonl, sorted by file then line.

    Files are appended to while writers work, so a line that does not parse or breaks the
    format is skipped with a warning naming file and line, rather than failing a whole run.
    """
    examples: list[LabelledExample] = []
    seen: set[str] = set()
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                example = _example_from_record(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("skipping %s:%d: %s", path.name, line_no, exc)
                continue
            if example.id in seen:
                logger.warning("skipping %s:%d: duplicate id %s", path.name, line_no, example.id)
                continue
            seen.add(example.id)
            examples.append(example)
    return examples


def _example_from_record(record: Mapping[str, Any]) -> LabelledExample:
    return LabelledExample(
        id=str(record["id"]),
        lang=str(record.get("lang") or "und"),
        subject=str(record.get("subject") or ""),
        body=str(record["body"]),
        labels=validate_labels(record["labels"]),
        html=bool(record.get("html", False)),
    )


def as_labelled_example(item: Any) -> LabelledExample:
    """Accept a LabelledExample, a mapping, or any object with the same attributes
    (``new_text`` is accepted in place of ``body``) - staff corrections come in several shapes."""
    if isinstance(item, LabelledExample):
        return item
    get = item.get if isinstance(item, Mapping) else (lambda key, default=None:
                                                      getattr(item, key, default))
    body = get("body")
    if body is None:
        body = get("new_text", "")
    return LabelledExample(
        id=str(get("id")),
        lang=str(get("lang", None) or "und"),
        subject=str(get("subject", "") or ""),
        body=str(body or ""),
        labels=validate_labels(get("labels", ())),
        html=bool(get("html", False)),
    )


def load_labelled_eml_folder(folder: Path) -> list[LabelledExample]:
    """``.eml`` files plus ``labels.csv`` (``file,labels``; labels split by ';' or ',')."""
    from inbox_bot.parse import parse  # a later stage may import training; keep parse lazy

    folder = Path(folder)
    examples = []
    for file_name, labels in read_labels_csv(folder / "labels.csv"):
        message = parse((folder / file_name).read_bytes())
        examples.append(LabelledExample(
            id=file_name,
            lang=message.language or "und",
            subject=message.subject,
            body=message.new_text,
            labels=labels,
            html=False,
        ))
    return examples


def read_labels_csv(path: Path) -> Iterator[tuple[str, tuple[str, ...]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for row_no, row in enumerate(csv.reader(handle), 1):
            cells = [cell.strip() for cell in row]
            if not cells or not cells[0] or cells[0].startswith("#"):
                continue
            if row_no == 1 and cells[0].lower() == "file":
                continue
            # Unquoted "a.eml,deletion,gdpr_request" arrives as extra cells: join them back.
            labels = re.split(r"[;,]", ",".join(cells[1:]))
            try:
                yield cells[0], validate_labels(labels)
            except ValueError as exc:
                raise ValueError(f"{path.name} row {row_no}: {exc}") from None


# --- pre-processing (shared with live mail through classify.model_input) ----------------------


def example_new_text(example: LabelledExample) -> str:
    text = textprep.html_to_text(example.body) if example.html else example.body
    new_text, _quoted, _signature = textprep.split_reply(text)
    return new_text


def example_model_text(example: LabelledExample) -> str:
    return model_input(example.subject, example_new_text(example))


def fold_of(example_id: str, folds: int) -> int:
    """Stable across runs, machines and corpus growth: depends on the id alone."""
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % folds


def training_splits(corpus: Sequence[LabelledExample], corrections: Sequence[LabelledExample],
                    fold: int, folds: int
                    ) -> tuple[list[LabelledExample], list[LabelledExample]]:
    """(train, held out) for one cross-validation fold. Corrections always join training: staff
    feedback is learnt from, never used to judge (or tune thresholds for) the model."""
    held_out = [ex for ex in corpus if fold_of(ex.id, folds) == fold]
    train_part = [ex for ex in corpus if fold_of(ex.id, folds) != fold]
    return train_part + list(corrections), held_out


# --- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelStats:
    precision: float
    recall: float
    f1: float
    support: int        # gold count
    predicted: int


@dataclass(frozen=True)
class GroupStats:
    n: int
    macro_f1: float
    exact_match: float


@dataclass(frozen=True)
class EvalReport:
    n: int
    per_label: dict[str, LabelStats]
    macro_f1: float
    exact_match: float
    per_language: dict[str, GroupStats]
    confusions: list[tuple[str, str, int]]            # (gold set, predicted set, count)
    missed_as: dict[str, dict[str, int]]              # label -> what was predicted when missed
    needs_review_rate: float
    close_call_rate: float
    mistakes: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["confusions"] = [{"gold": g, "predicted": p, "count": c}
                              for g, p, c in self.confusions]
        return data

    def to_text(self) -> str:
        lines = [f"examples: {self.n}   macro-F1: {self.macro_f1:.3f}   "
                 f"exact match: {self.exact_match:.3f}   needs review: "
                 f"{self.needs_review_rate:.1%}   close calls: {self.close_call_rate:.1%}",
                 "",
                 f"{'label':<14}{'P':>7}{'R':>7}{'F1':>7}{'gold':>7}{'pred':>7}"]
        for label, stats in self.per_label.items():
            lines.append(f"{label:<14}{stats.precision:7.3f}{stats.recall:7.3f}{stats.f1:7.3f}"
                         f"{stats.support:7d}{stats.predicted:7d}")
        lines += ["", f"{'language':<14}{'n':>7}{'macroF1':>9}{'exact':>7}"]
        for lang, group in self.per_language.items():
            lines.append(f"{lang:<14}{group.n:7d}{group.macro_f1:9.3f}{group.exact_match:7.3f}")
        if self.confusions:
            lines += ["", "most common confusions (gold -> predicted):"]
            lines += [f"  {count:4d}  {gold} -> {pred}" for gold, pred, count in self.confusions]
        return "\n".join(lines)


def evaluate(model_path: Path | None, examples: Sequence[LabelledExample]) -> EvalReport:
    return evaluate_classifier(Classifier.load(model_path), examples)


def evaluate_classifier(classifier: Classifier, examples: Sequence[LabelledExample]
                        ) -> EvalReport:
    predictions = classifier.classify_many(
        (ex.subject, example_new_text(ex)) for ex in examples)
    return build_report(examples, predictions)


def build_report(examples: Sequence[LabelledExample],
                 predictions: Sequence[Classification], top_confusions: int = 12) -> EvalReport:
    golds = [set(ex.labels) for ex in examples]
    preds = [set(p.labels) for p in predictions]
    per_language = {}
    for lang in sorted({ex.lang for ex in examples}):
        idx = [i for i, ex in enumerate(examples) if ex.lang == lang]
        g, p = [golds[i] for i in idx], [preds[i] for i in idx]
        per_language[lang] = GroupStats(len(idx), macro_f1(g, p), exact_match(g, p))

    pair_counts = Counter((_label_set(g), _label_set(p)) for g, p in zip(golds, preds) if g != p)
    missed_as: dict[str, Counter] = {label: Counter() for label in LABELS}
    for g, p in zip(golds, preds):
        for label in g - p:
            missed_as[label].update(p - g or {"(nothing extra)"})
    mistakes = [{"id": ex.id, "lang": ex.lang, "gold": sorted(g), "predicted": sorted(p)}
                for ex, g, p in zip(examples, golds, preds) if g != p]
    n = len(examples)
    return EvalReport(
        n=n,
        per_label=per_label_stats(golds, preds),
        macro_f1=macro_f1(golds, preds),
        exact_match=exact_match(golds, preds),
        per_language=per_language,
        confusions=[(g, p, c) for (g, p), c in pair_counts.most_common(top_confusions)],
        missed_as={label: dict(c.most_common()) for label, c in missed_as.items() if c},
        needs_review_rate=sum(p.needs_review for p in predictions) / n if n else 0.0,
        close_call_rate=sum(p.close_call for p in predictions) / n if n else 0.0,
        mistakes=mistakes,
    )


def _label_set(labels: set[str]) -> str:
    return "+".join(label for label in LABELS if label in labels) or "(none)"


def per_label_stats(golds: Sequence[set[str]], preds: Sequence[set[str]]) -> dict[str, LabelStats]:
    stats = {}
    for label in LABELS:
        tp = sum(label in g and label in p for g, p in zip(golds, preds))
        support = sum(label in g for g in golds)
        predicted = sum(label in p for p in preds)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * tp / (support + predicted) if support + predicted else 0.0
        stats[label] = LabelStats(round(precision, 4), round(recall, 4), round(f1, 4),
                                  support, predicted)
    return stats


def macro_f1(golds: Sequence[set[str]], preds: Sequence[set[str]]) -> float:
    """Mean F1 over the labels that occur in the gold or the predictions of this sample
    (a language without, say, GDPR mail is not rewarded or punished for that label)."""
    stats = per_label_stats(golds, preds)
    relevant = [s.f1 for s in stats.values() if s.support or s.predicted]
    return round(sum(relevant) / len(relevant), 4) if relevant else 0.0


def exact_match(golds: Sequence[set[str]], preds: Sequence[set[str]]) -> float:
    return round(sum(g == p for g, p in zip(golds, preds)) / len(golds), 4) if golds else 0.0


# --- thresholds -------------------------------------------------------------------------------


def tune_thresholds(scores: Sequence[Mapping[str, float]], golds: Sequence[Iterable[str]],
                    refine_rounds: int = 2) -> dict[str, float]:
    """Thresholds for ``decide`` from held-out (out-of-fold) scores.

    Start: per label, the threshold maximising that label's F1. Then ``refine_rounds`` rounds
    of coordinate ascent on what the rule is judged by - macro-F1 plus exact match of the full
    decision (``other`` exclusive, best-guess fallback) - one label at a time over the grid.
    Ties take the middle of the tying range (a margin on both sides rather than the edge of a
    plateau); a label without held-out examples keeps the default; results stay within
    THRESHOLD_BOUNDS.
    """
    matrix = _score_matrix(scores)
    truth = np.array([[label in set(g) for label in LABELS] for g in golds], dtype=bool)
    grid = np.array([t for t in THRESHOLD_GRID
                     if THRESHOLD_BOUNDS[0] <= t <= THRESHOLD_BOUNDS[1]])
    thresholds = np.full(len(LABELS), DEFAULT_THRESHOLD)
    for j in range(len(LABELS)):
        if truth[:, j].any():
            thresholds[j] = _middle_of_best(grid, [
                _f1(matrix[:, j] >= t, truth[:, j]) for t in grid])
    for _round in range(refine_rounds):
        for j in range(len(LABELS)):
            if not truth[:, j].any():
                continue
            objective = []
            for t in grid:
                candidate = thresholds.copy()
                candidate[j] = t
                predicted = decision_matrix(matrix, candidate)
                objective.append(_macro_f1(predicted, truth) + _exact_match(predicted, truth))
            thresholds[j] = _middle_of_best(grid, objective)
    return {label: round(float(t), 2) for label, t in zip(LABELS, thresholds)}


def decision_matrix(matrix: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``classify.decide`` for a whole score matrix (rows: examples, columns: LABELS) at once;
    returns the boolean label matrix. Kept in step with decide by a test."""
    other = LABELS.index(EXCLUSIVE_LABEL)
    action = np.array([j != other for j in range(len(LABELS))])
    passed = (matrix >= thresholds) & action
    any_passed = passed.any(axis=1)
    top = matrix.argmax(axis=1)
    use_other = (matrix[:, other] >= thresholds[other]) & (~any_passed | (top == other))
    predicted = passed & ~use_other[:, None]
    predicted[:, other] = use_other
    guess = ~use_other & ~any_passed
    predicted[np.flatnonzero(guess), top[guess]] = True
    return predicted


def _score_matrix(scores: Sequence[Mapping[str, float]]) -> np.ndarray:
    return np.array([[float(s.get(label, 0.0)) for label in LABELS] for s in scores],
                    dtype=float).reshape(-1, len(LABELS))


def _middle_of_best(grid: np.ndarray, values: Sequence[float]) -> float:
    values = np.asarray(values)
    tying = grid[values >= values.max() - 1e-9]
    return float(tying[len(tying) // 2])


def _f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    denominator = predicted.sum() + truth.sum()
    return 2 * float((predicted & truth).sum()) / denominator if denominator else 0.0


def _macro_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    """As ``macro_f1``: over labels present in the gold or the predictions."""
    relevant = [j for j in range(truth.shape[1]) if truth[:, j].any() or predicted[:, j].any()]
    return (sum(_f1(predicted[:, j], truth[:, j]) for j in relevant) / len(relevant)
            if relevant else 0.0)


def _exact_match(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float((predicted == truth).all(axis=1).mean()) if len(truth) else 0.0


# --- training ---------------------------------------------------------------------------------


def train(output: Path | None = None, *, include_corrections: Iterable[Any] = (), seed: int = 0,
          corpus_dir: Path = DEFAULT_TRAIN_DIR, config_path: Path = DEFAULT_CONFIG,
          overrides: Mapping[str, Any] | None = None, folds: int = CV_FOLDS,
          close_call_margin: float = DEFAULT_CLOSE_CALL_MARGIN) -> dict[str, Any]:
    """Train from ``config_path`` on ``corpus_dir`` (+ corrections); write the model to ``output``
    (default: the checkout's models/intake, the model shipped in the repo).

    1. ``folds``-fold cross-validation over the corpus (folds by a hash of the example id):
       every corpus example is scored once by a model that did not see it.
    2. Per-label thresholds are tuned on those out-of-fold scores.
    3. The shipped model is trained on the whole corpus plus corrections, same settings.
    Returns metrics: sizes, thresholds, the cross-validated report and the training time.
    """
    started = time.monotonic()
    output = Path(output) if output is not None else DEFAULT_MODEL_DIR
    corpus_dir = Path(corpus_dir)
    if corpus_dir.resolve() == DEFAULT_HELDOUT_DIR.resolve():
        raise ValueError("refusing to train on the held-out split")
    if folds < 2:
        raise ValueError("folds must be at least 2")
    corpus = load_corpus(corpus_dir)
    corrections = [as_labelled_example(item) for item in include_corrections]
    if len(corpus) < 2 * folds:
        raise ValueError(f"not enough examples in {corpus_dir} ({len(corpus)}) for {folds} folds")
    logger.info("training on %d examples + %d corrections, %d-fold thresholds",
                len(corpus), len(corrections), folds)
    run = _TrainingRun(Path(config_path), {"system.seed": seed, **(overrides or {})})

    out_of_fold = run.out_of_fold_scores(corpus, corrections, folds)
    rule = DecisionRule(tune_thresholds(out_of_fold, [ex.labels for ex in corpus]),
                        close_call_margin)
    everything = corpus + corrections
    texts = [example_model_text(ex) for ex in everything]
    nlp = run.fit(texts, [ex.labels for ex in everything])

    with tempfile.TemporaryDirectory(prefix="inbox-bot-train-") as tmp:
        model_dir = Path(tmp) / "model"
        nlp.to_disk(model_dir)
        save_decision_rule(model_dir, rule)
        meta = _write_meta(model_dir, seed, everything, texts, len(corrections), folds)
        _remove_junk(model_dir)
        _replace_dir(model_dir, output)

    report = build_report(corpus, [decide(scores, rule) for scores in out_of_fold])
    return {
        "model": str(output),
        "version": model_version(meta),
        "seed": seed,
        "n_train": len(everything),
        "n_corrections": len(corrections),
        "folds": folds,
        "thresholds": rule.to_dict()["thresholds"],
        "cross_validation": report.to_dict(),
        "size_bytes": directory_size(output),
        "seconds": round(time.monotonic() - started, 1),
    }


class _TrainingRun:
    """Fits pipelines described by one config: [nlp]/[components] build the model,
    [initialize] adds the labels, [training] gives optimizer, batcher, dropout and epochs."""

    def __init__(self, config_path: Path, overrides: Mapping[str, Any]) -> None:
        self.config = load_config(config_path, overrides=dict(overrides), interpolate=False)

    def fit(self, texts: Sequence[str], labels: Sequence[Sequence[str]]) -> Language:
        nlp = load_model_from_config(self.config, auto_fill=True, validate=True)
        settings = registry.resolve(nlp.config.interpolate()["training"],
                                    schema=ConfigSchemaTraining)
        seed = settings["seed"] or 0
        fix_random_seed(seed)
        examples = [_example(nlp, text, gold) for text, gold in zip(texts, labels)]
        optimizer = settings["optimizer"]
        nlp.initialize(lambda: examples, sgd=optimizer)
        fit_document_frequencies(nlp, (eg.reference for eg in examples))
        shuffler = random.Random(seed)
        for epoch in range(settings["max_epochs"]):
            shuffler.shuffle(examples)
            losses: dict[str, float] = {}
            for batch in settings["batcher"](examples):
                nlp.update(batch, drop=settings["dropout"], sgd=optimizer, losses=losses)
            logger.debug("epoch %d loss %.4f", epoch, sum(losses.values()))
        if optimizer.averages:
            _keep_averaged_params(nlp, optimizer.averages)
        return nlp

    def out_of_fold_scores(self, corpus: Sequence[LabelledExample],
                           corrections: Sequence[LabelledExample], folds: int
                           ) -> list[dict[str, float]]:
        scores: dict[str, dict[str, float]] = {}
        for fold in range(folds):
            train_part, held_out = training_splits(corpus, corrections, fold, folds)
            nlp = self.fit([example_model_text(ex) for ex in train_part],
                           [ex.labels for ex in train_part])
            held_texts = [example_model_text(ex) for ex in held_out]
            for example, doc in zip(held_out, nlp.pipe(held_texts)):
                scores[example.id] = dict(doc.cats)
            logger.info("fold %d/%d done", fold + 1, folds)
        return [scores[ex.id] for ex in corpus]


def _keep_averaged_params(nlp: Language, averages: Mapping[tuple[int, str], Any]) -> None:
    """Averaged SGD: the shipped weights are the running averages, not the last step's."""
    for _name, pipe in nlp.pipeline:
        for node in pipe.model.walk():
            for param in node.param_names:
                if (node.id, param) in averages:
                    node.set_param(param, averages[(node.id, param)].copy())


def _example(nlp: Language, text: str, labels: Sequence[str]) -> Example:
    doc = nlp.make_doc(text)
    return Example.from_dict(doc, {"cats": {label: float(label in labels) for label in LABELS}})


def training_data_digest(texts: Sequence[str], examples: Sequence[LabelledExample]) -> str:
    digest = hashlib.sha256()
    for text, example in sorted(zip(texts, (ex.labels for ex in examples))):
        digest.update(json.dumps([text, list(example)], ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def _write_meta(model_dir: Path, seed: int, train_part: Sequence[LabelledExample],
                train_texts: Sequence[str], n_corrections: int, folds: int) -> dict[str, Any]:
    meta_path = model_dir / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta.update({
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "description": "inbox-bot privacy inquiry classifier (textcat_multilabel)",
        "inbox_bot": {
            "seed": seed,
            "n_train": len(train_part),
            "n_corrections": n_corrections,
            "threshold_folds": folds,
            "languages": dict(sorted(Counter(ex.lang for ex in train_part).items())),
            "training_data_sha256": training_data_digest(train_texts, train_part),
        },
    })
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return meta


def _remove_junk(model_dir: Path) -> None:
    for relative in _JUNK_IN_MODEL_DIR:
        (model_dir / relative).unlink(missing_ok=True)


def _replace_dir(source: Path, target: Path) -> None:
    """Swap ``target`` for a copy of ``source`` with only a brief window without a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# --- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inbox_bot.training")
    commands = parser.add_subparsers(dest="command", required=True)
    train_cmd = commands.add_parser("train", help="train models/intake from the corpus")
    train_cmd.add_argument("--output", type=Path, default=DEFAULT_MODEL_DIR)
    train_cmd.add_argument("--corpus", type=Path, default=DEFAULT_TRAIN_DIR)
    train_cmd.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    train_cmd.add_argument("--seed", type=int, default=0)
    train_cmd.add_argument("--evaluate-on", type=Path, default=None,
                           help="a held-out JSONL directory to report on after training")
    eval_cmd = commands.add_parser("evaluate", help="evaluate a model on a labelled set")
    eval_cmd.add_argument("data", type=Path, help="a JSONL directory or a labelled .eml folder")
    eval_cmd.add_argument("--model", type=Path, default=None)
    eval_cmd.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "train":
        metrics = train(args.output, seed=args.seed, corpus_dir=args.corpus,
                        config_path=args.config)
        summary = {k: v for k, v in metrics.items() if k != "cross_validation"}
        print(json.dumps(summary, indent=2))
        print("cross-validated (out-of-fold) on the training files:\n"
              + _report_from_dict_text(metrics["cross_validation"]))
        if args.evaluate_on:
            print("held-out:\n" + evaluate(args.output, load_corpus(args.evaluate_on)).to_text())
        return 0

    data = Path(args.data)
    examples = (load_labelled_eml_folder(data) if (data / "labels.csv").is_file()
                else load_corpus(data))
    report = evaluate(args.model, examples)
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if args.json
          else report.to_text())
    return 0


def _report_from_dict_text(data: Mapping[str, Any]) -> str:
    return (f"examples: {data['n']}   macro-F1: {data['macro_f1']:.3f}   "
            f"exact match: {data['exact_match']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
