"""Staff mail: replies from the digest (relayed to the requester) and ``#`` commands.

A staff mail is trusted only when all of these hold: it was sent to a signed reply address,
the token verifies for this case *and* this sender, the sender is a configured staff address,
and the token has not expired. Anything else is never relayed and runs no command; it is
recorded, the supervisor is told, and nothing goes back to the (possibly forged) sender.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from sqlalchemy.orm import Session

from . import addresses, cases as case_ops, deadlines, lifecycle, outbox
from .config import Config
from .parse import InboundMessage
from .store import Case

logger = logging.getLogger(__name__)

COMMAND_LINE = re.compile(r"^#([a-z][a-z-]*)\b[ \t]*(.*)$", re.I)


@dataclass(frozen=True)
class StaffCheck:
    ok: bool
    case_id: int | None = None
    reason: str = ""            # why it was refused (recorded; not sent to the sender)


@dataclass
class StaffOutcome:
    case_ref: str
    relayed: bool = False
    results: list[tuple[str, bool, str]] = field(default_factory=list)   # command, ok, message


def recipients(msg: InboundMessage) -> list[str]:
    extra = [v.strip().strip("<>").lower() for name in ("delivered-to", "x-original-to", "envelope-to")
             for v in msg.headers.get(name, ())]
    return [*msg.to, *msg.cc, *extra]


def is_staff_mail(cfg: Config, msg: InboundMessage) -> bool:
    """Mail that claims staff authority: sent to a reply address, or from a staff address."""
    return (addresses.token_in(recipients(msg), cfg.bot.address) is not None
            or msg.sender.lower() in cfg.staff.addresses)


def check(cfg: Config, msg: InboundMessage, *, today: Any) -> StaffCheck:
    raw = addresses.token_in(recipients(msg), cfg.bot.address)
    if raw is None:
        return StaffCheck(False, reason="staff address without a reply token")
    for value in msg.headers.get("authentication-results", ()):
        # Our own MX's verdict, when it adds one: a failed DMARC check means a forged From.
        if re.search(r"\bdmarc=fail\b", value, re.I):
            return StaffCheck(False, reason="DMARC failed for the sender's domain")
    if msg.sender.lower() not in cfg.staff.addresses:
        return StaffCheck(False, reason="sender is not a configured staff address")
    secret = cfg.token_secret()
    if not secret:
        return StaffCheck(False, reason="no token secret configured")
    try:
        token = addresses.verify(secret, raw, msg.sender, today=today, ttl_days=cfg.staff.token_ttl_days)
    except addresses.TokenError as e:
        return StaffCheck(False, reason=str(e))
    return StaffCheck(True, case_id=token.case_id)


def split_commands(text: str) -> tuple[list[tuple[str, str]], str]:
    """Leading ``#command args`` lines, and the rest of the message (to relay)."""
    lines = text.replace("\r\n", "\n").split("\n")
    commands: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line and not commands:
            i += 1
            continue
        m = COMMAND_LINE.match(line)
        if not m:
            break
        commands.append((m.group(1).lower(), m.group(2).strip()))
        i += 1
    return commands, "\n".join(lines[i:]).strip()


def run_command(s: Session, cfg: Config, policy: deadlines.Policy, case: Case, name: str, arg: str,
                actor: str, now: datetime) -> str:
    """Run one command through the lifecycle rules; raises LifecycleRefused with the reason."""
    actions: dict[str, Callable[[], lifecycle.ActionResult]] = {
        "note": lambda: lifecycle.note(s, case, arg, actor=actor),
        "close": lambda: lifecycle.close(s, case, actor=actor, reason=arg or f"closed by {actor}"),
        "answered": lambda: lifecycle.answered(s, case, actor=actor, reason=arg),
        "reject": lambda: lifecycle.reject(s, cfg, case, actor=actor, reason=arg, now=now),
        "extend": lambda: lifecycle.extend(s, cfg, policy, case, actor=actor, reason=arg, now=now),
        "pause-for-identity": lambda: lifecycle.pause_for_identity(s, cfg, policy, case, actor=actor,
                                                                   reason=arg, now=now),
        "resume": lambda: lifecycle.resume(s, cfg, policy, case, actor=actor,
                                           reason=arg or "resumed by staff", now=now),
        "verified": lambda: _verified(s, cfg, policy, case, actor, arg, now),
        "assign": lambda: _assign(s, cfg, case, arg, actor),
        "labels": lambda: lifecycle.reclassify(s, policy, case, re.split(r"[,\s]+", arg), actor=actor,
                                               reason="staff correction by mail"),
    }
    if name not in actions:
        raise lifecycle.LifecycleRefused(f"unknown command #{name}; known: "
                                         + ", ".join(f"#{k}" for k in actions))
    return actions[name]().message


def _verified(s: Session, cfg: Config, policy: deadlines.Policy, case: Case, actor: str, arg: str,
              now: datetime) -> lifecycle.ActionResult:
    if case.status == "awaiting_identity":
        return lifecycle.resume(s, cfg, policy, case, actor=actor, reason=arg or "identity verified", now=now)
    case_ops.record_event(s, case, "identity_verified", actor=actor, reason=arg)
    return lifecycle.ActionResult(case.ref, "verified", f"{case.ref}: identity recorded as verified", {})


def _assign(s: Session, cfg: Config, case: Case, arg: str, actor: str) -> lifecycle.ActionResult:
    owner = actor if arg.strip().lower() in ("", "me") else arg.strip().lower()
    if owner not in cfg.staff.addresses:
        raise lifecycle.LifecycleRefused(f"{owner} is not a configured staff address")
    return lifecycle.assign(s, case, owner, actor=actor)


def handle(s: Session, cfg: Config, policy: deadlines.Policy, case: Case, msg: InboundMessage,
           inbound_id: int, now: datetime) -> StaffOutcome:
    """Run the commands, relay the rest to the requester, confirm to the staff member."""
    actor = msg.sender.lower()
    commands, rest = split_commands(msg.new_text)
    outcome = StaffOutcome(case.ref)
    for name, arg in commands:
        nested = s.begin_nested()
        try:
            outcome.results.append((f"#{name} {arg}".strip(), True,
                                    run_command(s, cfg, policy, case, name, arg, actor, now)))
            nested.commit()
        except lifecycle.LifecycleRefused as e:
            nested.rollback()
            outcome.results.append((f"#{name} {arg}".strip(), False, str(e)))
            case_ops.record_event(s, case, "command_refused", actor=actor, reason=f"#{name}: {e}",
                                  inbound_id=inbound_id)
    if rest:
        relay(s, cfg, case, rest, actor=actor, inbound_id=inbound_id, now=now)
        outcome.relayed = True
    confirm(s, cfg, case, outcome, msg, inbound_id, now)
    logger.info("staff mail on %s: %d command(s), relayed=%s", case.ref, len(commands), outcome.relayed)
    return outcome


def relay(s: Session, cfg: Config, case: Case, text: str, *, actor: str, inbound_id: int,
          now: datetime) -> None:
    thread = lifecycle.thread_ids(s, case)
    subject = f"Re: {outbox.clean_header(case.subject, 150)} [{case.ref}]" if case.subject \
        else f"[{case.ref}]"
    body = f"{text}\n\n--\n{cfg.bot.organisation} privacy team\n{cfg.bot.address}\n"
    mail = outbox.OutgoingMail(kind="staff_reply", sender=cfg.bot.address,
                               sender_name=f"{cfg.bot.organisation} Privacy", recipient=case.requester,
                               subject=subject, text=body, html=None, domain=cfg.domain, id_hint=case.ref,
                               in_reply_to=thread[-1] if thread else None, references=thread,
                               auto=False, template="staff_reply")
    row = outbox.enqueue(s, mail, case_id=case.id, inbound_id=inbound_id,
                         dedupe_key=f"relay:{inbound_id}", now=now)
    case_ops.remember_message_id(s, case, row.message_id, "out")
    case_ops.record_event(s, case, "staff_reply", actor=actor, inbound_id=inbound_id, outbox=row,
                          reason="relayed to the requester")
    if case.status in ("new", "acknowledged"):
        case_ops.set_status(s, case, "in_progress", actor=actor, reason="staff replied")


def confirm(s: Session, cfg: Config, case: Case, outcome: StaffOutcome, msg: InboundMessage,
            inbound_id: int, now: datetime) -> None:
    lang = outbox.template_language("staff_confirmation", cfg.staff_language(msg.sender))
    subject = f"[{case.ref}] " + ("受付: " if lang == "ja" else "Done: ") + outbox.clean_header(msg.subject, 120)
    ctx = {"case_ref": case.ref, "relayed": outcome.relayed, "results": outcome.results,
           "status": case.status, "due_date": case.due_date.isoformat(), "requester": case.requester,
           "organisation": cfg.bot.organisation, "bot_address": cfg.bot.address, "subject": subject}
    text, html = outbox.render("staff_confirmation", lang, ctx)
    mail = outbox.OutgoingMail(kind="staff_confirmation", sender=cfg.bot.address, sender_name="inbox-bot",
                               recipient=msg.sender, subject=subject, text=text, html=html,
                               domain=cfg.domain, id_hint=case.ref, in_reply_to=msg.message_id,
                               references=list(msg.references), template=f"staff_confirmation.{lang}")
    outbox.enqueue(s, mail, case_id=case.id, inbound_id=inbound_id, dedupe_key=f"confirm:{inbound_id}", now=now)


def alert_supervisor(s: Session, cfg: Config, rejected: list[tuple[int, str, str]], now: datetime) -> None:
    """One alert for the staff mails refused in a pass: (inbound id, sender, reason)."""
    if not rejected or not cfg.staff.supervisor:
        return
    lang = outbox.template_language("security_alert", cfg.staff_language(cfg.staff.supervisor))
    subject = "inbox-bot: refused staff mail" if lang != "ja" else "inbox-bot: 認証できないスタッフ宛メール"
    ctx = {"rejected": [(i, addresses.redact(sender), reason) for i, sender, reason in rejected],
           "organisation": cfg.bot.organisation, "bot_address": cfg.bot.address, "subject": subject}
    text, html = outbox.render("security_alert", lang, ctx)
    mail = outbox.OutgoingMail(kind="security_alert", sender=cfg.bot.address, sender_name="inbox-bot",
                               recipient=cfg.staff.supervisor, subject=subject, text=text, html=html,
                               domain=cfg.domain, template=f"security_alert.{lang}")
    outbox.enqueue(s, mail, dedupe_key=f"security-alert:{rejected[0][0]}", now=now)
