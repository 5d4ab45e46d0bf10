"""Training pipeline: corpus loading, shared pre-processing, splits, thresholds, corrections,
evaluation reports. Training runs here use a tiny synthetic corpus and a few epochs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import spacy

from inbox_bot import textprep
from inbox_bot.classify import LABELS, Classifier, DecisionRule, decide, model_input
from inbox_bot.training import (
    DEFAULT_HELDOUT_DIR,
    EvalReport,
    LabelledExample,
    as_labelled_example,
    decision_matrix,
    evaluate,
    example_model_text,
    fold_of,
    load_corpus,
    load_labelled_eml_folder,
    read_labels_csv,
    train,
    training_splits,
    tune_thresholds,
)

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "intake"
FAST = {"training.max_epochs": 15, "components.textcat_multilabel.model.length": 2**16}
FOLDS = 2

_TEMPLATES = {
    "deletion": ["Please delete my account and all of my data {n}.",
                 "Erase everything you store about me {n}.", "アカウントとデータを削除してください{n}"],
    "disclosure": ["What personal data do you hold about me {n}?",
                   "Send me a copy of my data {n}.", "保有個人データの開示を請求します{n}"],
    "revision": ["My address is wrong, please correct it {n}.",
                 "Update the email address on my account {n}.", "登録住所を訂正してください{n}"],
    "complaint": ["You leaked my data, I will report you to the regulator {n}.",
                  "I never consented to your marketing emails {n}.", "苦情です。個人情報が漏洩しました{n}"],
    "other": ["My invoice was charged twice {n}.", "The app crashes when I upload {n}.",
              "パスワードを忘れました{n}"],
}


def write_corpus(directory: Path, per_template: int = 6) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, templates in _TEMPLATES.items():
        for t, template in enumerate(templates):
            for n in range(per_template):
                rows.append({"id": f"xx-t-{label}-{t}-{n}", "lang": "ja" if t == 2 else "en",
                             "subject": "", "body": template.format(n=n), "html": False,
                             "labels": [label]})
    (directory / "tiny.jsonl").write_text(
        "\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n", encoding="utf-8")
    return directory


# --- corpus -----------------------------------------------------------------------------------


def test_load_corpus_skips_a_half_written_line_and_broken_labels(tmp_path: Path) -> None:
    good = {"id": "en-a-0001", "lang": "en", "subject": "s", "body": "b", "html": False,
            "labels": ["gdpr_request", "deletion"]}
    bad_other = {**good, "id": "en-a-0002", "labels": ["other", "deletion"]}
    unknown = {**good, "id": "en-a-0003", "labels": ["refund"]}
    (tmp_path / "en-a.jsonl").write_text(
        "\n".join(json.dumps(r) for r in (good, bad_other, unknown, good))
        + '\n{"id": "en-a-0004", "lang": "e', encoding="utf-8")

    examples = load_corpus(tmp_path)

    assert [ex.id for ex in examples] == ["en-a-0001"]
    assert examples[0].labels == ("deletion", "gdpr_request")   # taxonomy order


def test_labels_csv_accepts_semicolons_and_quoted_commas(tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text('file,labels\na.eml,deletion;gdpr_request\nb.eml,"complaint, deletion"\n'
                        "c.eml,other\n", encoding="utf-8")
    assert list(read_labels_csv(csv_path)) == [
        ("a.eml", ("deletion", "gdpr_request")),
        ("b.eml", ("deletion", "complaint")),
        ("c.eml", ("other",)),
    ]


def test_corrections_accept_objects_with_new_text() -> None:
    class Correction:
        id, lang, subject, new_text, labels = "c1", "en", "s", "please erase me", ["deletion"]

    example = as_labelled_example(Correction())
    assert example.body == "please erase me" and example.labels == ("deletion",)


# --- pre-processing is the live path ----------------------------------------------------------


def test_training_text_is_the_live_classifier_text_of_the_new_text() -> None:
    body = "Please delete my account.\n\nOn Mon, 3 Nov 2025, Support wrote:\n> How can we help?"
    example = LabelledExample("en-x-1", "en", "Re: account", body, ("deletion",))
    new_text, _quoted, _signature = textprep.split_reply(body)

    assert example_model_text(example) == model_input("Re: account", new_text)
    assert "How can we help" not in example_model_text(example)


def test_html_examples_are_converted_before_splitting() -> None:
    html = "<html><body><p>Please <b>delete</b> my data.</p></body></html>"
    example = LabelledExample("en-x-2", "en", "", html, ("deletion",), html=True)
    assert "<" not in example_model_text(example)
    assert "delete" in example_model_text(example)


# --- splits and thresholds --------------------------------------------------------------------


def test_folds_are_stable_and_even() -> None:
    ids = [f"en-a-{n:04d}" for n in range(5000)]
    folds = [fold_of(i, 5) for i in ids]
    assert folds == [fold_of(i, 5) for i in ids]
    assert all(900 < folds.count(k) < 1100 for k in range(5))


def test_corrections_join_the_training_side_of_every_fold() -> None:
    corpus = [LabelledExample(f"en-a-{n:04d}", "en", "", "x", ("other",)) for n in range(100)]
    correction = LabelledExample("staff-fix-1", "en", "", "erase me", ("deletion",))
    for fold in range(5):
        train_part, held_out = training_splits(corpus, [correction], fold, 5)
        assert correction in train_part and correction not in held_out
        assert len(train_part) + len(held_out) == len(corpus) + 1


def test_tuned_threshold_separates_the_classes() -> None:
    golds = [["deletion"]] * 5 + [["other"]] * 5
    scores: list[dict[str, float]] = (
        [{"deletion": s, "other": 0.1} for s in (0.5, 0.6, 0.7, 0.8, 0.9)]
        + [{"deletion": s, "other": 0.9} for s in (0.1, 0.2, 0.25, 0.3, 0.35)])
    thresholds = tune_thresholds(scores, golds)
    assert 0.35 < thresholds["deletion"] <= 0.5
    assert set(thresholds) == set(LABELS)


def test_train_refuses_the_held_out_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="held-out"):
        train(tmp_path / "model", corpus_dir=DEFAULT_HELDOUT_DIR)


# --- tiny training runs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tiny_model(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, dict[str, Any]]:
    output = tmp_path_factory.mktemp("models") / "base"
    return output, train(output, corpus_dir=tiny_corpus, overrides=FAST, folds=FOLDS)


def test_training_writes_a_loadable_model_with_thresholds_and_metrics(
        tiny_model: tuple[Path, dict[str, Any]]) -> None:
    output, metrics = tiny_model
    assert (output / "thresholds.json").is_file()
    assert metrics["n_corrections"] == 0 and metrics["folds"] == FOLDS
    assert set(metrics["thresholds"]) == set(LABELS)
    assert metrics["cross_validation"]["n"] == metrics["n_train"]
    result = Classifier.load(output).classify("", "Please delete my account and all of my data.")
    assert "deletion" in result.labels


def test_saved_model_records_the_tokenizer_so_loading_needs_only_classify(
        tiny_model: tuple[Path, dict[str, Any]]) -> None:
    output, _ = tiny_model
    config = spacy.util.load_config(output / "config.cfg")
    assert config["nlp"]["tokenizer"]["@tokenizers"] == "inbox_bot.intake_tokenizer.v1"
    assert not list(output.rglob("*optimizer*"))


def test_same_seed_gives_the_same_model(tiny_corpus: Path, tiny_model: tuple[Path, dict[str, Any]],
                                        tmp_path: Path) -> None:
    base_dir, base_metrics = tiny_model
    again = train(tmp_path / "again", corpus_dir=tiny_corpus, overrides=FAST, folds=FOLDS, seed=0)
    assert again["thresholds"] == base_metrics["thresholds"]
    text = ("", "Update the email address on my account please.")
    assert (Classifier.load(tmp_path / "again").classify(*text).scores
            == pytest.approx(Classifier.load(base_dir).classify(*text).scores, abs=1e-6))


def test_a_staff_correction_is_learnt(tiny_corpus: Path, tiny_model: tuple[Path, dict[str, Any]],
                                      tmp_path: Path) -> None:
    base_dir, base_metrics = tiny_model
    subject, body = "Your tracking pixels", "Stop following me around with creepy tracking ads."
    correction = {"id": "staff-fix-1", "lang": "en", "subject": subject, "body": body,
                  "labels": ["complaint"], "html": False}

    metrics = train(tmp_path / "corrected", corpus_dir=tiny_corpus, overrides=FAST,
                    folds=FOLDS, include_corrections=[correction])

    assert metrics["n_corrections"] == 1
    assert metrics["n_train"] == base_metrics["n_train"] + 1
    before = Classifier.load(base_dir).classify(subject, body)
    after = Classifier.load(tmp_path / "corrected").classify(subject, body)
    assert after.scores["complaint"] > before.scores["complaint"] + 0.2
    assert after.labels == ("complaint",) and not after.needs_review


# --- evaluation -------------------------------------------------------------------------------


def _eml(subject: str, body: str) -> bytes:
    return (f"From: A Customer <customer@example.com>\r\nTo: inquiries@ikaclo.example.jp\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{abs(hash(body))}@example.com>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n" + body).encode("utf-8")


def test_evaluation_report_on_a_labelled_eml_folder(tmp_path: Path) -> None:
    mails = {
        "delete.eml": ("Delete my account", "Please delete my account and all my data.\r\n"),
        "access.eml": ("Article 15 request", "Under Article 15 GDPR, send me a copy of all "
                       "personal data you hold about me.\r\n"),
        "invoice.eml": ("Invoice", "I was charged twice for my subscription.\r\n"),
    }
    for name, (subject, body) in mails.items():
        (tmp_path / name).write_bytes(_eml(subject, body))
    (tmp_path / "labels.csv").write_text(
        'file,labels\ndelete.eml,deletion\naccess.eml,"gdpr_request,disclosure"\n'
        "invoice.eml,other\n", encoding="utf-8")

    examples = load_labelled_eml_folder(tmp_path)
    report = evaluate(SHIPPED_MODEL, examples)

    assert isinstance(report, EvalReport)
    assert report.n == 3
    assert set(report.per_label) == set(LABELS)
    assert 0.0 <= report.macro_f1 <= 1.0 and 0.0 <= report.exact_match <= 1.0
    assert set(report.per_language) == {ex.lang for ex in examples}
    data = json.loads(json.dumps(report.to_dict()))
    assert {"per_label", "macro_f1", "exact_match", "per_language", "confusions"} <= set(data)
    text = report.to_text()
    assert "macro-F1" in text and "deletion" in text


def test_vectorised_decisions_agree_with_decide() -> None:
    rng = np.random.default_rng(7)
    matrix = rng.random((400, len(LABELS))) ** 2
    thresholds = rng.uniform(0.2, 0.7, len(LABELS))
    rule = DecisionRule(dict(zip(LABELS, thresholds)))
    predicted = decision_matrix(matrix, thresholds)
    for row, flags in zip(matrix, predicted):
        expected = set(decide(dict(zip(LABELS, row)), rule).labels)
        assert {label for label, flag in zip(LABELS, flags) if flag} == expected
