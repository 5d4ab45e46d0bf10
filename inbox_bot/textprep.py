"""Pure text functions shared by intake (parse) and the classifier.

Nothing here does I/O or raises on odd input: every function takes a ``str`` and returns text.

- ``normalise``: the one canonical form for comparing and classifying text.
- ``html_to_text``: readable plain text from mail HTML (links kept as ``text (url)``).
- ``split_reply``: ``(new_text, quoted, signature)`` from a body.
- ``classifier_text``: the one way subject and body are combined for classification.

Forwarding rule (decided here, relied on by route/classify): a FORWARDED message whose own text
is empty or trivial ("FYI", "転送します" ...) is the customer passing on their earlier request, so
the forwarded message's own new text becomes ``new_text``. A REPLY's quoted history is always
cut. When splitting would leave nothing although the body has real text, the body is returned
whole as ``new_text``: losing the customer's words is worse than keeping a quote.
"""
from __future__ import annotations

import html as html_lib
import logging
import re
import unicodedata
from dataclasses import dataclass

logger = logging.getLogger(__name__)

CLASSIFIER_MAX_CHARS = 2000
HTML_MAX_CHARS = 500_000          # bounds html2text's pure-Python cost on huge marketing mail

# --------------------------------------------------------------------------------------------
# normalise
# --------------------------------------------------------------------------------------------

# JIS X 0208 characters that Python's JIS codecs and cp932 decode to different code points.
# NFKC folds the cp932 side (U+FF5E -> "~", U+FF0D -> "-"); these fold the JIS side to match.
_JIS_VARIANTS = str.maketrans({
    "\u301c": "~",        # WAVE DASH (iso2022_jp/euc_jp) == FULLWIDTH TILDE (cp932) after NFKC
    "\u2212": "-",        # MINUS SIGN == FULLWIDTH HYPHEN-MINUS after NFKC
    "\u2016": "\u2225",   # DOUBLE VERTICAL LINE == PARALLEL TO
    "\u2015": "\u2014",   # HORIZONTAL BAR == EM DASH
})
_ZERO_WIDTH_RE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e]")
_NEWLINE_RE = re.compile("\r\n|[\r\u2028\u2029\u0085\x0b\x0c]")
_TRAILING_SPACE_RE = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUN_RE = re.compile(r"\n{3,}")


def normalise(text: str) -> str:
    """NFKC, JIS variants folded (〜 == ～ == ~), LF newlines, no zero-width characters,
    no trailing spaces, at most one blank line in a row, no leading/trailing blank lines."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text).translate(_JIS_VARIANTS)
    text = _ZERO_WIDTH_RE.sub("", text)
    text = _NEWLINE_RE.sub("\n", text)
    text = _TRAILING_SPACE_RE.sub("", text)
    text = _BLANK_RUN_RE.sub("\n\n", text)
    return text.strip("\n")


# --------------------------------------------------------------------------------------------
# html_to_text
# --------------------------------------------------------------------------------------------

_DROP_BLOCKS_RE = re.compile(
    r"<(script|style|head|title|noscript|template)\b[^>]*>.*?(</\1\s*>|\Z)",
    re.IGNORECASE | re.DOTALL,
)
_COMMENT_RE = re.compile(r"<!--.*?(-->|\Z)", re.DOTALL)
_CELL_END_RE = re.compile(r"</t[dh]\s*>", re.IGNORECASE)
_MD_LINK_RE = re.compile(r"\[([^\]\n]*)\]\(([^)\s]+)(?:\s+\"[^\"\n]*\")?\)")
_MD_AUTOLINK_RE = re.compile(r"<((?:https?|ftp|mailto):[^>\s]+)>")
_MD_LINE_ESCAPE_RE = re.compile(r"^([ \t]*(?:>[ \t]?)*(?:\*[ \t]+)?)\\([-+])", re.MULTILINE)
_MD_NUMBER_ESCAPE_RE = re.compile(r"^([ \t]*(?:>[ \t]?)*[ \t]*\d+)\\\.", re.MULTILINE)
_TAG_RE = re.compile(r"<[^>]*>")
_BLOCK_TAG_RE = re.compile(r"<\s*(br|/p|/div|/tr|/li|/h\d|/blockquote)\b[^>]*>", re.IGNORECASE)


def html_to_text(html: str) -> str:
    """Plain text from mail HTML: scripts, styles and comments dropped, quotes kept as "> ",
    links as ``text (url)`` (or just the text when it already is the address)."""
    if not html or not html.strip():
        return ""
    html = html[:HTML_MAX_CHARS]
    html = _COMMENT_RE.sub("", html)
    html = _DROP_BLOCKS_RE.sub("", html)
    html = _CELL_END_RE.sub(lambda m: m.group(0) + " ", html)   # keep table cells apart
    try:
        text = _html2text(html)
    except Exception:  # html2text is pure Python over hostile input: never let it break intake
        logger.warning("html2text failed; falling back to tag stripping", exc_info=True)
        text = _strip_tags(html)
    return normalise_newlines_only(_readable_markdown(text))


def _html2text(html: str) -> str:
    import html2text  # imported lazily: only HTML mail pays the import

    converter = html2text.HTML2Text()
    converter.body_width = 0            # no re-wrapping: quote detection works on real lines
    converter.ignore_images = True
    converter.ignore_emphasis = True    # no ** and _ noise in classifier text
    converter.ignore_tables = True      # layout tables are not data tables in mail
    converter.unicode_snob = True       # keep non-ASCII characters as they are
    converter.inline_links = True
    converter.wrap_links = False
    return converter.handle(html)


def _readable_markdown(text: str) -> str:
    text = _MD_LINK_RE.sub(_link_as_text, text)
    text = _MD_AUTOLINK_RE.sub(r"\1", text)
    text = _MD_LINE_ESCAPE_RE.sub(r"\1\2", text)
    text = _MD_NUMBER_ESCAPE_RE.sub(r"\1.", text)
    return text


def _link_as_text(match: re.Match[str]) -> str:
    label, url = match.group(1).strip(), match.group(2)
    bare = url[len("mailto:"):] if url.lower().startswith("mailto:") else url
    if not label or label == url or label == bare:
        return bare
    return f"{label} ({bare})"


def _strip_tags(html: str) -> str:
    html = _BLOCK_TAG_RE.sub("\n", html)
    return html_lib.unescape(_TAG_RE.sub("", html))


def normalise_newlines_only(text: str) -> str:
    """LF newlines, no trailing spaces, at most one blank line; characters left as they are."""
    text = _NEWLINE_RE.sub("\n", text.replace("\xa0", " "))
    text = _TRAILING_SPACE_RE.sub("", text)
    return _BLANK_RUN_RE.sub("\n\n", text).strip("\n")


# --------------------------------------------------------------------------------------------
# split_reply
# --------------------------------------------------------------------------------------------

_QUOTE_LINE_RE = re.compile(r"^[ \t]*(>|＞|&gt;)")

# "On <date>, <name> wrote:" in the languages we receive. Gmail may wrap it over 2-3 lines, so
# these are matched against a line joined with its next two lines.
_ATTRIBUTION_RES = tuple(re.compile(p, re.IGNORECASE | re.DOTALL) for p in (
    r"^\s*On\b.{0,400}\bwrote\s*[:：]\s*$",
    r"^\s*Am\b.{0,400}\bschrieb\b.{0,200}[:：]\s*$",
    r"^\s*Le\b.{0,400}\ba\s+écrit\s*[:：]\s*$",
    r"^\s*El\b.{0,400}\bescribió\s*[:：]\s*$",
    r"^\s*Il\b.{0,400}\bha\s+scritto\s*[:：]\s*$",
    r"^\s*Op\b.{0,400}\bschreef\b.{0,200}[:：]\s*$",
    r"^\s*(19|20)\d\d\s*年\s*\d{1,2}\s*月\s*\d{1,2}\s*日.{0,300}[:：]\s*$",
    r"^.{0,300}(さん|様|氏)?\s*(は|が)\s*書きました\s*[:：]?\s*$",
    r"^.{0,300}\bwrote\s*[:：]\s*$",
    # Gmail in other locales: "2026-11-03 10:12 GMT+09:00 Name <x@example.com>:"
    r"^\s*(19|20)\d\d[-/.]\d{1,2}[-/.]\d{1,2}\b.{0,300}<[^<>\s]+@[^<>\s]+>\s*[:：]\s*$",
))
# The unanchored patterns ("... 書きました", "... wrote:") only ever match a single line, and
# never count as dated: they must not eat prose that merely ends with "wrote:".
_GENERIC_INDICES = (7, 8)
_ATTRIBUTION_HINT_RE = re.compile(r"wrote|schrieb|écrit|escribió|scritto|schreef|書きました|年|@", re.I)

_SEPARATOR_RE = re.compile(
    r"^\s*-{2,}\s*(Original Message|Ursprüngliche Nachricht|Originalnachricht|Message d'origine|"
    r"Mensaje original|Messaggio originale|Oorspronkelijk bericht|Origineel bericht|"
    r"元のメッセージ|オリジナルメッセージ)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_FORWARD_RE = re.compile(
    r"^\s*(-{3,}\s*(Forwarded message|Forwarded Message|Weitergeleitete Nachricht|"
    r"Message transféré|Mensaje reenviado|Messaggio inoltrato|Doorgestuurd bericht|"
    r"転送メッセージ|転送されたメッセージ)\s*-{3,}|Begin forwarded message\s*:|"
    r"Anfang der weitergeleiteten (Nachricht|E-Mail)\s*:|"
    r"Début du message (réexpédié|transféré)\s*:|"
    r"Inicio del mensaje reenviado\s*:|Inizio messaggio inoltrato\s*:|"
    r"Begin doorgestuurd bericht\s*:|転送されたメッセージ\s*[:：])\s*$",
    re.IGNORECASE,
)
# Outlook puts the original's headers in the body: "From: ..." followed within a few lines by
# "Sent: ..." (or the localised pair). Both labels are needed, so a lone "From:" line is text.
_OUTLOOK_FROM_RE = re.compile(r"^\s*\**(From|Von|De|Da|Van|差出人|送信者|Från|Fra)\s*\**\s*[:：]", re.I)
_OUTLOOK_SENT_RE = re.compile(
    r"^\s*\**(Sent|Date|Gesendet|Datum|Envoyé|Date|Enviado|Fecha|Inviato|Data|Verzonden|Datum|"
    r"送信日時|日付|送信日|Skickat|Sendt)\s*\**\s*[:：]",
    re.IGNORECASE,
)
_OUTLOOK_LOOKAHEAD = 5
_RULE_LINE_RE = re.compile(r"^\s*(_{10,}|-{10,}|={10,})\s*$")

_SIG_DELIMITER_RE = re.compile(r"^-- ?$")
_MOBILE_SIG_RE = re.compile(
    r"^\s*(Sent from (my )?.{1,40}|Sent with .{1,40}|Get Outlook for .{1,30}|"
    r".{1,20}から送信|Von meinem .{1,40} gesendet|Gesendet von .{1,40}|"
    r"Envoyé de mon .{1,40}|Envoyé depuis .{1,40}|Enviado desde mi .{1,40}|Enviado desde .{1,40}|"
    r"Inviato da .{1,40}|Verstuurd vanaf mijn .{1,40}|Verzonden vanaf mijn .{1,40}|"
    r"Verzonden met .{1,40})\s*$",
    re.IGNORECASE,
)
_MOBILE_SIG_TAIL = 3        # a device line counts only among the last few non-blank lines
# Japanese signatures are boxed by rules of these characters, e.g. "━━━━━━━━".
# Full-width/box characters count from 3 in a row; ASCII ones from 8 ("---" is often prose).
_JA_RULE_RE = re.compile(
    r"^\s*(?:([━─＿＝═―〓■□◆◇＊〜～])\1{2,}|([-=_*~])\2{7,})[\s━─＿＝═―〓■□◆◇＊〜～=_*~-]*$"
)
_JA_SIG_MAX_LINES = 12      # a rule further up than this is a section break, not a signature
_DASH_SIG_MAX_LINES = 30

_FYI_RE = re.compile(
    r"^(fyi|fw|fwd|see below|please see below|please see the message below|for your information|"
    r"zur info|zur kenntnis|pour info|pour information|para su información|para tu información|"
    r"per conoscenza|per informazione|ter info|ter informatie|転送します|転送いたします|"
    r"ご確認ください|ご確認お願いします|ご確認をお願いします|ご確認よろしくお願いします|"
    r"参考まで|ご参考まで|ご参考までに|以下、転送します|下記転送します)?[\s.!。、:：]*$",
    re.IGNORECASE,
)


@dataclass
class _Region:
    new: list[str]
    quoted: list[str]
    history_start: int | None        # index of the first line of unquoted history, if any
    history_is_marked: bool          # history starts at a forward/separator/Outlook marker


def split_reply(text: str) -> tuple[str, str, str]:
    """Split a body into ``(new_text, quoted, signature)``; see the module docstring for the
    forwarding and never-empty rules."""
    if not text or not text.strip():
        return "", "", ""
    lines = normalise_newlines_only(text).split("\n")
    new_text, quoted, signature = _split_lines(lines, depth=0)
    if not new_text.strip():
        # Conservative: the whole body is better than nothing when it has real text.
        return normalise_newlines_only(text), "", ""
    return new_text, quoted, signature


def _split_lines(lines: list[str], depth: int) -> tuple[str, str, str]:
    region = _separate_history(lines)
    body, signature = _cut_signature(region.new)
    history = lines[region.history_start:] if region.history_start is not None else []
    if region.history_is_marked and depth < 3 and _is_trivial("\n".join(body)):
        # "FYI" over a forwarded (or Outlook-style) message: the forwarded text is the request.
        return _forwarded_content(history, signature, depth)
    quoted = region.quoted + ([""] if region.quoted and history else []) + history
    return _join(body), _join(quoted), _join(signature)


def _separate_history(lines: list[str]) -> _Region:
    new: list[int] = []              # line indices, so a cut can reach back over a rule line
    quoted: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _QUOTE_LINE_RE.match(line):
            quoted.append(line)
            i += 1
            continue
        if _hard_marker_at(lines, i):
            kept = _drop_preceding_rule(lines, new)
            start = new[len(kept)] if len(kept) < len(new) else i
            return _Region([lines[k] for k in kept], quoted, start, True)
        span, dated = _attribution_span(lines, i)
        if span:
            following = _next_non_blank(lines, i + span)
            if following is None or _QUOTE_LINE_RE.match(lines[following]):
                # "On ... wrote:" introducing "> " lines: part of the quote (top, bottom or inline).
                quoted.extend(lines[i:i + span])
                i += span
                continue
            if dated:
                # A dated attribution over unquoted text: everything below is the old message.
                return _Region([lines[k] for k in new], quoted, i, False)
            # An undated "... wrote:" over unquoted text is as likely the customer's own prose.
        new.append(i)
        i += 1
    return _Region([lines[k] for k in new], quoted, None, False)


def _hard_marker_at(lines: list[str], i: int) -> str | None:
    """"forward", "separator" or "outlook" when line i starts unquoted history, else None."""
    stripped = lines[i].strip(" \t*")
    if not stripped or len(stripped) > 200:
        return None
    # Cheap character tests first: this runs for every line of every body.
    if (stripped[0] == "-" or stripped[-1] in ":：") and _FORWARD_RE.match(stripped):
        return "forward"
    if stripped[0] == "-" and _SEPARATOR_RE.match(stripped):
        return "separator"
    if ":" in stripped[:12] or "：" in stripped[:6]:
        if _OUTLOOK_FROM_RE.match(stripped):
            for j in range(i + 1, min(len(lines), i + 1 + _OUTLOOK_LOOKAHEAD)):
                if _OUTLOOK_SENT_RE.match(lines[j]):
                    return "outlook"
    return None


def _drop_preceding_rule(lines: list[str], new: list[int]) -> list[int]:
    """Outlook draws a "______" rule above its header block: it belongs to the history."""
    end = len(new)
    while end > 0 and not lines[new[end - 1]].strip():
        end -= 1
    if end > 0 and _RULE_LINE_RE.match(lines[new[end - 1]]):
        return new[:end - 1]
    return new


def _attribution_span(lines: list[str], i: int) -> tuple[int, bool]:
    """(number of lines, 1-3, forming an attribution starting at line i, or 0; whether it
    carries a date or time, which makes it safe to cut even without "> " lines below)."""
    if not lines[i].strip() or len(lines[i]) > 400:
        return 0, False
    for span in (1, 2, 3):
        if i + span > len(lines):
            break
        last = lines[i + span - 1].rstrip()
        if not last:
            break       # a wrapped attribution has no blank line inside
        if not last.endswith(_ATTRIBUTION_ENDINGS):
            continue    # every attribution ends with a colon (or 書きました)
        joined = " ".join(part.strip() for part in lines[i:i + span])
        if not _ATTRIBUTION_HINT_RE.search(joined):
            continue
        for index, pattern in enumerate(_ATTRIBUTION_RES):
            generic = index in _GENERIC_INDICES
            if generic and span > 1:
                continue
            if pattern.match(joined):
                return span, not generic and bool(_DIGIT_RE.search(joined))
    return 0, False


_ATTRIBUTION_ENDINGS = (":", "：", "書きました")
_DIGIT_RE = re.compile(r"\d")


def _next_non_blank(lines: list[str], start: int) -> int | None:
    for j in range(start, len(lines)):
        if lines[j].strip():
            return j
    return None


def _cut_signature(lines: list[str]) -> tuple[list[str], list[str]]:
    """``(body, signature)``. Only cuts when real text stays above the signature."""
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    non_blank = [k for k, line in enumerate(lines) if line.strip()]
    if len(non_blank) < 2:
        return lines, []
    cuts = [
        cut
        for cut in (
            _dash_delimiter(lines), _mobile_line(lines, non_blank), _ja_rule(lines, non_blank)
        )
        if cut is not None and any(line.strip() for line in lines[:cut])
    ]
    if not cuts:
        return lines, []
    cut = min(cuts)     # the earliest: a device line often sits under the real signature
    return _strip_trailing_blank(lines[:cut]), lines[cut:]


def _dash_delimiter(lines: list[str]) -> int | None:
    for k in range(len(lines) - 1, -1, -1):
        if _SIG_DELIMITER_RE.match(lines[k]):
            return k if len(lines) - k - 1 <= _DASH_SIG_MAX_LINES else None
    return None


def _mobile_line(lines: list[str], non_blank: list[int]) -> int | None:
    for k in non_blank[-_MOBILE_SIG_TAIL:]:
        if len(lines[k]) <= 80 and _MOBILE_SIG_RE.match(lines[k]):
            return k
    return None


def _ja_rule(lines: list[str], non_blank: list[int]) -> int | None:
    tail = non_blank[-_JA_SIG_MAX_LINES:]
    for k in tail:
        if _JA_RULE_RE.match(lines[k]) and k != non_blank[-1]:
            return k
    return None


def _forwarded_content(
    history: list[str], outer_signature: list[str], depth: int
) -> tuple[str, str, str]:
    """The forwarded message (headers skipped) split on its own; falls back to all of it."""
    body_lines = _skip_forward_headers(_skip_marker(history))
    inner_new, inner_quoted, inner_signature = (
        _split_lines(body_lines, depth + 1) if body_lines else ("", "", "")
    )
    if not inner_new.strip():
        inner_new = _join(body_lines)
    signature = inner_signature or _join(outer_signature)
    return inner_new, inner_quoted, signature


_FORWARD_HEADER_RE = re.compile(
    r"^\s*\**(From|To|Cc|Bcc|Date|Sent|Subject|Reply-To|Von|An|Datum|Betreff|Gesendet|De|À|A|"
    r"Objet|Envoyé|Para|Fecha|Asunto|Enviado|Da|Oggetto|Inviato|Data|Van|Aan|Onderwerp|"
    r"Verzonden|差出人|送信者|宛先|送信日時|日付|件名|CC)\s*\**\s*[:：]",
    re.IGNORECASE,
)


def _skip_marker(history: list[str]) -> list[str]:
    """Drop the rule and marker line(s) above an Outlook header block or after a forward."""
    k = 0
    while k < len(history) and (not history[k].strip() or _RULE_LINE_RE.match(history[k])):
        k += 1
    if k < len(history) and (_FORWARD_RE.match(history[k]) or _SEPARATOR_RE.match(history[k])):
        k += 1
    return history[k:]


def _skip_forward_headers(lines: list[str]) -> list[str]:
    k = 0
    while k < len(lines) and not lines[k].strip():
        k += 1
    start = k
    while k < len(lines) and _FORWARD_HEADER_RE.match(lines[k]):
        k += 1
    if k == start:
        return lines[start:]
    return lines[k:]


def _is_trivial(text: str) -> bool:
    """Empty or a bare "FYI"-style note; "ok" or "thanks" are real replies, not trivial."""
    return bool(_FYI_RE.match(normalise(text)))


def _strip_trailing_blank(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _join(lines: list[str]) -> str:
    return _BLANK_RUN_RE.sub("\n\n", "\n".join(lines)).strip("\n")


# --------------------------------------------------------------------------------------------
# classifier_text
# --------------------------------------------------------------------------------------------

# Reply/forward prefixes (after NFKC, so full-width forms are covered) and case tags.
_SUBJECT_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|fwd?|aw|wg|tr|rv|sv|vs|antw|ant|enc|res|rif|r|i|doorst|返信|転送|返|転)"
    r"\s*(?:\[\d+\]|\(\d+\)|\*\d+)?\s*:\s*)",
    re.IGNORECASE,
)
_CASE_TAG_RE = re.compile(r"\[[A-Z][A-Z0-9]{1,15}-\d{4}-\d{1,8}\]", re.IGNORECASE)
_SPACE_RUN_RE = re.compile(r"[ \t]+")


def clean_subject(subject: str) -> str:
    """Normalised subject without reply/forward prefixes and case tags."""
    text = normalise(subject).replace("\n", " ")
    text = _CASE_TAG_RE.sub(" ", text)
    previous = None
    while previous != text:
        previous = text
        text = _SUBJECT_PREFIX_RE.sub("", text).strip()
    return _SPACE_RUN_RE.sub(" ", text).strip()


def classifier_text(subject: str, new_text: str, max_chars: int = CLASSIFIER_MAX_CHARS) -> str:
    """THE combination of subject and body for the classifier (training and inference alike):
    cleaned subject, a newline, normalised new text; empty parts left out; first ``max_chars``."""
    parts = [part for part in (clean_subject(subject or ""), normalise(new_text or "")) if part]
    return "\n".join(parts)[:max_chars]
