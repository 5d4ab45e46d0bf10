"""Parse raw bytes into one typed ``InboundMessage`` (mail-parser plus charset repairs).

``parse()`` never raises. The ladder, each step recorded in ``defects``:

1. mail-parser (``mailparser.parse_from_bytes``; compat32 underneath, which is fast) builds
   the MIME tree and supplies the Date and the MIME defect categories;
2. if mail-parser fails, the standard library's compat32 parser builds the tree alone;
3. if that fails too, a minimal message whose text is the raw bytes decoded as UTF-8 with
   replacement characters.

Text is always decoded here from each part's own bytes, never taken from mail-parser's body:
mail-parser 4.8 returns ISO-2022-JP bodies sent as 7bit as raw ``ESC $ B`` text (upstream
issue #79), and neither it nor the standard library decodes Outlook's "ISO-2022-JP", which is
really CP50220 (NEC row 13: ①, ㈱, ㍉ ...). See ``decode_bytes`` for the charset chain.

Nothing is written to disk; attachments are kept as metadata (sanitised name, type, size,
SHA-256) only.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.utils
import functools
import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from typing import Callable, Iterable, TypeVar

import mailparser

from inbox_bot import language, textprep

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _quieten_mailparser() -> None:
    """mail-parser logs a warning per ordinary multipart part ("Email content 'mixed' not
    handled") and an error per odd encoded word, with sender text (line breaks included) in the
    line. Both concern input this module re-decodes itself and records in ``defects``. Silence it
    unless the operator configured that logger explicitly."""
    mailparser_logger = logging.getLogger("mailparser")
    if mailparser_logger.level == logging.NOTSET:
        mailparser_logger.setLevel(logging.CRITICAL)


_quieten_mailparser()


@dataclass(frozen=True)
class Attachment:
    filename: str | None    # sanitised display name only; never used as a path
    content_type: str
    size: int
    sha256: str


@dataclass(frozen=True)
class InboundMessage:
    message_id: str | None              # without angle brackets
    in_reply_to: tuple[str, ...]        # Message-IDs without angle brackets
    references: tuple[str, ...]
    sender: str                         # lower-cased address from From ("" if none)
    sender_name: str
    reply_to: str | None
    to: tuple[str, ...]                 # lower-cased addresses
    cc: tuple[str, ...]
    subject: str                        # decoded, single line, no CR/LF
    date: datetime | None               # sender's Date: header (untrusted)
    text: str                           # whole body as text (HTML converted)
    new_text: str                       # text without quoted history and signature
    quoted: str
    signature: str
    language: str                       # ISO 639-1 code, "und" if unknown
    attachments: tuple[Attachment, ...] = ()
    headers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # lower-case name -> values
    defects: tuple[str, ...] = ()       # what was odd or repaired while parsing
    report_text: str = ""               # delivery/feedback report parts (bounce matching)


# Caps: a sender controls every size, so every size is bounded.
MAX_RAW_HEADER_CHARS = 64_000       # a single header value read for decoding
MAX_HEADER_VALUE_CHARS = 4_096      # a value kept in ``headers``
MAX_HEADER_FIELDS = 300             # values kept in ``headers`` over all names
MAX_VALUES_PER_HEADER = 50
MAX_HEADER_NAME_CHARS = 100
MAX_SUBJECT_CHARS = 1_000
MAX_NAME_CHARS = 200
MAX_ADDRESS_CHARS = 320
MAX_ADDRESSES = 100
MAX_ADDRESS_HEADER_CHARS = 16_000   # getaddresses is pure Python: ~8 µs per address
MAX_ID_CHARS = 250
MAX_REFERENCES = 100
MAX_FILENAME_CHARS = 150
MAX_PARTS = 500
MAX_DEPTH = 30
MAX_TEXT_CHARS = 1_000_000
MAX_DEFECTS = 50

_UTF8_BOM = b"\xef\xbb\xbf"


# =============================================================================================
# Entry point
# =============================================================================================

def parse(raw: bytes) -> InboundMessage:
    """Parse one message. Never raises; what was odd or repaired is listed in ``defects``."""
    defects = _Defects()
    try:
        data = _prepare_bytes(raw, defects)
        message, date, mime_defects = _load(data, defects)
        # mail-parser's own body decoding is replaced below, so its charset complaints are moot.
        defects.extend(f"mime: {name}" for name in sorted(mime_defects - {"CharsetDecodeDefect"}))
        return _build(message, date, defects)
    except Exception as exc:  # the contract: any input yields a message
        logger.warning("parse failed (%s); keeping the raw text only", type(exc).__name__)
        defects.add(f"parse-failed: {type(exc).__name__}")
        return _minimal_message(raw, defects)


class _Defects:
    """Ordered, de-duplicated, capped list of defect notes ("kind: detail")."""

    def __init__(self) -> None:
        self._items: dict[str, None] = {}

    def add(self, note: str) -> None:
        if len(self._items) < MAX_DEFECTS:
            self._items.setdefault(note[:200], None)

    def extend(self, notes: Iterable[str]) -> None:
        for note in notes:
            self.add(note)

    def as_tuple(self) -> tuple[str, ...]:
        return tuple(self._items)


def _prepare_bytes(raw: object, defects: _Defects) -> bytes:
    data = _as_bytes(raw, defects)
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
        defects.add("bom-stripped")
    if data[:1] in (b"\r", b"\n"):
        # A blank line first would make every header part of the body.
        data = data.lstrip(b"\r\n")
        defects.add("leading-blank-lines-stripped")
    if b"\r" in data and b"\n" not in data:
        data = data.replace(b"\r", b"\n")
        defects.add("cr-line-endings")
    return data


def _as_bytes(raw: object, defects: _Defects) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if raw is None:
        defects.add("input-not-bytes: None")
        return b""
    if isinstance(raw, (bytearray, memoryview)):
        return bytes(raw)
    defects.add(f"input-not-bytes: {type(raw).__name__}")
    return str(raw).encode("utf-8", "replace")


def _load(data: bytes, defects: _Defects) -> tuple[Message, datetime | None, set[str]]:
    """The MIME tree, the Date, and MIME defect names: mail-parser first, compat32 second."""
    try:
        parsed = mailparser.parse_from_bytes(data)
        message = parsed.message
        if message is None:
            raise ValueError("mail-parser returned no message")
        return message, _aware(parsed.date), set(parsed.defects_categories)
    except Exception as exc:
        defects.add(f"mail-parser-failed: {type(exc).__name__}")
        if isinstance(exc, RecursionError) or type(exc).__name__ == "MailParserRecursionError":
            raise  # compat32 would recurse the same way; go straight to the minimal message
    message = email.message_from_bytes(data)  # compat32: fast, tolerant
    mime_defects = {type(d).__name__ for part in _walk_limited(message) for d in part.defects}
    return message, _date_from_header(message), mime_defects


def _walk_limited(message: Message) -> Iterable[Message]:
    stack, seen = [message], 0
    while stack and seen < MAX_PARTS:
        part = stack.pop()
        seen += 1
        yield part
        payload = _guard(part.get_payload, None)
        if isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))


def _aware(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _date_from_header(message: Message) -> datetime | None:
    raw = _first_raw_header(message, "date")
    if not raw:
        return None
    try:
        return _aware(email.utils.parsedate_to_datetime(_unfold(raw)))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


# =============================================================================================
# Building the InboundMessage
# =============================================================================================

def _build(message: Message, date: datetime | None, defects: _Defects) -> InboundMessage:
    raw_headers = _raw_headers(message, defects)
    first = {name: values[0] for name, values in raw_headers.items()}

    sender_name, sender = _first_mailbox(first.get("from", ""), defects)
    reply_to = _addresses(first.get("reply-to", ""), defects)
    subject = _single_line(_decode_display(first.get("subject", ""), defects), MAX_SUBJECT_CHARS)

    body = _Body(defects)
    body.collect(message, depth=0)
    text = _cap_text(textprep.normalise_newlines_only(body.text()), defects)
    new_text, quoted, signature = textprep.split_reply(text)
    headers = _decoded_headers(raw_headers, defects)
    message_ids = _message_ids(first.get("message-id", ""), defects)
    in_reply_to = _message_ids(first.get("in-reply-to", ""), defects)
    references = _cap_references(_message_ids(first.get("references", ""), defects))
    to = _addresses_all(raw_headers.get("to", ()), defects)
    cc = _addresses_all(raw_headers.get("cc", ()), defects)

    return InboundMessage(
        message_id=message_ids[0] if message_ids else None,
        in_reply_to=in_reply_to,
        references=references,
        sender=sender,
        sender_name=sender_name,
        reply_to=reply_to[0] if reply_to else None,
        to=to,
        cc=cc,
        subject=subject,
        date=date,
        text=text,
        new_text=new_text,
        quoted=quoted,
        signature=signature,
        language=language.detect(_language_sample(subject, new_text)),
        attachments=tuple(body.attachments),
        headers=headers,
        report_text="\n".join(body.report),
        defects=defects.as_tuple(),     # last: everything above may add to it
    )


def _language_sample(subject: str, new_text: str) -> str:
    """The new text; with the subject in front when the text alone is too short to tell."""
    if len(new_text.strip()) >= 20:
        return new_text
    return f"{subject}\n{new_text}".strip()


def _cap_text(text: str, defects: _Defects) -> str:
    if len(text) > MAX_TEXT_CHARS:
        defects.add(f"body-truncated: {len(text)} chars")
        return text[:MAX_TEXT_CHARS]
    return text


def _minimal_message(raw: object, defects: _Defects) -> InboundMessage:
    """Last resort: the raw bytes as text. Must not raise, so every step is guarded."""
    try:
        data = _as_bytes(raw, _Defects())
        text = textprep.normalise_newlines_only(data.decode("utf-8", "replace"))[:MAX_TEXT_CHARS]
    except Exception:
        text = ""
    return InboundMessage(
        message_id=None, in_reply_to=(), references=(), sender="", sender_name="",
        reply_to=None, to=(), cc=(), subject="", date=None, text=text, new_text=text,
        quoted="", signature="", language=language.UNDETERMINED, attachments=(), headers={},
        defects=defects.as_tuple(),
    )


# =============================================================================================
# Headers
# =============================================================================================

def _raw_headers(message: Message, defects: _Defects) -> dict[str, list[str]]:
    """Lower-case name -> raw (undecoded) values in order, each capped for decoding."""
    headers: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        key = _header_name(name)
        if not key:
            continue
        text = value if isinstance(value, str) else str(value)
        if len(text) > MAX_RAW_HEADER_CHARS:
            defects.add(f"header-truncated: {key}")
            text = text[:MAX_RAW_HEADER_CHARS]
        headers.setdefault(key, []).append(text)
    return headers


def _header_name(name: object) -> str:
    text = str(name).strip().lower()
    text = "".join(ch for ch in text if 33 <= ord(ch) <= 126 and ch != ":")
    return text[:MAX_HEADER_NAME_CHARS]


def _first_raw_header(message: Message, name: str) -> str:
    for key, value in message.raw_items():
        if str(key).strip().lower() == name:
            return value if isinstance(value, str) else str(value)
    return ""


def _decoded_headers(raw: dict[str, list[str]], defects: _Defects) -> dict[str, tuple[str, ...]]:
    decoded: dict[str, tuple[str, ...]] = {}
    kept = 0
    for name, values in raw.items():
        if kept >= MAX_HEADER_FIELDS:
            defects.add("headers-capped: too many fields")
            break
        if len(values) > MAX_VALUES_PER_HEADER:
            defects.add(f"headers-capped: {name}")
        room = min(MAX_VALUES_PER_HEADER, MAX_HEADER_FIELDS - kept)
        decoded[name] = tuple(
            _single_line(decode_header(value, defects), MAX_HEADER_VALUE_CHARS)
            for value in values[:room]
        )
        kept += len(decoded[name])
    return decoded


_FOLD_RE = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")
_STRAY_NEWLINE_RE = re.compile(r"[\r\n]+")
_SURROGATE_RE = re.compile("[\udc80-\udcff]")


def _unfold(value: str) -> str:
    return _STRAY_NEWLINE_RE.sub(" ", _FOLD_RE.sub("", value))


def decode_header(value: str, defects: _Defects | None = None) -> str:
    """A header value as text: unfolded, raw 8-bit bytes decoded, RFC 2047 words decoded.
    Line breaks and control characters may remain; callers make it single-line."""
    if not value:
        return ""
    text = _unfold(value)
    if _SURROGATE_RE.search(text):
        text = _decode_raw_8bit(text, defects)
    elif "\x1b" in text:
        text, _ = decode_bytes(text.encode("ascii", "replace"), "iso-2022-jp")
    if "=?" in text:
        text = _decode_encoded_words(text, defects)
    return text


def _decode_display(value: str, defects: _Defects) -> str:
    """A header that later stages show or copy into outgoing mail (Subject, From name).

    An encoded word inside the decoded text (double encoding) is decoded too, a few rounds,
    so none survives for an outgoing mail's header factory to turn into CR/LF there."""
    text = decode_header(value, defects)
    for _ in range(3):
        if "=?" not in text:
            break
        again = _decode_encoded_words(text, defects)
        if again == text:
            break
        defects.add("nested-encoded-words")
        text = again
    return text


def _decode_raw_8bit(text: str, defects: _Defects | None) -> str:
    """Headers sent as raw 8-bit (SMTPUTF8, or old Japanese mailers in Shift_JIS/JIS)."""
    data = text.encode("utf-8", "surrogateescape")
    decoded, note = decode_bytes(data, None)
    if note and defects is not None:
        defects.add(f"header-8bit: {note}")
    return decoded


_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]{1,64})\?([bBqQ])\?([^?]*)\?=")
_Q_HEX_RE = re.compile(rb"=([0-9A-Fa-f]{2})")


def _decode_encoded_words(text: str, defects: _Defects | None) -> str:
    """RFC 2047, tolerant: adjacent words of one charset are joined as bytes before decoding,
    because mailers split multi-byte characters across words; whitespace between words goes."""
    pieces: list[str] = []
    pending: bytearray = bytearray()
    pending_charset: str | None = None
    position = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending_charset is not None:
            decoded, note = decode_bytes(bytes(pending), pending_charset)
            if note and defects is not None:
                defects.add(f"header-charset: {note}")
            pieces.append(decoded)
        pending, pending_charset = bytearray(), None

    for match in _ENCODED_WORD_RE.finditer(text):
        between = text[position:match.start()]
        charset = match.group(1).split("*", 1)[0].lower()
        payload = _encoded_word_bytes(match.group(2), match.group(3))
        if payload is None:
            flush()
            pieces.append(between + match.group(0))
            position = match.end()
            continue
        if between.strip() or charset != pending_charset:
            flush()
            if between.strip() or not pieces:
                pieces.append(between)
        pending_charset = charset
        pending.extend(payload)
        position = match.end()
    flush()
    pieces.append(text[position:])
    return "".join(pieces)


def _encoded_word_bytes(encoding: str, payload: str) -> bytes | None:
    try:
        if encoding in "bB":
            compact = "".join(payload.split())
            compact = compact.rstrip("=")
            if len(compact) % 4 == 1:
                compact = compact[:-1]  # a dangling sextet carries no whole byte
            return base64.b64decode(compact + "=" * (-len(compact) % 4))
        data = payload.replace("_", " ").encode("utf-8", "surrogateescape")
        return _Q_HEX_RE.sub(lambda m: bytes((int(m.group(1), 16),)), data)
    except (binascii.Error, ValueError, UnicodeError):
        return None


_CONTROL_RE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ufff9-\ufffb]"
)
_SPACES_RE = re.compile(r"\s+")


def _single_line(text: str, limit: int) -> str:
    """No CR/LF or other control/bidi-override characters; whitespace collapsed; capped."""
    text = _CONTROL_RE.sub(" ", text)
    return _SPACES_RE.sub(" ", text).strip()[:limit]


# --- addresses ---------------------------------------------------------------------------

def _address_pairs(raw_value: str, defects: _Defects) -> list[tuple[str, str]]:
    """Parsed before RFC 2047 decoding: a decoded display name must not be able to add an
    address (``=?utf-8?q?a@evil.example=2C?= <real@example.com>``)."""
    if not raw_value:
        return []
    if len(raw_value) > MAX_ADDRESS_HEADER_CHARS:
        defects.add("address-header-truncated")
        head, comma, _ = raw_value[:MAX_ADDRESS_HEADER_CHARS].rpartition(",")
        raw_value = head if comma else raw_value[:MAX_ADDRESS_HEADER_CHARS]
    text = _unfold(raw_value)
    if _SURROGATE_RE.search(text):
        text = _decode_raw_8bit(text, defects)
    try:
        pairs = email.utils.getaddresses([text])
    except Exception:  # getaddresses has raised on hostile input in some Python versions
        defects.add("address-unparsable")
        return []
    if len(pairs) > MAX_ADDRESSES:
        defects.add(f"addresses-capped: {len(pairs)}")
    return pairs[:MAX_ADDRESSES]


def _clean_address(address: str) -> str:
    cleaned = "".join(ch for ch in address if not ch.isspace() and ch.isprintable()).lower()
    cleaned = cleaned.strip("<>")
    return cleaned if len(cleaned) <= MAX_ADDRESS_CHARS else ""


def _addresses(raw_value: str, defects: _Defects) -> list[str]:
    found: list[str] = []
    for _, address in _address_pairs(raw_value, defects):
        cleaned = _clean_address(address)
        if cleaned and cleaned not in found:
            found.append(cleaned)
    return found


def _addresses_all(raw_values: Iterable[str], defects: _Defects) -> tuple[str, ...]:
    found: list[str] = []
    for raw_value in raw_values:
        for address in _addresses(raw_value, defects):
            if address not in found and len(found) < MAX_ADDRESSES:
                found.append(address)
    return tuple(found)


def _first_mailbox(raw_value: str, defects: _Defects) -> tuple[str, str]:
    """(display name, lower-cased address) of the first From mailbox; ("", "") if none."""
    for name, address in _address_pairs(raw_value, defects):
        cleaned = _clean_address(address)
        if cleaned:
            return _single_line(_decode_display(name, defects), MAX_NAME_CHARS), cleaned
    return "", ""


# --- message ids ---------------------------------------------------------------------------

_ANGLE_ID_RE = re.compile(r"<([^<>]*)>")
_ID_JUNK_RE = re.compile(r"[\s\x00-\x1f\x7f]+")


def _message_ids(raw_value: str, defects: _Defects) -> tuple[str, ...]:
    """All ``<...>`` ids without brackets; bare tokens with an "@" when there are none."""
    if not raw_value:
        return ()
    text = _unfold(raw_value)
    candidates = _ANGLE_ID_RE.findall(text) or [t for t in text.split() if "@" in t]
    ids: list[str] = []
    for candidate in candidates:
        cleaned = _ID_JUNK_RE.sub("", candidate)
        cleaned = _SURROGATE_RE.sub("", cleaned).strip("<>")
        if len(cleaned) > MAX_ID_CHARS:
            defects.add("message-id-too-long")
            continue
        if cleaned and cleaned not in ids:
            ids.append(cleaned)
    return tuple(ids)


def _cap_references(ids: tuple[str, ...]) -> tuple[str, ...]:
    """The thread root and the most recent ids; the middle of a long thread matters least."""
    if len(ids) <= MAX_REFERENCES:
        return ids
    return ids[:1] + ids[-(MAX_REFERENCES - 1):]


# =============================================================================================
# Charsets
# =============================================================================================

# Declared name -> codecs to try in order. Supersets first: mail labelled Shift_JIS is cp932
# in practice (①, ㈱ ...), GB2312 is GBK/GB18030, ISO-8859-1 is windows-1252.
_CHARSET_ALIASES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("shift_jis", "shift-jis", "sjis", "x-sjis", "s-jis", "ms_kanji", "csshiftjis",
         "windows-31j", "cp932", "ms932", "x-ms-cp932", "ibm-943", "shift_jis-2004"),
        ("cp932", "shift_jis_2004"),
    ),
    **dict.fromkeys(
        ("euc-jp", "euc_jp", "x-euc-jp", "eucjp", "cseucpkdfmtjapanese", "eucjp-ms",
         "euc-jp-ms", "cp51932", "x-euc"),
        ("euc_jp", "@euc_via_cp932", "euc_jis_2004"),
    ),
    **dict.fromkeys(
        ("gb2312", "gbk", "x-gbk", "cp936", "euc-cn", "gb_2312-80", "csgb2312", "gb18030"),
        ("gb18030",),
    ),
    **dict.fromkeys(("big5", "x-big5", "big5-hkscs", "cn-big5", "csbig5"), ("big5hkscs", "cp950")),
    **dict.fromkeys(
        ("ks_c_5601-1987", "ks_c_5601", "euc-kr", "korean", "ksc5601", "csksc56011987", "cp949"),
        ("cp949",),
    ),
    **dict.fromkeys(
        ("iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "latin-1", "l1", "cp819",
         "windows-1252", "cp1252", "x-cp1252"),
        ("cp1252", "latin-1"),
    ),
    **dict.fromkeys(("utf8", "utf-8", "x-utf8", "unicode-1-1-utf-8", "utf_8"), ("utf-8",)),
    **dict.fromkeys(("utf-7", "unicode-1-1-utf-7", "x-utf-7"), ("utf-7",)),
    **dict.fromkeys(("macintosh", "x-mac-roman", "mac"), ("mac_roman",)),
    "iso-8859-8-i": ("iso8859_8",),
    "iso-8859-6-i": ("iso8859_6",),
}
_JIS_FAMILY = "@iso2022jp"
_JIS_NAME_RE = re.compile(r"2022[-_]?jp")
# Codecs that are not charsets for mail text, or that interpret the payload as code.
_REFUSED_CODECS = frozenset({
    "unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined", "mbcs", "oem",
    "charmap", "unicode_internal", "escape_codec",
})
_ESC_BYTE = b"\x1b"


@functools.lru_cache(maxsize=256)
def _codecs_for(declared: str | None) -> tuple[str, ...]:
    """Python codecs to try for a declared MIME charset, most specific first; () if unusable."""
    if not declared:
        return ()
    name = declared.strip().strip("\"'").split("*", 1)[0].strip().lower()
    if not name:
        return ()
    if _JIS_NAME_RE.search(name) or name in ("cp50220", "cp50221", "cp50222", "jis"):
        return (_JIS_FAMILY,)
    if name in _CHARSET_ALIASES:
        return _CHARSET_ALIASES[name]
    if name.startswith("x-mac-"):
        name = "mac-" + name[len("x-mac-"):]
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return ()
    if info.name in _REFUSED_CODECS or not getattr(info, "_is_text_encoding", True):
        return ()
    return (info.name,)


def decode_bytes(data: bytes, declared: str | None) -> tuple[str, str | None]:
    """Text from bytes and a note when anything but the declared charset decided it.

    Chain: declared charset (via aliases: cp932 for Shift_JIS, gb18030 for GB2312 ...; for
    ISO-2022-JP also iso2022_jp_ext and a CP50220 repair through Shift_JIS bytes and cp932)
    -> UTF-8 (also when only a few bytes are damaged) -> ISO-2022-JP / cp932 / EUC-JP when the
    result reads as Japanese -> charset detection (trusted for non-Latin scripts only) ->
    windows-1252 -> latin-1, which never fails.
    """
    if not data:
        return "", None
    candidates = _codecs_for(declared)
    if data.isascii() and _ESC_BYTE not in data and not _needs_codec_for_ascii(candidates):
        return data.decode("ascii"), None
    for codec in candidates:
        decoded = _try_codec(data, codec)
        if decoded is not None:
            text, used = decoded
            primary = "iso2022_jp" if candidates[0] == _JIS_FAMILY else candidates[0]
            return _strip_bom(text), (None if used == primary else f"{declared} decoded as {used}")
    text, guessed = _guess_decode(data)
    label = declared if declared else "undeclared"
    if candidates or declared:
        return _strip_bom(text), f"{label} failed; decoded as {guessed}"
    if guessed in ("utf-8", "ascii"):
        return _strip_bom(text), None
    return _strip_bom(text), f"{label} guessed as {guessed}"


def _needs_codec_for_ascii(candidates: tuple[str, ...]) -> bool:
    # ASCII bytes mean something else only in these encodings.
    return any(c.startswith(("utf_16", "utf_32", "utf-7", "utf_7", "cp037", "cp500", "cp1140"))
               for c in candidates)


def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


def _try_codec(data: bytes, codec: str) -> tuple[str, str] | None:
    """(text, codec actually used) or None when the codec does not fit the bytes."""
    try:
        if codec == _JIS_FAMILY:
            return _decode_iso2022jp(data)
        if codec == "@euc_via_cp932":
            return _euc_to_sjis(data).decode("cp932"), "eucjp-ms via cp932"
        return data.decode(codec), codec
    except (UnicodeError, LookupError, ValueError):
        return None


# --- ISO-2022-JP / CP50220 ------------------------------------------------------------------

_JIS_ESCAPE_RE = re.compile(rb"\x1b(\$[@B]|\$\([BDOPQ]|\([BJHI])")
_JIS_PAIR_RE = re.compile(rb"[\x21-\x7e]{2}")
_JIS_KANA_TABLE = bytes(b + 0x80 if 0x21 <= b <= 0x5F else b for b in range(256))
_GETA_SJIS = "〓".encode("cp932")   # the customary stand-in for an unmappable character


def _decode_iso2022jp(data: bytes, strict: bool = False) -> tuple[str, str]:
    """ISO-2022-JP as Python knows it, else Microsoft's CP50220 variant (with replacement
    characters for what still fails, unless ``strict``, when that raises instead).

    Without an escape sequence and with 8-bit bytes the label is wrong (Shift_JIS or UTF-8
    sent as "ISO-2022-JP"): refuse, so the caller's chain guesses.
    """
    if _ESC_BYTE not in data and not data.isascii():
        raise UnicodeError("8-bit data labelled ISO-2022-JP")
    try:
        return data.decode("iso2022_jp"), "iso2022_jp"
    except UnicodeError:
        pass
    try:
        return data.decode("iso2022_jp_ext"), "iso2022_jp_ext"   # half-width katakana (ESC ( I)
    except UnicodeError:
        pass
    sjis = _jis_to_sjis(data)
    try:
        return sjis.decode("cp932"), "cp50220 via cp932"
    except UnicodeError:
        if strict:
            raise
        return sjis.decode("cp932", "replace"), "cp50220 via cp932 with replacements"


def _jis_to_sjis(data: bytes) -> bytes:
    """Re-encode JIS (7-bit ISO-2022-JP) as Shift_JIS bytes, so cp932 can decode the NEC and
    IBM extensions that CP50220 puts in rows 13 and 89-92."""
    out = bytearray()
    mode, position = b"(B", 0
    for match in _JIS_ESCAPE_RE.finditer(data):
        out += _jis_segment_to_sjis(data[position:match.start()], mode)
        mode, position = match.group(1), match.end()
    out += _jis_segment_to_sjis(data[position:], mode)
    return bytes(out)


def _jis_segment_to_sjis(segment: bytes, mode: bytes) -> bytes:
    if not segment:
        return b""
    if mode in (b"(B", b"(J", b"(H"):
        return segment.replace(_ESC_BYTE, b"").replace(b"\x0e", b"").replace(b"\x0f", b"")
    # Mailers forget ESC ( B before a line break: the rest after the break is ASCII.
    first_line, newline, rest = _split_first_line(segment)
    if mode == b"(I":
        converted = first_line.translate(_JIS_KANA_TABLE)
    elif mode in (b"$B", b"$@", b"$(B"):
        converted = _JIS_PAIR_RE.sub(lambda m: _jis_pair_to_sjis(*m.group(0)), first_line)
    else:  # JIS X 0212 / 0213 planes: no Shift_JIS form
        converted = _JIS_PAIR_RE.sub(lambda m: _GETA_SJIS, first_line)
    return converted + newline + rest.replace(_ESC_BYTE, b"")


def _split_first_line(segment: bytes) -> tuple[bytes, bytes, bytes]:
    match = re.search(rb"\r\n|\r|\n", segment)
    if not match:
        return segment, b"", b""
    return segment[:match.start()], match.group(0), segment[match.end():]


def _jis_pair_to_sjis(j1: int, j2: int) -> bytes:
    s1 = ((j1 + 1) >> 1) + (0x70 if j1 <= 0x5E else 0xB0)
    if j1 & 1:
        s2 = j2 + (0x1F if j2 <= 0x5F else 0x20)
    else:
        s2 = j2 + 0x7E
    return bytes((s1, s2))


_EUC_CHAR_RE = re.compile(rb"\x8f[\xa1-\xfe]{2}|\x8e[\xa1-\xdf]|[\xa1-\xfe]{2}")


def _euc_to_sjis(data: bytes) -> bytes:
    """EUC-JP (eucJP-ms, with NEC row 13) re-encoded as Shift_JIS for cp932."""
    def convert(match: re.Match[bytes]) -> bytes:
        chunk = match.group(0)
        if chunk[0] == 0x8F:
            return _GETA_SJIS
        if chunk[0] == 0x8E:
            return chunk[1:]
        return _jis_pair_to_sjis(chunk[0] - 0x80, chunk[1] - 0x80)
    return _EUC_CHAR_RE.sub(convert, data)


# --- guessing -------------------------------------------------------------------------------

_KANA_RE = re.compile("[\u3041-\u30fa]")                 # hiragana and full-width katakana
_JAPANESE_TEXT_RE = re.compile("[\u3000-\u30ff\u4e00-\u9fff\uff01-\uff5e]")
# Detector answers worth trusting: scripts where windows-1252 would certainly be wrong. For
# Latin-script text (all our European languages) windows-1252 is a better bet than a detector
# choosing between cp1250, cp1006 and friends on a few accented letters.
_TRUSTED_DETECTIONS = (
    "big5", "cp950", "gb", "euc_kr", "cp949", "johab", "cp1251", "koi8", "iso8859_5",
    "mac_cyrillic", "cp866", "cp855", "cp1253", "iso8859_7", "cp1255", "iso8859_8", "cp1256",
    "iso8859_6", "tis_620", "cp874", "utf_16", "utf_32",
)


def _guess_decode(data: bytes) -> tuple[str, str]:
    """(text, codec) for bytes whose declared charset is absent or wrong."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    mostly_utf8 = _mostly_utf8(data)
    if mostly_utf8 is not None:
        return mostly_utf8, "utf-8 with replacements"
    if _ESC_BYTE in data:
        try:
            return _decode_iso2022jp(data, strict=True)
        except UnicodeError:
            pass
    for codec in ("cp932", "euc_jp"):
        decoded = _try_codec(data, codec)
        if decoded is not None and _reads_as_japanese(decoded[0]):
            return decoded
    detected = _detect_charset(data)
    if detected and detected[1].startswith(_TRUSTED_DETECTIONS):
        return detected
    return _try_codec(data, "cp1252") or (data.decode("latin-1"), "latin-1")


def _mostly_utf8(data: bytes) -> str | None:
    """UTF-8 with a few damaged bytes (a truncated line, one flipped byte) stays UTF-8."""
    text = data.decode("utf-8", "replace")
    damaged = text.count("\ufffd")
    multibyte = sum(1 for ch in text if ord(ch) > 127) - damaged
    return text if multibyte >= 20 * damaged else None


def _reads_as_japanese(text: str) -> bool:
    """Nearly all non-ASCII characters are Japanese, and there is kana among them. Latin-1
    text read as cp932 gives kanji (accented letter + ASCII letter) and half-width katakana,
    but almost never hiragana or full-width katakana."""
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    if not non_ascii:
        return False
    japanese = len(_JAPANESE_TEXT_RE.findall(text))
    kana = len(_KANA_RE.findall(text))
    return japanese >= 0.9 * non_ascii and kana >= 0.2 * japanese


def _detect_charset(data: bytes) -> tuple[str, str] | None:
    if len(data) < 32:   # detectors guess wildly on a few bytes
        return None
    try:
        from charset_normalizer import from_bytes
        best = from_bytes(data[:64_000]).best()
        if best is None or not best.encoding:
            return None
        return data.decode(best.encoding), best.encoding
    except Exception:  # optional dependency, and its guess may not decode the whole input
        return None


# =============================================================================================
# Body and attachments
# =============================================================================================

_NON_BODY_TEXT = frozenset({
    "calendar", "x-vcalendar", "rfc822-headers", "vcard", "x-vcard", "directory", "csv",
    "tab-separated-values", "xml", "x-patch", "x-diff", "css", "javascript",
})
_FORWARDED_TYPES = frozenset({"message/rfc822", "message/global"})
_REPORT_TYPES = frozenset({"text/rfc822-headers", "message/delivery-status", "message/global-delivery-status",
                           "message/feedback-report", "message/disposition-notification",
                           "message/global-headers"})
MAX_REPORT_CHARS = 20_000
_FORWARD_MARKER = "---------- Forwarded message ---------"     # as Gmail writes it
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
_PLACEHOLDER_PLAIN_RE = re.compile(
    r"(html|HTML).{0,40}(format|version|message|e-?mail|client|viewer|browser)|"
    r"(view|read|open) (this|the) (e-?mail|message) in (a|your) (web )?browser|"
    r"HTML\s*(形式|メール)|HTMLメールを表示",
    re.IGNORECASE,
)


@dataclass
class _Text:
    content: str
    origin: str          # "plain", "html" or "other"


class _Body:
    """Walks the MIME tree once, collecting body texts and attachment metadata."""

    def __init__(self, defects: _Defects) -> None:
        self.defects = defects
        self.texts: list[_Text] = []
        self.attachments: list[Attachment] = []
        self.report: list[str] = []      # delivery reports: what bounce matching reads
        self.parts_seen = 0

    def text(self) -> str:
        return "\n\n".join(t.content.strip("\n") for t in self.texts if t.content.strip())

    def collect(self, part: Message, depth: int) -> None:
        if depth > MAX_DEPTH or self.parts_seen >= MAX_PARTS:
            self.defects.add("mime-too-deep-or-too-many-parts")
            return
        self.parts_seen += 1
        content_type = _guard(part.get_content_type, "application/octet-stream")
        payload = _guard(part.get_payload, None)
        if isinstance(payload, list):
            self._collect_container(part, content_type, payload, depth)
        elif _is_body_text(part, content_type):
            self._collect_text(part, content_type)
        else:
            if content_type in _REPORT_TYPES:
                self._collect_report(part)
            self.attachments.append(self._attachment(part, content_type))

    def _collect_report(self, part: Message) -> None:
        data = _attachment_bytes(part, self.defects) if not part.is_multipart() else b""
        text = data.decode("utf-8", "replace") if data else _guard(part.as_string, "")
        if sum(len(r) for r in self.report) < MAX_REPORT_CHARS:
            self.report.append(text[:MAX_REPORT_CHARS])

    def _collect_container(
        self, part: Message, content_type: str, children: list[object], depth: int
    ) -> None:
        messages = [c for c in children if isinstance(c, Message)]
        if content_type in _FORWARDED_TYPES:
            self.attachments.append(self._attachment(part, content_type))
            for child in messages[:1]:
                self._collect_forwarded(child, depth + 1)
        elif content_type.startswith("message/"):
            # delivery-status and friends: machine data, kept as metadata (and report text).
            self._collect_report(part)
            self.attachments.append(self._attachment(part, content_type))
        elif content_type == "multipart/alternative":
            self._collect_alternative(messages, depth + 1)
        else:
            for child in messages:
                self.collect(child, depth + 1)

    def _collect_alternative(self, children: list[Message], depth: int) -> None:
        branches: list[_Body] = []
        for child in children:
            branch = _Body(self.defects)
            branch.parts_seen = self.parts_seen
            branch.collect(child, depth)
            self.parts_seen = branch.parts_seen
            branches.append(branch)
            self.report.extend(branch.report)
            for attachment in branch.attachments:
                if attachment not in self.attachments:
                    self.attachments.append(attachment)
        chosen = _choose_alternative(branches)
        if chosen is not None:
            self.texts.extend(chosen.texts)

    def _collect_forwarded(self, inner: Message, depth: int) -> None:
        """A forwarded message joins the body under the same marker Gmail uses, so that
        split_reply treats "FYI" + attachment like an inline forward."""
        branch = _Body(self.defects)
        branch.parts_seen = self.parts_seen
        branch.collect(inner, depth)
        self.parts_seen = branch.parts_seen
        self.attachments.extend(a for a in branch.attachments if a not in self.attachments)
        self.report.extend(branch.report)
        forwarded_id = _first_raw_header(inner, "message-id")
        if forwarded_id:
            # A bounce often attaches our original: its Message-ID tells which mail failed.
            self.report.append(f"Message-ID: {_single_line(forwarded_id, 300)}")
        header_lines = []
        for label in ("From", "Date", "Subject", "To"):
            raw = _first_raw_header(inner, label.lower())
            value = _single_line(decode_header(raw, self.defects), 300)
            if value:
                header_lines.append(f"{label}: {value}")
        block = "\n".join([_FORWARD_MARKER, *header_lines, "", branch.text()])
        self.texts.append(_Text(block, "other"))

    def _collect_text(self, part: Message, content_type: str) -> None:
        subtype = content_type.partition("/")[2]
        data = _payload_bytes(part, self.defects)
        charset = _content_charset(part)
        if subtype == "html" and not charset:
            charset = _sniff_html_charset(data)
        text, note = decode_bytes(data, charset)
        if note:
            self.defects.add(f"body-charset: {note}")
        if subtype == "html":
            self.texts.append(_Text(textprep.html_to_text(text), "html"))
        else:
            # A multipart without a usable boundary is the message's plain text in practice.
            plain = subtype == "plain" or content_type.startswith("multipart/")
            self.texts.append(_Text(text, "plain" if plain else "other"))
        if _part_filename(part, self.defects) and _disposition(part) == "inline":
            self.attachments.append(self._attachment(part, content_type, data))

    def _attachment(
        self, part: Message, content_type: str, data: bytes | None = None
    ) -> Attachment:
        if data is None:
            data = _attachment_bytes(part, self.defects)
        filename = _part_filename(part, self.defects)
        if content_type in _TNEF_TYPES or (filename or "").lower() == "winmail.dat":
            self.defects.add("tnef-attachment: contents not extracted")
        return Attachment(
            filename=filename,
            content_type=content_type[:100],
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )


def _guard(call: Callable[[], T], default: T) -> T:
    try:
        return call()
    except Exception:
        return default


def _disposition(part: Message) -> str | None:
    return _guard(part.get_content_disposition, None)


def _is_body_text(part: Message, content_type: str) -> bool:
    maintype, _, subtype = content_type.partition("/")
    if maintype == "multipart":
        return True     # a multipart without a usable boundary: its payload is the text
    if maintype != "text" or subtype in _NON_BODY_TEXT:
        return False
    disposition = _disposition(part)
    if disposition == "attachment":
        return False
    return disposition == "inline" or not _guard(part.get_filename, None)


def _content_charset(part: Message) -> str | None:
    charset = _guard(lambda: part.get_content_charset(None), None)
    return charset if isinstance(charset, str) and charset else None


_META_CHARSET_RE = re.compile(
    rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]{1,40})", re.IGNORECASE
)


def _sniff_html_charset(data: bytes) -> str | None:
    match = _META_CHARSET_RE.search(data[:4096])
    return match.group(1).decode("ascii") if match else None


def _payload_bytes(part: Message, defects: _Defects) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception as exc:
        defects.add(f"payload-undecodable: {type(exc).__name__}")
        data = None
    if isinstance(data, bytes):
        return data
    raw = _guard(lambda: part.get_payload(decode=False), "")
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _attachment_bytes(part: Message, defects: _Defects) -> bytes:
    if isinstance(_guard(part.get_payload, None), list):
        return _container_bytes(part)
    return _payload_bytes(part, defects)


def _container_bytes(part: Message) -> bytes:
    """Bytes standing for an attached message (message/rfc822, delivery-status ...): its raw
    headers and raw payloads. compat32 keeps no wire bytes, and re-serialising with the
    generator costs more than parsing; this is as stable for size and hash, and cheap."""
    chunks: list[bytes] = []
    for sub in _walk_limited(part):
        for name, value in sub.raw_items():
            chunks.append(f"{name}: {value}\n".encode("utf-8", "surrogateescape"))
        payload = _guard(sub.get_payload, None)
        if isinstance(payload, str):
            chunks.append(b"\n" + payload.encode("utf-8", "surrogateescape"))
    return b"".join(chunks)


def _choose_alternative(branches: list[_Body]) -> _Body | None:
    """text/plain unless it is empty or a placeholder; then the (richest, i.e. last) HTML."""
    plain = next((b for b in branches if any(t.origin == "plain" for t in b.texts)), None)
    html = next((b for b in reversed(branches) if any(t.origin == "html" for t in b.texts)), None)
    if plain is not None and not _plain_is_useless(plain.text(), html.text() if html else ""):
        return plain
    if html is not None and html.text().strip():
        return html
    with_text = [b for b in branches if b.text().strip()]
    return plain or (with_text[-1] if with_text else None)


def _plain_is_useless(plain: str, html_text: str) -> bool:
    stripped = plain.strip()
    if sum(ch.isalnum() for ch in stripped[:200]) < 3:
        return True
    if stripped.count("\ufffd") > max(3, len(stripped) // 10):
        return True
    is_placeholder = len(stripped) < 300 and bool(_PLACEHOLDER_PLAIN_RE.search(stripped))
    return is_placeholder and bool(html_text.strip())


# --- attachment names -------------------------------------------------------------------------

_FILENAME_UNSAFE_RE = re.compile(r'[<>:"|?*]')


def _part_filename(part: Message, defects: _Defects) -> str | None:
    raw = _guard(part.get_filename, None)
    if raw is None:
        raw = _guard(lambda: part.get_param("name"), None)
        if isinstance(raw, tuple):
            raw = _guard(lambda: email.utils.collapse_rfc2231_value(raw), None)
    if not isinstance(raw, str) or not raw:
        return None
    return sanitise_filename(decode_header(raw[:2000], defects))


def sanitise_filename(name: str) -> str | None:
    """A display name: last path component only, no control/bidi characters, no characters
    Windows forbids, no leading dots, at most ``MAX_FILENAME_CHARS`` (extension kept)."""
    text = unicodedata.normalize("NFC", name).replace("\\", "/")
    text = text.rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"))
    text = _FILENAME_UNSAFE_RE.sub("_", text)
    text = _SPACES_RE.sub(" ", text).strip().lstrip(".").strip()
    if not text:
        return None
    if len(text) > MAX_FILENAME_CHARS:
        stem, dot, extension = text.rpartition(".")
        if dot and 0 < len(extension) <= 16 and stem:
            text = stem[:MAX_FILENAME_CHARS - len(extension) - 1] + "." + extension
        else:
            text = text[:MAX_FILENAME_CHARS]
    return text
