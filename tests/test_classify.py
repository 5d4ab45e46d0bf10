"""Classifier: the decision rule on synthetic scores, the tokenizer, and the shipped model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inbox_bot import classify, model_files
from inbox_bot.classify import (
    LABELS,
    MODEL_ENV,
    Classification,
    Classifier,
    DecisionRule,
    decide,
    default_model_path,
    split_tokens,
)

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "intake"


def scores(**given: float) -> dict[str, float]:
    return {label: given.get(label, 0.01) for label in LABELS}


@pytest.fixture(scope="session")
def shipped() -> Classifier:
    assert (SHIPPED_MODEL / "config.cfg").is_file(), "models/intake must be shipped in the repo"
    return Classifier.load(SHIPPED_MODEL)


# --- decision rule ----------------------------------------------------------------------------


def test_labels_over_their_threshold_are_returned_best_first() -> None:
    result = decide(scores(deletion=0.7, gdpr_request=0.9, complaint=0.2))
    assert result.labels == ("gdpr_request", "deletion")
    assert not result.needs_review
    assert not result.close_call


def test_each_label_uses_its_own_threshold() -> None:
    rule = DecisionRule({"complaint": 0.3, "deletion": 0.8})
    result = decide(scores(deletion=0.7, complaint=0.35), rule)
    assert result.labels == ("complaint",)


def test_other_is_exclusive_when_it_outscores_every_action_label() -> None:
    result = decide(scores(other=0.9, deletion=0.6))
    assert result.labels == ("other",)
    assert not result.needs_review


def test_other_applies_when_no_action_label_passes() -> None:
    rule = DecisionRule({"other": 0.3})
    result = decide(scores(other=0.35, deletion=0.4), rule)
    assert result.labels == ("other",)


def test_action_labels_win_over_a_passing_but_lower_other() -> None:
    result = decide(scores(other=0.55, disclosure=0.8))
    assert result.labels == ("disclosure",)


def test_nothing_confident_needs_review_with_the_best_guess() -> None:
    result = decide(scores(revision=0.3, deletion=0.1))
    assert result.needs_review
    assert result.labels == ("revision",)


def test_a_label_that_passes_a_low_threshold_with_a_low_score_still_needs_review() -> None:
    rule = DecisionRule({"other": 0.2}, review_below=0.5)
    result = decide(scores(other=0.4), rule)
    assert result.labels == ("other",)
    assert result.needs_review
    assert not decide(scores(other=0.6), rule).needs_review


def test_close_call_when_the_top_two_are_within_the_margin_and_only_one_is_chosen() -> None:
    result = decide(scores(other=0.62, complaint=0.58), DecisionRule(close_call_margin=0.1))
    assert result.labels == ("other",)
    assert result.close_call


def test_two_confident_labels_of_one_request_are_not_a_close_call() -> None:
    result = decide(scores(gdpr_request=0.97, disclosure=0.95))
    assert result.labels == ("gdpr_request", "disclosure")
    assert not result.close_call


def test_close_call_margin_is_configurable() -> None:
    close = scores(deletion=0.8, complaint=0.45)
    assert decide(close, DecisionRule(close_call_margin=0.4)).close_call
    assert not decide(close, DecisionRule(close_call_margin=0.1)).close_call


def test_classification_to_dict_is_json_ready() -> None:
    result = decide(scores(deletion=0.9))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["labels"] == ["deletion"]
    assert set(data["scores"]) == set(LABELS)
    assert data["needs_review"] is False and data["close_call"] is False


def test_decision_rule_round_trips_through_a_dict() -> None:
    rule = DecisionRule({"deletion": 0.3}, close_call_margin=0.07, review_below=0.4)
    again = DecisionRule.from_dict(json.loads(json.dumps(rule.to_dict())))
    assert again.threshold("deletion") == 0.3
    assert again.threshold("other") == classify.DEFAULT_THRESHOLD
    assert (again.close_call_margin, again.review_below) == (0.07, 0.4)


# --- tokenizer --------------------------------------------------------------------------------


def test_japanese_runs_become_one_token_per_character() -> None:
    words, _ = split_tokens("個人情報を削除して")
    assert words == list("個人情報を削除して")


def test_latin_words_stay_whole_and_punctuation_splits_off() -> None:
    words, spaces = split_tokens("delete my data, please")
    assert words == ["delete", "my", "data", ",", "please"]
    assert spaces == [True, True, False, True, False]


def test_mixed_script_text_splits_at_script_boundaries() -> None:
    words, _ = split_tokens("GDPR第15条")
    assert words == ["GDPR", "第", "15", "条"]


def test_tokenizer_lowercases_and_keeps_the_text_otherwise(shipped: Classifier) -> None:
    text = "Delete  my\nAccount 今すぐ"
    doc = shipped.nlp.make_doc(text)
    assert doc.text == text.lower()
    assert doc.user_data[classify._TEXT_KEY] == doc.text     # what the features read


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
       | st.text(alphabet=" \t\n\r\u3000\u00a0\x1cab,.個人", max_size=30))
def test_the_text_the_features_read_is_the_text_the_tokens_spell(text: str) -> None:
    # The features read the tokenizer's text instead of rebuilding it from the tokens
    # (classify._TEXT_KEY): only right if the tokens cover every character, spaces included.
    words, spaces = split_tokens(text)
    assert "".join(w + (" " if s else "") for w, s in zip(words, spaces)) == text
    assert all(w and (not w.isspace() or not s) for w, s in zip(words, spaces))


# --- shipped model ----------------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "body", "expected"), [
    ("Delete my account", "Please delete my account and erase all the data you hold about me.",
     {"deletion"}),
    ("My data", "What personal data do you hold about me? Please send me a copy of it.",
     {"disclosure"}),
    ("Wrong address", "My postal address on file is wrong. Please correct it to 12 Elm Road.",
     {"revision"}),
    ("Erasure request", "Under Article 17 GDPR I request the erasure of all my personal data.",
     {"gdpr_request", "deletion"}),
    ("Invoice question", "My last invoice was charged twice. Can you refund one payment?",
     {"other"}),
])
def test_shipped_model_labels_obvious_english_requests(
        shipped: Classifier, subject: str, body: str, expected: set[str]) -> None:
    result = shipped.classify(subject, body)
    assert expected <= set(result.labels), result.to_dict()


@pytest.mark.parametrize(("subject", "body", "expected"), [
    ("退会とデータ削除", "アカウントを退会し、私の個人情報をすべて削除してください。", {"deletion"}),
    ("開示請求", "貴社が保有している私の保有個人データの開示を請求します。", {"disclosure"}),
    ("登録情報の訂正", "登録している住所が間違っています。正しい住所に訂正してください。", {"revision"}),
])
def test_shipped_model_labels_obvious_japanese_requests(
        shipped: Classifier, subject: str, body: str, expected: set[str]) -> None:
    result = shipped.classify(subject, body)
    assert expected <= set(result.labels), result.to_dict()


def test_classify_many_agrees_with_classify(shipped: Classifier) -> None:
    items = [("Delete me", "delete my account"), ("", "個人情報の開示をお願いします")]
    many = shipped.classify_many(items)
    assert [m.labels for m in many] == [shipped.classify(*item).labels for item in items]


def test_shipped_model_has_thresholds_and_a_version(shipped: Classifier) -> None:
    assert (SHIPPED_MODEL / classify.THRESHOLDS_FILE).is_file()
    assert set(shipped.rule.thresholds) == set(LABELS)
    assert shipped.version.startswith("intake-")


def test_shipped_model_directory_is_small_and_clean() -> None:
    files = [p for p in SHIPPED_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30_000_000
    assert not [p for p in files if "optimizer" in p.name or p.suffix in {".pyc", ".tmp"}]


# --- where the model is found -----------------------------------------------------------------


def test_model_loads_from_an_installed_package_location(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site-packages" / "inbox_bot"
    shutil.copytree(SHIPPED_MODEL, package / "models" / "intake")
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setattr(model_files.resources, "files", lambda name: package)

    assert default_model_path() == package / "models" / "intake"
    result = Classifier.load().classify("Delete my account", "Please delete all my data.")
    assert "deletion" in result.labels


def test_checkout_model_is_the_fallback_when_the_package_has_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setattr(model_files.resources, "files", lambda name: tmp_path / "inbox_bot")
    assert default_model_path() == SHIPPED_MODEL


def test_environment_variable_overrides_the_model_location(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "elsewhere"))
    assert default_model_path() == tmp_path / "elsewhere"


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no classifier model"):
        Classifier.load(tmp_path)


def test_result_type_is_frozen() -> None:
    result = Classification(("other",), scores(other=0.9), False, False)
    with pytest.raises(AttributeError):
        result.labels = ("deletion",)  # type: ignore[misc]


def test_empty_mail_is_other_for_a_human_to_review(shipped: Classifier) -> None:
    result = shipped.classify("", "  \n ")
    assert result.labels == ("other",)
    assert result.needs_review
