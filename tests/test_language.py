"""language.detect: our seven languages on short snippets, the Japanese shortcut, speed."""
from __future__ import annotations

import time

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


def test_japanese_is_decided_by_script_without_lingua(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise AssertionError("lingua must not be called for Japanese script")

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


def test_low_accuracy_mode_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(language, "_detector", None)      # restored after the test
    monkeypatch.setattr(language, "_low_accuracy", False)
    language.configure(low_accuracy=True)
    assert detect("Bitte löschen Sie mein Konto und alle meine gespeicherten Daten.") == "de"
    assert language._low_accuracy and language._detector is not None


def test_detection_is_fast_on_short_text() -> None:
    snippets = ["Please delete my account.", "Bitte löschen Sie mein Konto.", "退会希望です。"]
    detect(snippets[0])                                   # model load is paid once, not here
    started = time.perf_counter()
    for _ in range(300):
        for snippet in snippets:
            detect(snippet)
    per_call = (time.perf_counter() - started) / 900
    assert per_call < 0.002    # thousands per second with a wide margin for slow CI machines
