"""parse(): charsets (Japanese above all), HTML, forwards, hostile input, the realworld corpus."""
from __future__ import annotations

import base64
import re
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import mailparser
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inbox_bot.parse import Attachment, InboundMessage, decode_bytes, parse, sanitise_filename

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "emails"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "realworld"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def process(name: str) -> InboundMessage:
    return parse(fixture(f"{name}.eml"))


def message(headers: str, body: bytes = b"", eol: bytes = b"\n") -> bytes:
    head = headers.strip("\n").replace("\n", eol.decode()).encode("ascii")
    return head + eol + eol + body


def assert_well_formed(msg: InboundMessage) -> None:
    """Invariants every parsed message keeps, whatever came in."""
    assert isinstance(msg, InboundMessage)
    for value in (msg.subject, msg.sender_name):
        assert not re.search(r"[\x00-\x1f\x7f\u2028\u2029]", value)
    for value in (msg.sender, *msg.to, *msg.cc, msg.reply_to or ""):
        assert value == value.lower() and not re.search(r"[\s\x00-\x1f]", value)
    for value in (msg.message_id or "", *msg.in_reply_to, *msg.references):
        assert "<" not in value and ">" not in value and not re.search(r"[\s\x00-\x1f]", value)
    for attachment in msg.attachments:
        name = attachment.filename or ""
        assert "/" not in name and "\\" not in name
        assert len(attachment.sha256) == 64
    for values in msg.headers.values():
        assert all("\n" not in v and "\r" not in v for v in values)
    assert isinstance(msg.text, str) and isinstance(msg.new_text, str)
    assert msg.date is None or msg.date.tzinfo is not None
    assert not any(d.startswith("parse-failed") for d in msg.defects) or msg.subject == ""


# --------------------------------------------------------------------------------------------
# Japanese charsets
# --------------------------------------------------------------------------------------------

def test_iso2022jp_7bit_body_is_decoded_where_mail_parser_returns_escape_sequences() -> None:
    raw = fixture("iso2022jp_7bit.eml")
    upstream_body = mailparser.parse_from_bytes(raw).body
    msg = parse(raw)
    assert msg.text.startswith("お世話になっております。\n私の個人情報の開示を請求します。")
    assert "\x1b" not in msg.text
    assert msg.subject == "個人情報の開示請求"
    assert msg.sender_name == "山田 太郎"
    assert msg.sender == "taro.yamada@example.jp"
    assert msg.language == "ja"
    if "\x1b$B" not in upstream_body:
        pytest.skip("mail-parser issue #79 fixed upstream; the re-decoding is now belt and braces")


def test_cp50220_nec_characters_are_decoded_in_body() -> None:
    msg = process("cp50220_outlook")
    assert "①アカウントの削除をお願いします。" in msg.text
    assert "②㈱サンプルの山田です。" in msg.text
    assert "10㍉" in msg.text
    assert "\ufffd" not in msg.text
    assert any("cp50220" in d for d in msg.defects)


def test_cp50220_nec_characters_are_decoded_in_subject() -> None:
    msg = process("cp50220_outlook")
    assert msg.subject == "①退会申請（㈱サンプル）"


def test_shift_jis_body_and_subject_are_decoded_with_cp932_extensions() -> None:
    msg = process("shift_jis")
    assert msg.subject == "①データ削除のお願い"
    assert msg.text == "①登録メールアドレスのデータを削除してください。\n～よろしくお願いします～"
    assert msg.language == "ja"


def test_euc_jp_body_and_subject_are_decoded() -> None:
    msg = process("euc_jp")
    assert msg.subject == "利用停止の依頼"
    assert msg.text == "利用停止をお願いします。\n鈴木"


def test_euc_jp_nec_row13_falls_back_through_cp932() -> None:
    body = b"\xad\xa1\xad\xea" + "の件".encode("euc_jp")     # ①㈱ in eucJP-ms
    msg = parse(message("Content-Type: text/plain; charset=euc-jp", body))
    assert msg.text == "①㈱の件"


def test_utf8_base64_subject_split_mid_character_is_joined() -> None:
    encoded = "個人情報".encode("utf-8")
    first, second = encoded[:5], encoded[5:]            # splits the second character
    subject = (f"=?UTF-8?B?{base64.b64encode(first).decode()}?=\n "
               f"=?UTF-8?B?{base64.b64encode(second).decode()}?=")
    msg = parse(message(f"Subject: {subject}", b"x"))
    assert msg.subject == "個人情報"


def test_raw_8bit_shift_jis_subject_is_guessed() -> None:
    raw = "Subject: 退会したい\nFrom: a@example.jp\n\nbody".encode("cp932")
    assert parse(raw).subject == "退会したい"


def test_raw_jis_subject_without_encoded_word_is_decoded() -> None:
    raw = b"Subject: " + "こんにちは".encode("iso2022_jp") + b"\n\nbody"
    assert parse(raw).subject == "こんにちは"


def test_iso2022jp_label_on_shift_jis_bytes_is_guessed() -> None:
    body = "削除をお願いします".encode("cp932")
    msg = parse(message("Content-Type: text/plain; charset=ISO-2022-JP", body))
    assert msg.text == "削除をお願いします"


@pytest.mark.parametrize(
    ("data", "declared", "expected"),
    [
        ("①㈱".encode("cp932"), "shift_jis", "①㈱"),
        ("テスト".encode("utf-8"), "x-unknown", "テスト"),
        ("café".encode("cp1252"), "us-askey", "café"),
        ("Привет".encode("mac_cyrillic"), "x-mac-cyrillic", "Привет"),
        ("“quoted”".encode("cp1252"), "iso-8859-1", "“quoted”"),
        (b"\xff\xfe\xfd", None, "ÿþý"),
        (b"\\u0041", "unicode-escape", "\\u0041"),          # never interpreted as code
        ("ｶﾀｶﾅ".encode("iso2022_jp_ext"), "iso-2022-jp", "ｶﾀｶﾅ"),
    ],
)
def test_decode_bytes_fallback_chain(data: bytes, declared: str | None, expected: str) -> None:
    text, _ = decode_bytes(data, declared)
    assert text == expected


# --------------------------------------------------------------------------------------------
# HTML, alternatives, forwards
# --------------------------------------------------------------------------------------------

def test_html_only_mail_becomes_readable_text_without_scripts() -> None:
    msg = process("html_only")
    request = "I would like a copy of my personal data, see my account (https://example.com/account)."
    assert msg.text.startswith(request)
    assert "document.write" not in msg.text and "display:none" not in msg.text
    assert msg.new_text == request
    assert msg.quoted == "> Old quoted text"


def test_alternative_with_placeholder_plain_uses_html() -> None:
    msg = process("alternative_placeholder_plain")
    assert "Please delete my account" in msg.text
    assert "HTML capable" not in msg.text
    assert "alert" not in msg.text and "color:red" not in msg.text


def test_alternative_prefers_real_plain_text() -> None:
    raw = message(
        'Content-Type: multipart/alternative; boundary="b"',
        b"--b\nContent-Type: text/plain\n\nPlain words here.\n--b\nContent-Type: text/html\n\n"
        b"<p>HTML words here.</p>\n--b--\n",
    )
    assert parse(raw).text == "Plain words here."


def test_alternative_with_empty_plain_uses_html() -> None:
    raw = message(
        'Content-Type: multipart/alternative; boundary="b"',
        b"--b\nContent-Type: text/plain\n\n \n--b\nContent-Type: text/html; charset=shift_jis\n\n"
        + "<p>退会を希望します。</p>".encode("cp932") + b"\n--b--\n",
    )
    assert parse(raw).text == "退会を希望します。"


def test_forwarded_rfc822_attachment_keeps_the_forwarded_request_as_new_text() -> None:
    msg = process("forwarded_rfc822")
    assert msg.new_text == "Please delete all the data you hold about me."
    assert "---------- Forwarded message ---------" in msg.text
    assert [a.content_type for a in msg.attachments] == ["message/rfc822"]


# --------------------------------------------------------------------------------------------
# Hostile and odd input
# --------------------------------------------------------------------------------------------

def test_header_injection_via_encoded_crlf_is_removed_from_subject_and_name() -> None:
    msg = process("hostile_names_and_injection")
    assert msg.subject == "Hello Bcc: victim@example.com body"
    assert "\r" not in msg.sender_name and "\n" not in msg.sender_name
    assert msg.sender == "eve@evil.example"


def test_double_encoded_subject_leaves_no_encoded_word_behind() -> None:
    inner = "=?utf-8?q?Hello=0D=0ABcc=3A_victim=40example=2Ecom?="
    outer = "=?utf-8?b?" + base64.b64encode(inner.encode()).decode() + "?="
    msg = parse(message(f"Subject: {outer}", b"x"))
    assert msg.subject == "Hello Bcc: victim@example.com"
    assert "nested-encoded-words" in msg.defects


def test_attachment_names_are_sanitised_basenames() -> None:
    msg = process("hostile_names_and_injection")
    names = [a.filename for a in msg.attachments]
    assert names == ["passwd", "evil .pdf", "winmail.dat"]
    passwd = msg.attachments[0]
    assert passwd == Attachment(
        filename="passwd",
        content_type="application/octet-stream",
        size=32,
        sha256="e787b373a74594b33b77892a903647d7a6cf519d427a0b0790e11be4482696e0",
    )


def test_tnef_winmail_dat_is_kept_as_metadata_and_noted() -> None:
    msg = process("hostile_names_and_injection")
    assert any(a.content_type == "application/vnd.ms-tnef" for a in msg.attachments)
    assert any(d.startswith("tnef-attachment") for d in msg.defects)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\cmd.exe", "cmd.exe"),
        ("..", None),
        ("   ", None),
        ("inv\u202eoice.pdf", "invoice.pdf"),
        ("a\x00b\r\nc.txt", "abc.txt"),
        ("x" * 500 + ".pdf", "x" * 146 + ".pdf"),
        ('what?<>:"|*.doc', "what_______.doc"),
    ],
)
def test_sanitise_filename(name: str, expected: str | None) -> None:
    assert sanitise_filename(name) == expected


def test_unknown_charsets_and_missing_closing_boundary_still_give_text() -> None:
    msg = process("unknown_charsets_no_close")
    assert msg.subject == "cafénaïve"
    assert msg.text == "Привет, удалите мои данные.\n\nGrüße aus Köln"
    assert "mime: CloseBoundaryNotFoundDefect" in msg.defects
    assert any(d.startswith("body-charset: us-askey") for d in msg.defects)


def test_bom_and_cr_only_line_ends_are_repaired() -> None:
    msg = process("cr_only_bom")
    assert msg.subject == "CR only"
    assert msg.text == "Line one\nLine two"
    assert {"bom-stripped", "cr-line-endings"} <= set(msg.defects)


def test_empty_bytes_give_an_empty_message() -> None:
    msg = parse(b"")
    assert (msg.subject, msg.text, msg.sender, msg.language) == ("", "", "", "und")


def test_body_without_headers_is_text() -> None:
    msg = parse(b"please delete my data\n")
    assert msg.text == "please delete my data"


def test_huge_headers_are_capped() -> None:
    raw = (b"Subject: " + b"A" * 200_000 + b"\nX-Big: " + b"x " * 100_000
           + b"\nFrom: a@b.example\n\nbody")
    msg = parse(raw)
    assert len(msg.subject) <= 1000
    assert all(len(v) <= 4096 for values in msg.headers.values() for v in values)
    assert "header-truncated: subject" in msg.defects
    assert msg.sender == "a@b.example"


def test_deeply_nested_multipart_falls_back_to_raw_text() -> None:
    level = b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n"
    raw = b"".join(level % (i, i) for i in range(1500))
    msg = parse(raw + b"hello")
    assert msg.text.endswith("hello")
    assert any(d.startswith("parse-failed") for d in msg.defects)


def test_mail_parser_failure_falls_back_to_compat32() -> None:
    # A nested part whose boundary never starts (stalwart malformed/001) makes mail-parser 4.8
    # raise AttributeError while looking for the epilogue.
    raw = message(
        'Content-Type: multipart/mixed; boundary="ab"\nSubject: still parsed',
        b'--ab\nContent-Type: multipart/mixed; boundary="a"\n\n--ab\nContent-Type: text/plain\n\n'
        b"body text\n--a\n",
    )
    msg = parse(raw)
    assert msg.subject == "still parsed"
    assert "body text" in msg.text
    assert any(d.startswith("mail-parser-failed") for d in msg.defects)


def test_addresses_are_lower_cased_and_names_decoded() -> None:
    raw = message(
        "From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <Juergen@Example.DE>\n"
        "Reply-To: Other <Reply@Example.DE>\n"
        "To: A <A@x.example>, b@X.example\n"
        "To: c@x.example\n"
        "Cc: \"Team, Privacy\" <Privacy@Example.com>",
        b"x",
    )
    msg = parse(raw)
    assert msg.sender == "juergen@example.de"
    assert msg.sender_name == "Jürgen Müller"
    assert msg.reply_to == "reply@example.de"
    assert msg.to == ("a@x.example", "b@x.example", "c@x.example")
    assert msg.cc == ("privacy@example.com",)


def test_encoded_display_name_cannot_add_an_address() -> None:
    raw = message("From: =?utf-8?q?attacker=40evil.example=2C?= <real@example.com>", b"x")
    msg = parse(raw)
    assert msg.sender == "real@example.com"


def test_message_ids_are_extracted_without_brackets_and_sanitised() -> None:
    raw = message(
        "Message-ID: <abc\t123@example.com>\n"
        "In-Reply-To: <reply-1@example.com> (comment)\n"
        "References: <r1@example.com> junk\n <r2@example.com>\n\t<r3@example.com>",
        b"x",
    )
    msg = parse(raw)
    assert msg.message_id == "abc123@example.com"
    assert msg.in_reply_to == ("reply-1@example.com",)
    assert msg.references == ("r1@example.com", "r2@example.com", "r3@example.com")


def test_headers_keep_all_occurrences_decoded() -> None:
    raw = message("Received: one\nReceived: two\nX-Note: =?utf-8?b?44GC?=\nSubject: s", b"x")
    msg = parse(raw)
    assert msg.headers["received"] == ("one", "two")
    assert msg.headers["x-note"] == ("あ",)


def test_date_is_timezone_aware_utc() -> None:
    msg = process("iso2022jp_7bit")
    assert msg.date == datetime(2026, 11, 3, 1, 12, tzinfo=timezone.utc)


def test_reply_is_split_into_new_text_and_quote() -> None:
    body = (b"Please delete my account.\n\n"
            b"On Tue, Nov 3, 2026 at 10:12 AM Support <support@example.com> wrote:\n"
            b"> Thank you for contacting us.\n")
    msg = parse(message("From: a@example.org\nSubject: Re: request", body))
    assert msg.new_text == "Please delete my account."
    assert msg.quoted.startswith("On Tue, Nov 3, 2026")
    assert msg.language == "en"


# --------------------------------------------------------------------------------------------
# The realworld corpus and fuzzing
# --------------------------------------------------------------------------------------------

_MBOX_SEPARATOR = re.compile(rb"(?m)^From [^\r\n]*\r?\n")


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "SOURCES.md")


def corpus_messages(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if "mbox" not in path.relative_to(CORPUS).parts:
        return [data]
    return [chunk for chunk in _MBOX_SEPARATOR.split(data) if chunk.strip()]


@lru_cache(maxsize=1)
def small_corpus_sample() -> tuple[bytes, ...]:
    messages = [m for p in corpus_files() for m in corpus_messages(p) if len(m) < 20_000]
    return tuple(messages[::7]) or (fixture("iso2022jp_7bit.eml"),)


@pytest.mark.skipif(not CORPUS.is_dir(), reason="realworld corpus not available")
@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: str(p.relative_to(CORPUS)))
def test_every_corpus_message_parses(path: Path) -> None:
    for raw in corpus_messages(path):
        msg = parse(raw)
        assert_well_formed(msg)
        assert not any(d.startswith("parse-failed") for d in msg.defects), msg.defects


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_parse_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    assert_well_formed(parse(raw))


_INSERTIONS = [
    b"\x1b$B", b"\x1b(B", b"=?iso-2022-jp?B?GyRCLSE=?=", b"=?utf-8?q?=0D=0A?=", b"\r", b"\n\n",
    b"--", b"=?", b"?=", b"\x00", b"\xef\xbb\xbf", b"\xff",
    b"Content-Type: multipart/mixed; boundary=x\n",
    b"; charset=x-unknown", b'; filename="../../x"', b"begin 644 x\n", b"=\n",
]


_MUTATIONS = ["flip", "delete", "insert", "truncate", "duplicate", "noise"]


@st.composite
def mutated_corpus_message(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(small_corpus_sample())))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(_MUTATIONS))
        if operation == "flip":
            data[at] = draw(st.integers(0, 255))
        elif operation == "delete":
            del data[at:at + draw(st.integers(1, 200))]
        elif operation == "insert":
            data[at:at] = draw(st.sampled_from(_INSERTIONS))
        elif operation == "truncate":
            del data[at:]
        elif operation == "duplicate":
            data[at:at] = data[draw(st.integers(0, len(data) - 1)):][:draw(st.integers(1, 400))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_corpus_message())
def test_parse_never_raises_on_mutated_real_messages(raw: bytes) -> None:
    msg = parse(raw)
    assert_well_formed(msg)
    assert not any(d.startswith("parse-failed") for d in msg.defects), msg.defects
