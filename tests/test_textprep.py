"""textprep: normalise, html_to_text, split_reply, classifier_text."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inbox_bot.textprep import classifier_text, clean_subject, html_to_text, normalise, split_reply

# --------------------------------------------------------------------------------------------
# normalise
# --------------------------------------------------------------------------------------------


def test_wave_dash_and_fullwidth_tilde_normalise_the_same() -> None:
    assert normalise("11月3日〜10日") == normalise("11月3日～10日") == "11月3日~10日"


def test_normalise_applies_nfkc_to_fullwidth_and_halfwidth_forms() -> None:
    assert normalise("ＡＢＣ１２３ ｶﾀｶﾅ") == "ABC123 カタカナ"


def test_normalise_folds_jis_minus_and_fullwidth_hyphen() -> None:
    assert normalise("\u2212") == normalise("\uff0d") == "-"


def test_normalise_newlines_zero_width_and_blank_runs() -> None:
    text = "\n\na\u200bb\r\nline two  \r\rline\u2028three\n\n\n\n\nend\ufeff\n\n"
    assert normalise(text) == "ab\nline two\n\nline\nthree\n\nend"


@given(st.text(max_size=300))
def test_normalise_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once


# --------------------------------------------------------------------------------------------
# html_to_text
# --------------------------------------------------------------------------------------------


def test_html_to_text_drops_scripts_styles_and_comments() -> None:
    html = ("<html><head><style>p{color:red}</style><title>T</title></head><body>"
            "<!--[if mso]>hidden<![endif]--><script>alert(1)</script>"
            "<p>Visible text</p></body></html>")
    assert html_to_text(html) == "Visible text"


def test_html_to_text_keeps_links_readable() -> None:
    html = ('<p>See <a href="https://example.com/privacy">our policy</a>, '
            '<a href="https://example.com/x">https://example.com/x</a> and '
            '<a href="mailto:dpo@example.com">dpo@example.com</a>.</p>')
    assert html_to_text(html) == (
        "See our policy (https://example.com/privacy), https://example.com/x and dpo@example.com."
    )


def test_html_to_text_marks_blockquotes_as_quotes_and_separates_cells() -> None:
    html = ("<p>Reply</p><blockquote>old line</blockquote>"
            "<table><tr><td>A</td><td>B</td></tr></table>")
    assert html_to_text(html) == "Reply\n\n> old line\n\nA B"


def test_html_to_text_does_not_escape_markdown_characters() -> None:
    assert html_to_text("<p>- item<br>1. first<br>+ plus</p>") == "- item\n1. first\n+ plus"


def test_html_to_text_keeps_japanese() -> None:
    assert html_to_text("<div>退会&nbsp;希望です。</div>") == "退会 希望です。"


def test_html_to_text_of_empty_or_unclosed_input() -> None:
    assert html_to_text("") == ""
    assert html_to_text("<script>never closed") == ""


# --------------------------------------------------------------------------------------------
# split_reply: quoted replies
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("attribution", "new"),
    [
        ("On Tue, Nov 3, 2026 at 10:12 AM Support <s@example.com> wrote:", "Please delete my account."),
        ("Am 03.11.2026 um 10:12 schrieb Support <s@example.com>:", "Bitte löschen Sie meine Daten."),
        ("Le 3 nov. 2026 à 10:12, Support <s@example.com> a écrit :", "Merci de supprimer mon compte."),
        ("El 3 nov 2026, a las 10:12, Support <s@example.com> escribió:", "Borren mi cuenta, por favor."),
        ("Il giorno mar 3 nov 2026 alle ore 10:12 Support <s@example.com> ha scritto:", "Cancellate."),
        ("Op di 3 nov 2026 om 10:12 schreef Support <s@example.com>:", "Verwijder mijn account."),
        ("2026年11月3日(火) 10:12 サポート <support@example.com>:", "アカウントを削除してください。"),
        ("On 2026/11/03 10:12, サポート wrote:", "アカウントを削除してください。"),
        ("サポートさんは書きました:", "アカウントを削除してください。"),
    ],
)
def test_top_posted_reply_cuts_attribution_and_quote(attribution: str, new: str) -> None:
    text = f"{new}\n\n{attribution}\n> Thank you for contacting us.\n> Regards\n"
    quote = f"{attribution}\n> Thank you for contacting us.\n> Regards"
    assert split_reply(text) == (new, quote, "")


def test_gmail_attribution_wrapped_over_two_lines_is_quote() -> None:
    text = ("Please delete my account.\n\nOn Tue, Nov 3, 2026 at 10:12 AM Support Team\n"
            "<support@example.com> wrote:\n\n> Thanks.\n")
    new, quoted, _ = split_reply(text)
    assert new == "Please delete my account."
    assert quoted.startswith("On Tue") and quoted.endswith("> Thanks.")


def test_bottom_posted_and_inline_answers_are_kept() -> None:
    text = ("On Tue, Nov 3, 2026, Support wrote:\n> Which account?\n\n"
            "The one for anna@example.org.\n> And the reason?\n\nI no longer use it.\n")
    new, quoted, _ = split_reply(text)
    assert new == "The one for anna@example.org.\n\nI no longer use it."
    assert "> Which account?" in quoted and "> And the reason?" in quoted


def test_dated_attribution_without_quote_marks_cuts_everything_below() -> None:
    history = "On Tue, Nov 3, 2026 at 10:12 AM Support <s@example.com> wrote:\n\nShall we delete it?"
    assert split_reply(f"Yes, go ahead.\n\n{history}\n") == ("Yes, go ahead.", history, "")


def test_undated_wrote_line_over_prose_is_not_cut() -> None:
    text = "In my last mail I wrote:\nplease delete everything.\nThanks"
    assert split_reply(text)[0] == "In my last mail I wrote:\nplease delete everything.\nThanks"


@pytest.mark.parametrize(
    "separator",
    ["-----Original Message-----", "-----元のメッセージ-----", "-----Ursprüngliche Nachricht-----",
     "-----Message d'origine-----"],
)
def test_original_message_separator_cuts(separator: str) -> None:
    text = f"Thanks, that answers it.\n\n{separator}\nFrom: Support\nSent: Tuesday\n\nold text"
    new, quoted, _ = split_reply(text)
    assert new == "Thanks, that answers it."
    assert quoted.startswith(separator) and quoted.endswith("old text")


def test_outlook_header_block_cuts_including_its_rule() -> None:
    text = ("Hi,\nplease stop sending me mail.\n\n________________________________\n"
            "From: Support <s@example.com>\nSent: Tuesday, November 3, 2026 10:12\nTo: me\n"
            "Subject: RE: x\n\nOld text")
    new, quoted, _ = split_reply(text)
    assert new == "Hi,\nplease stop sending me mail."
    assert quoted.startswith("________________________________\nFrom: Support")


def test_japanese_outlook_header_block_cuts() -> None:
    text = ("承知しました。\n\n差出人: サポート <s@example.com>\n送信日時: 2026年11月3日 10:12\n"
            "宛先: 山田\n件名: RE: 退会\n\n古い本文")
    new, quoted, _ = split_reply(text)
    assert new == "承知しました。"
    assert quoted.startswith("差出人:")


def test_lone_from_line_is_text_not_history() -> None:
    text = "From: my old address taro@example.jp\nPlease move my data to the new one."
    assert split_reply(text)[0] == text


# --------------------------------------------------------------------------------------------
# split_reply: forwards
# --------------------------------------------------------------------------------------------

def test_forward_with_fyi_keeps_forwarded_request_as_new_text() -> None:
    text = ("FYI\n\n---------- Forwarded message ---------\nFrom: Taro <t@example.com>\n"
            "Date: Tue, Nov 3, 2026\nSubject: Delete my data\nTo: <privacy@example.com>\n\n"
            "Please delete all my data.\n\nOn Mon, Nov 2, 2026 Support wrote:\n> old\n")
    new, quoted, _ = split_reply(text)
    assert new == "Please delete all my data."
    assert quoted == "On Mon, Nov 2, 2026 Support wrote:\n> old"


def test_japanese_forward_with_empty_note_keeps_forwarded_request() -> None:
    text = ("\n-------- 転送メッセージ --------\n件名: 削除依頼\n日付: 2026/11/03\n差出人: 山田 <y@example.jp>\n"
            "宛先: privacy@example.com\n\nデータを削除してください。\n")
    assert split_reply(text)[0] == "データを削除してください。"


def test_apple_mail_forward_with_real_note_keeps_note_and_quotes_forward() -> None:
    text = ("I sent this a month ago and got no answer!\n\nBegin forwarded message:\n\n"
            "From: me\nSubject: x\n\nDelete my data.")
    new, quoted, _ = split_reply(text)
    assert new == "I sent this a month ago and got no answer!"
    assert quoted.startswith("Begin forwarded message:") and quoted.endswith("Delete my data.")


# --------------------------------------------------------------------------------------------
# split_reply: signatures and the never-empty rule
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "device_line",
    ["Sent from my iPhone", "iPhoneから送信", "Von meinem iPhone gesendet", "Envoyé de mon iPhone",
     "Enviado desde mi iPhone", "Inviato da iPhone", "Verstuurd vanaf mijn iPhone"],
)
def test_mobile_signature_is_cut(device_line: str) -> None:
    text = f"Please delete my data.\n\n{device_line}\n"
    assert split_reply(text) == ("Please delete my data.", "", device_line)


def test_dash_signature_delimiter_is_cut() -> None:
    text = "Bitte löschen Sie meine Daten.\n\n-- \nMax Mustermann\nBeispiel GmbH\n"
    signature = "--\nMax Mustermann\nBeispiel GmbH"
    assert split_reply(text) == ("Bitte löschen Sie meine Daten.", "", signature)


@pytest.mark.parametrize("rule", ["━━━━━━━━━━━━", "────────────", "＿＿＿＿＿＿＿＿", "==========="])
def test_japanese_ruled_signature_is_cut(rule: str) -> None:
    text = f"お世話になっております。\n退会を希望します。\n\n{rule}\n山田太郎\nyamada@example.jp\n{rule}\n"
    new, _, signature = split_reply(text)
    assert new == "お世話になっております。\n退会を希望します。"
    assert signature.startswith(rule) and "山田太郎" in signature


def test_short_ascii_dashes_are_not_a_signature() -> None:
    text = "Please delete:\n---\nmy account\nmy newsletter subscription\n"
    assert split_reply(text)[0] == "Please delete:\n---\nmy account\nmy newsletter subscription"


def test_ruled_section_far_from_the_end_is_not_a_signature() -> None:
    body = "\n".join(f"項目{i}について確認をお願いします。" for i in range(15))
    text = f"ご担当者様\n━━━━━━━━━━\n{body}\n"
    assert split_reply(text)[0] == text.strip("\n")


def test_signature_only_message_is_kept_whole() -> None:
    assert split_reply("-- \nJohn")[0] == "--\nJohn"
    assert split_reply("Sent from my iPhone") == ("Sent from my iPhone", "", "")


def test_quote_only_message_is_kept_whole() -> None:
    assert split_reply("> hello\n> there") == ("> hello\n> there", "", "")


def test_device_line_under_real_signature_cuts_at_the_signature() -> None:
    text = "Delete it please.\n-- \nAnna\nSent from my iPhone"
    assert split_reply(text) == ("Delete it please.", "", "--\nAnna\nSent from my iPhone")


@given(st.text(max_size=400))
@settings(max_examples=300)
def test_split_reply_never_empties_real_text(text: str) -> None:
    new, quoted, signature = split_reply(text)
    if text.strip():
        assert new.strip()
    else:
        assert (new, quoted, signature) == ("", "", "")


# --------------------------------------------------------------------------------------------
# classifier_text
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: AW: [PRIV-2026-00042] Fwd: Delete my data", "Delete my data"),
        ("RE: [PRIV-2026-00042] RE: access", "access"),
        ("転送: Re: 退会について〜", "退会について~"),
        ("ＲＥ：個人情報の削除", "個人情報の削除"),
        ("WG: TR: RV: Datenauskunft", "Datenauskunft"),
        ("Re[2]: follow-up", "follow-up"),
        ("Regarding my account", "Regarding my account"),
    ],
)
def test_clean_subject_removes_prefixes_and_case_tags(subject: str, expected: str) -> None:
    assert clean_subject(subject) == expected


def test_classifier_text_is_subject_newline_body() -> None:
    assert classifier_text("Re: [PRIV-2026-00042] 退会", "退会\u200bしたいです。\n\n\n\nよろしく") == (
        "退会\n退会したいです。\n\nよろしく"
    )


def test_classifier_text_truncates_keeping_the_start() -> None:
    text = classifier_text("Subject", "x" * 5000)
    assert len(text) == 2000 and text.startswith("Subject\nxxx")


def test_classifier_text_with_empty_parts() -> None:
    assert classifier_text("", "body") == "body"
    assert classifier_text("Re: hi", "") == "hi"
    assert classifier_text("", "") == ""
