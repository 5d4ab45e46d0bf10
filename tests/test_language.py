"""language.detect: our seven languages on short snippets, the Japanese shortcut, speed."""
from __future__ import annotations


import pytest

from inbox_bot import language
from inbox_bot.language import detect


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Please delete my account and all my data.", "en"),
        ("I want a copy of my personal data.", "en"),
        ("Bitte löschen Sie mein Konto.", "de"),
        ("Ich möchte eine Kopie meiner Daten.", "de"),
        ("Veuillez supprimer mon compte.", "fr"),
        ("Je voudrais une copie de mes données.", "fr"),
        ("Por favor, eliminen mi cuenta.", "es"),
        ("Quiero una copia de mis datos.", "es"),
        ("Per favore cancellate il mio account.", "it"),
        ("Vorrei una copia dei miei dati.", "it"),
        ("Verwijder alstublieft mijn account.", "nl"),
        ("Ik wil een kopie van mijn gegevens.", "nl"),
        ("アカウントを削除してください", "ja"),
        ("退会希望", "ja"),
        ("ｱｶｳﾝﾄ削除", "ja"),
    ],
)
def test_short_snippets_are_detected(text: str, expected: str) -> None:
    assert detect(text) == expected


def test_japanese_is_decided_by_script_without_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise AssertionError("the model must not be called for Japanese script")

    monkeypatch.setattr(language, "_get_detector", fail)
    assert detect("個人情報の開示をお願いします。登録メール: taro@example.jp") == "ja"


def test_a_kanji_company_name_inside_english_stays_english() -> None:
    text = "Hello from 株式会社サンプル, we would like to ask about your privacy policy and data retention."
    assert detect(text) == "en"


@pytest.mark.parametrize("text", ["", "   ", "12345 !!!", "☺ 123", "---"])
def test_empty_or_letterless_text_is_undetermined(text: str) -> None:
    assert detect(text) == "und"


def test_other_languages_are_closest_or_undetermined() -> None:
    assert detect("Привет, как дела? Удалите мои данные.") in language.SUPPORTED + ("und",)


def test_an_unsure_guess_counts_as_english(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unsure:
        def classify(self, text: str) -> tuple[str, float]:
            return "it", 0.37

    class Sure:
        def classify(self, text: str) -> tuple[str, float]:
            return "it", 0.97

    monkeypatch.setattr(language, "_get_detector", Unsure)
    assert detect("Data request") == "en"
    monkeypatch.setattr(language, "_get_detector", Sure)
    assert detect("Richiesta dati") == "it"


def test_a_failing_detector_gives_undetermined_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def classify(self, text: str) -> tuple[str, float]:
            raise RuntimeError("model file damaged")

    monkeypatch.setattr(language, "_get_detector", Broken)
    assert detect("Please delete my account.") == "und"


def test_one_line_english_requests_are_english() -> None:
    for text in ("Where is my data?", "Data request", "Delete my account",
                 "I want a copy of my personal data."):
        assert detect(text) == "en", text


def _fresh_detector(monkeypatch: pytest.MonkeyPatch, cache_dir) -> object:
    monkeypatch.setenv(language.CACHE_ENV, str(cache_dir))
    monkeypatch.setattr(language, "_detector", None)
    return language._get_detector()


def test_the_cached_language_model_decides_exactly_as_the_shipped_one(tmp_path, monkeypatch):
    from tests.conftest import ROOT
    from inbox_bot.training import load_corpus
    texts = [t for e in load_corpus(ROOT / "models" / "data" / "train")
             for t in (e.subject, e.body[:400])][:1500]
    built = _fresh_detector(monkeypatch, tmp_path)               # from py3langid's file
    assert list(tmp_path.glob("py3langid-*.npz"))
    cached = _fresh_detector(monkeypatch, tmp_path)              # from the cache
    assert cached is not built
    assert [cached.classify(t) for t in texts] == [built.classify(t) for t in texts]


def test_a_damaged_language_model_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    _fresh_detector(monkeypatch, tmp_path)
    (cache,) = tmp_path.glob("py3langid-*.npz")
    cache.write_bytes(b"not a model")
    detector = _fresh_detector(monkeypatch, tmp_path)
    assert detector.classify("Bitte löschen Sie meine Daten")[0] == "de"
    assert "unusable" in caplog.text and cache.stat().st_size > 1000


def test_an_unwritable_cache_directory_only_costs_time(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")                   # a file where the directory should be
    detector = _fresh_detector(monkeypatch, blocked / "cache")
    assert detector.classify("Je voudrais une copie de mes données")[0] == "fr"


def test_a_cache_write_that_fails_halfway_leaves_no_partial_file(tmp_path, monkeypatch):
    import numpy as np

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    detector = _fresh_detector(monkeypatch, tmp_path)
    assert detector.classify("Bitte löschen Sie meine Daten")[0] == "de"
    assert list(tmp_path.iterdir()) == []
