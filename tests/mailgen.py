"""Builds realistic inquiry mail for end-to-end tests and the benchmark.

Japanese messages are encoded the way Japanese mailers send them: 7-bit ISO-2022-JP or
8-bit Shift_JIS bodies with ISO-2022-JP encoded-word headers.
"""
from __future__ import annotations

from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr

BOT = "inquiries@ikaclo.example.jp"

EN = [
    ("Request for a copy of my data", "Hello,\n\nPlease send me a copy of all personal information you hold about me, and tell me who you shared it with.\n\nRegards,\n{name}"),
    ("Delete my account", "Hi,\n\nI want my account and all my personal data deleted. I no longer use the service.\n\n{name}\nSent from my iPhone"),
    ("Wrong name on my profile", "Hello,\n\nMy surname is misspelled in your records. It should be 'Whitfield', not 'Whitfeild'. Please correct it.\n\nThanks\n{name}"),
    ("You leaked my email address", "I keep receiving spam at an address I only ever gave to you. I think you leaked my data and I am very unhappy about it. I expect an explanation.\n\n{name}"),
    ("Stop using my data for ads", "Please stop using my browsing history for personalised advertising. I never agreed to that.\n{name}"),
    ("Question about my data", "Could you tell me what personal data you have on file for my account and how it is used?\n\nBest,\n{name}"),
    ("Update my email address", "Hello, please change the e-mail address on my account to the new one below and update your records.\nnew.address@example.org\n\n{name}"),
]
JA = [
    ("保有個人データの開示請求", "ご担当者様\n\nいつもお世話になっております。{name}と申します。\n貴社が保有している私の個人データの開示をお願いいたします。\n\nよろしくお願いいたします。"),
    ("退会とデータ削除のお願い", "お世話になっております。\n退会しますので、登録している個人情報をすべて削除してください。\n\n{name}"),
    ("登録情報の訂正", "登録されている住所が古いままです。新しい住所に訂正してください。\n\n{name}\niPhoneから送信"),
    ("個人情報の取扱いについての苦情", "同意していないのに広告メールが届きます。個人情報の取扱いに強い不満があります。\n{name}"),
]
DE = [
    ("Auskunft nach Art. 15 DSGVO", "Sehr geehrte Damen und Herren,\n\nhiermit verlange ich Auskunft nach Art. 15 DSGVO über alle zu meiner Person gespeicherten Daten.\n\nMit freundlichen Grüßen\n{name}"),
]


@dataclass(frozen=True)
class Inquiry:
    sender: str
    name: str
    subject: str
    language: str
    raw: bytes
    message_id: str


def english(i: int, *, domain: str = "example.net") -> Inquiry:
    subject, body = EN[i % len(EN)]
    name = f"Customer {i}"
    addr = f"customer{i}@{domain}"
    mid = f"inq{i}.{domain}@mail.{domain}"
    return Inquiry(addr, name, subject, "en", _utf8(addr, name, subject, body.format(name=name), mid), mid)


def german(i: int) -> Inquiry:
    subject, body = DE[i % len(DE)]
    name = f"Kunde {i}"
    addr = f"kunde{i}@example.de"
    mid = f"inq{i}@mail.example.de"
    return Inquiry(addr, name, subject, "de", _utf8(addr, name, subject, body.format(name=name), mid), mid)


def japanese(i: int, charset: str = "iso-2022-jp") -> Inquiry:
    subject, body = JA[i % len(JA)]
    name = f"山田{i}号"
    addr = f"yamada{i}@example.jp"
    mid = f"inq{i}.{charset}@mail.example.jp"
    body = body.format(name=name).replace("\n", "\r\n")
    codec = {"iso-2022-jp": "iso2022_jp", "shift_jis": "cp932", "utf-8": "utf-8"}[charset]
    cte = "7bit" if charset == "iso-2022-jp" else "8bit"
    head = [
        f"From: {Header(name, 'iso-2022-jp').encode()} <{addr}>",
        f"To: {BOT}",
        f"Subject: {Header(subject, 'iso-2022-jp').encode()}",
        "Date: Tue, 24 Nov 2026 10:15:00 +0900",
        f"Message-ID: <{mid}>",
        "MIME-Version: 1.0",
        f"Content-Type: text/plain; charset={'Shift_JIS' if charset == 'shift_jis' else charset.upper()}",
        f"Content-Transfer-Encoding: {cte}",
    ]
    raw = ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body.encode(codec) + b"\r\n"
    return Inquiry(addr, name, subject, "ja", raw, mid)


def _utf8(addr: str, name: str, subject: str, body: str, mid: str, **headers: str) -> bytes:
    m = EmailMessage()
    m["From"] = formataddr((name, addr))
    m["To"] = BOT
    m["Subject"] = subject
    m["Date"] = "Tue, 24 Nov 2026 10:15:00 +0900"
    m["Message-ID"] = f"<{mid}>"
    for k, v in headers.items():
        m[k.replace("_", "-")] = v
    m.set_content(body)
    return m.as_bytes(policy=SMTP)


def reply_to(ack_raw: bytes, sender: str, body: str = "Thank you. Attached is a copy of my ID.",
             mid: str = "reply1@mail.example.net") -> bytes:
    """The customer's reply to our acknowledgement, threaded as a mail client would."""
    import email
    import email.policy
    ack = email.message_from_bytes(ack_raw, policy=email.policy.default)
    m = EmailMessage()
    m["From"] = sender
    m["To"] = BOT
    m["Subject"] = "Re: " + " ".join(str(ack["Subject"]).split())
    m["Message-ID"] = f"<{mid}>"
    ack_id = " ".join(str(ack["Message-ID"]).split())
    m["In-Reply-To"] = ack_id
    m["References"] = " ".join((str(ack.get("References", "")) + " " + ack_id).split())
    plain = ack.get_body(preferencelist=("plain",))
    quoted = plain.get_content().splitlines()[:5] if plain is not None else []
    m.set_content(body + "\n\n> " + "\n> ".join(quoted))
    return m.as_bytes(policy=SMTP)


def machine_mail(kind: str, our_message_id: str = "", recipient: str = "") -> bytes:
    """Mail that must never be answered: auto-reply, bounce, list message, our own address."""
    if kind == "auto-reply":
        return _utf8("ooo@example.net", "Out Of Office", "Automatic reply: Your inquiry",
                     "I am out of the office until Monday.", "ooo1@mail.example.net",
                     Auto_Submitted="auto-replied")
    if kind == "mailing-list":
        return _utf8("news@lists.example.org", "Example News", "Weekly digest",
                     "This week's news...", "list1@lists.example.org",
                     List_Id="<news.lists.example.org>", List_Unsubscribe="<mailto:leave@lists.example.org>")
    if kind == "own-address":
        return _utf8(BOT, "Ikaclo", "Loop test", "This came from ourselves.", "own1@mail.example.net")
    if kind == "bounce":
        return (
            "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
            f"To: {BOT}\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            "Message-ID: <bounce1@mx.example.net>\r\n"
            "Auto-Submitted: auto-replied\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
            "--B\r\nContent-Type: text/plain\r\n\r\nThis is the mail system. Your message could not be delivered.\r\n"
            f"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"From: {BOT}\r\nTo: {recipient}\r\nMessage-ID: <{our_message_id}>\r\nSubject: Re: x\r\n"
            "--B--\r\n").encode("utf-8")
    raise ValueError(kind)


def twenty_inquiries() -> list[Inquiry]:
    """Acceptance (a): English, Japanese (ISO-2022-JP and Shift_JIS) and one German."""
    out = [english(i) for i in range(11)]
    out += [japanese(100 + i, "iso-2022-jp") for i in range(4)]
    out += [japanese(200 + i, "shift_jis") for i in range(4)]
    out.append(german(300))
    return out
