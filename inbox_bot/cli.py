"""Command line: ``inbox-bot demo | run | classify | cases | messages | reprocess | train | ...``."""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

import click
from sqlalchemy import select

from . import config as config_mod
from .config import Config, ConfigError

logger = logging.getLogger("inbox_bot")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # The format shows no source line, thread or process: don't work them out for every
    # record (the logging HOWTO's "Optimization"; the intake logs a line per message).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def _load_config(ctx: click.Context) -> Config:
    obj = ctx.find_root().obj
    if obj.get("cfg") is None:
        try:
            obj["cfg"] = config_mod.load(obj.get("config_path"))
        except ConfigError as e:
            raise click.ClickException(f"configuration error: {e}") from None
    return obj["cfg"]


def _clock(now: str | None) -> Callable[[], datetime]:
    if not now:
        return lambda: datetime.now(timezone.utc)
    fixed = datetime.fromisoformat(now.replace("Z", "+00:00"))
    if fixed.tzinfo is None:
        raise click.BadParameter("--now needs a time zone, e.g. 2026-11-25T09:00:00+09:00")
    return lambda: fixed


def _emit(data: Any, as_json: bool, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, default=str, indent=None))
    else:
        text()


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="INBOX_BOT_CONFIG",
              help="TOML configuration file (default: $INBOX_BOT_CONFIG, else built-in defaults).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(package_name="inbox-bot")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, log_level: str) -> None:
    """inbox-bot: privacy inquiries in, tracked deadline-aware cases out."""
    _setup_logging(log_level)
    ctx.obj = {"config_path": config_path, "cfg": None}


# -- worker -----------------------------------------------------------------------------------

@main.command()
@click.option("--once", is_flag=True, help="Poll everything available, send what is due, exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the --once report as JSON.")
@click.option("--now", hidden=True, help="Pretend the current time is this ISO 8601 instant.")
@click.pass_context
def run(ctx: click.Context, once: bool, as_json: bool, now: str | None) -> None:
    """Run the worker (poll the mailbox, send the outbox) until SIGTERM/SIGINT."""
    from .app import build_app
    cfg = _load_config(ctx)
    app = build_app(cfg, clock=_clock(now))
    if once:
        report = app.run_once()
        _emit(report.__dict__, as_json, lambda: click.echo(
            f"journaled {report.journaled}, processed {report.processed} {report.dispositions}, "
            f"cases opened {len(report.cases_opened)}, held {len(report.held)}, "
            f"mail sent {report.sent} (retry {report.send_retry}, failed {report.send_failed})"))
        app.close()
        return
    from .jobs import run_forever
    run_forever(app)


@main.command()
@click.option("--dir", "workdir", default="inbox-bot-demo", show_default=True,
              type=click.Path(file_okay=False), help="Where the demo keeps its mailbox, outbox and database.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def demo(ctx: click.Context, workdir: str, as_json: bool) -> None:
    """Run the main job on the bundled sample mailbox (no mail server needed)."""
    from .app import build_app
    from .store import Case, Outbox
    base = Path(workdir).resolve()
    cfg = config_mod.load(None) if ctx.obj.get("config_path") is None else _load_config(ctx)
    cfg = replace(cfg,
                  mailbox=replace(cfg.mailbox, type="maildir", path=str(base / "mailbox")),
                  smtp=replace(cfg.smtp, transport="file", outbox_dir=str(base / "outbox")),
                  database=replace(cfg.database, url=f"sqlite:///{base / 'inbox-bot.sqlite3'}"))
    seeded = seed_sample_mailbox(base / "mailbox")
    app = build_app(cfg)
    report = app.run_once()
    with app.store.read_session() as s:
        rows = s.execute(select(Case).order_by(Case.id)).scalars().all()
        cases = [_case_summary(c) for c in rows]
        sent = {o.case_id: o for o in s.execute(select(Outbox).where(Outbox.status == "sent")).scalars()}
    outbox_dir = base / "outbox"
    data = {"seeded": seeded, "report": report.__dict__, "cases": cases, "outbox": str(outbox_dir)}

    def text() -> None:
        click.echo(f"Sample mailbox: {base / 'mailbox'} ({seeded} new sample message(s) delivered)")
        click.echo(f"Processed {report.processed} message(s): {report.dispositions}")
        click.echo(f"{'case':<16} {'lang':<4} {'due':<10} {'labels':<32} requester")
        for c in cases:
            click.echo(f"{c['id']:<16} {c['language']:<4} {c['due_date']:<10} "
                       f"{','.join(c['labels']):<32} {c['requester']}")
        click.echo(f"Acknowledgements written to {outbox_dir} ({len(sent)} .eml file(s) this run: {report.sent})")
        click.echo(f"Look at them: INBOX_BOT_DATABASE_URL=sqlite:///{base / 'inbox-bot.sqlite3'} "
                   "inbox-bot cases list")
    _emit(data, as_json, text)
    app.close()


def seed_sample_mailbox(maildir: Path) -> int:
    """Deliver the bundled sample messages into ``maildir`` (once per sample)."""
    import mailbox as mb
    samples = samples_dir()
    maildir.parent.mkdir(parents=True, exist_ok=True)
    box = mb.Maildir(str(maildir), create=True)
    marker = maildir / ".seeded"
    done = set(marker.read_text().split()) if marker.exists() else set()
    count = 0
    for eml in sorted(samples.glob("*.eml")):
        if eml.name in done:
            continue
        box.add(mb.MaildirMessage(eml.read_bytes()))
        done.add(eml.name)
        count += 1
    marker.write_text("\n".join(sorted(done)))
    return count


def samples_dir() -> Path:
    packaged = resources.files("inbox_bot") / "samples"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[1] / "samples"


# -- classifier -------------------------------------------------------------------------------

@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def classify(ctx: click.Context, files: tuple[str, ...], as_json: bool) -> None:
    """Classify .eml files with the shipped model."""
    from .classify import Classifier
    from .parse import parse
    cfg = config_mod.load(None) if ctx.obj.get("config_path") is None else _load_config(ctx)
    clf = Classifier.load(Path(cfg.classifier.model_path) if cfg.classifier.model_path else None)
    for f in files:
        msg = parse(Path(f).read_bytes())
        verdict = clf.classify(msg.subject, msg.new_text)
        row = {"file": f, "labels": list(verdict.labels), "scores": verdict.scores,
               "language": msg.language, "needs_review": verdict.needs_review,
               "close_call": verdict.close_call}
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            flags = " needs-review" if verdict.needs_review else ""
            click.echo(f"{f}: {','.join(verdict.labels)} [{msg.language}]{flags}")


@main.command()
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Where to write the model (default: the shipped model directory).")
@click.option("--include-corrections", is_flag=True, help="Add staff label corrections to training.")
@click.option("--seed", default=0, show_default=True)
@click.pass_context
def train(ctx: click.Context, output: str | None, include_corrections: bool, seed: int) -> None:
    """Rebuild the classifier from the labelled corpus in models/data."""
    from . import training
    extra: Iterable[Any] = ()
    if include_corrections:
        extra = _corrections(ctx)
    metrics = training.train(Path(output) if output else None, include_corrections=extra, seed=seed)
    click.echo(json.dumps(metrics, ensure_ascii=False, indent=2, default=str))


def _corrections(ctx: click.Context) -> list[Any]:
    from .app import open_store
    from .corrections import corrections_from_store
    found = list(corrections_from_store(open_store(_load_config(ctx))))
    click.echo(f"adding {len(found)} staff correction(s) to the training data", err=True)
    return found


@main.command()
@click.option("--model", "model_path", type=click.Path(file_okay=False), default=None,
              help="Model directory (default: the shipped model).")
@click.option("--folder", type=click.Path(file_okay=False, exists=True), default=None,
              help="Also evaluate a folder of .eml files with a labels.csv (file,labels).")
@click.option("--json", "as_json", is_flag=True)
def evaluate(model_path: str | None, folder: str | None, as_json: bool) -> None:
    """Held-out metrics: per-label P/R/F1, macro-F1, exact match, per language, confusions."""
    from . import training
    sets = [("held-out split", training.load_corpus(training.DEFAULT_HELDOUT_DIR))]
    if folder:
        sets.append((folder, training.load_labelled_eml_folder(Path(folder))))
    out = {}
    for name, examples in sets:
        report = training.evaluate(Path(model_path) if model_path else None, examples)
        out[name] = report.to_dict()
        if not as_json:
            click.echo(f"== {name} ({len(examples)} messages)\n{report.to_text()}\n")
    if as_json:
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))


# -- cases and messages -----------------------------------------------------------------------

@main.group()
def cases() -> None:
    """Look at cases."""


def _case_summary(c: Any) -> dict[str, Any]:
    return {"id": c.ref, "status": c.status, "labels": list(c.labels), "language": c.language,
            "requester": c.requester, "received_at": c.received_at.isoformat(),
            "receipt_date": c.receipt_date.isoformat(), "due_date": c.due_date.isoformat(),
            "needs_review": c.needs_review}


@cases.command("list")
@click.option("--status", default=None, help="Only cases in this state.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cases_list(ctx: click.Context, status: str | None, as_json: bool) -> None:
    from .app import open_store
    from .store import Case
    store = open_store(_load_config(ctx))
    with store.read_session() as s:
        q = select(Case).order_by(Case.due_date, Case.id)
        if status:
            q = q.where(Case.status == status)
        rows = [_case_summary(c) for c in s.execute(q).scalars()]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False))
        return
    click.echo(f"{'case':<16} {'status':<13} {'due':<10} {'lang':<4} {'labels':<30} requester")
    for r in rows:
        flag = " (review)" if r["needs_review"] else ""
        click.echo(f"{r['id']:<16} {r['status']:<13} {r['due_date']:<10} {r['language']:<4} "
                   f"{','.join(r['labels']):<30} {r['requester']}{flag}")


@cases.command("show")
@click.argument("case_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cases_show(ctx: click.Context, case_id: str, as_json: bool) -> None:
    from .app import open_store
    from .cases import find_case
    from .store import InboundMessage, Outbox
    store = open_store(_load_config(ctx))
    with store.read_session() as s:
        case = find_case(s, case_id)
        if case is None:
            raise click.ClickException(f"no case {case_id}")
        data = _case_summary(case) | {
            "subject": case.subject, "scores": case.scores, "close_call": case.close_call,
            "internal_target": case.internal_target and case.internal_target.isoformat(),
            "extended_due": case.extended_due and case.extended_due.isoformat(),
            "due_rules": case.due_rules, "owner": case.owner,
            "events": [{"at": e.at.isoformat(), "actor": e.actor, "kind": e.kind, "reason": e.reason,
                        "old": e.old, "new": e.new} for e in case.events],
            "messages": [{"id": m.id, "received_at": m.received_at.isoformat(), "disposition": m.disposition,
                          "subject": m.subject} for m in s.execute(
                              select(InboundMessage).where(InboundMessage.case_id == case.id)
                              .order_by(InboundMessage.id)).scalars()],
            "outbox": [{"id": o.id, "kind": o.kind, "status": o.status, "message_id": o.message_id,
                        "attempts": o.attempts, "last_error": o.last_error} for o in s.execute(
                            select(Outbox).where(Outbox.case_id == case.id).order_by(Outbox.id)).scalars()],
        }
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, default=str))
        return
    for key in ("id", "status", "labels", "scores", "language", "requester", "subject", "received_at",
                "receipt_date", "due_date", "internal_target", "extended_due", "needs_review", "owner"):
        click.echo(f"{key + ':':<17}{data[key]}")
    click.echo("due date rules:")
    for rule in data["due_rules"]:
        click.echo(f"  - {rule}")
    click.echo("events:")
    for e in data["events"]:
        click.echo(f"  {e['at']}  {e['actor']:<12} {e['kind']:<14} {e['reason']}")
    click.echo("messages:")
    for m in data["messages"]:
        click.echo(f"  #{m['id']} {m['received_at']} {m['disposition']}: {m['subject']}")
    click.echo("outgoing mail:")
    for o in data["outbox"]:
        err = f" ({o['last_error']})" if o["last_error"] else ""
        click.echo(f"  {o['kind']:<10} {o['status']:<8} attempts={o['attempts']} <{o['message_id']}>{err}")


def _case_action(ctx: click.Context, case_id: str, now: str | None, as_json: bool,
                 action: Callable[..., Any]) -> None:
    """Run one lifecycle action in a transaction; a refusal exits 1 with its reason."""
    from .app import build_app
    from .cases import find_case
    from .lifecycle import LifecycleRefused
    cfg = _load_config(ctx)
    app = build_app(cfg, clock=_clock(now), classifier=_NoClassifier())
    try:
        with app.store.session() as s, s.begin():
            case = find_case(s, case_id)
            if case is None:
                raise click.ClickException(f"no case {case_id}")
            result = action(s, app, case)
    except LifecycleRefused as e:
        raise click.ClickException(str(e)) from None
    app.send()
    _emit({"case": result.case_ref, "action": result.action, "message": result.message,
           **result.changes}, as_json, lambda: click.echo(result.message))


class _NoClassifier:
    """Lifecycle commands never classify: don't pay for loading the model."""

    def classify(self, *a: Any) -> Any:
        raise RuntimeError("no classifier in this command")

    classify_many = classify


def _actor(actor: str | None) -> str:
    import getpass
    return actor or f"cli:{getpass.getuser()}"


_common = [click.option("--reason", required=False, default="", help="Why (stored in the audit trail)."),
           click.option("--actor", default=None, help="Who acts (default: cli:<user>)."),
           click.option("--now", hidden=True), click.option("--json", "as_json", is_flag=True)]


def _with_common(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_common):
        f = option(f)
    return f


@cases.command("extend")
@click.argument("case_id")
@_with_common
@click.pass_context
def cases_extend(ctx: click.Context, case_id: str, reason: str, actor: str | None, now: str | None,
                 as_json: bool) -> None:
    """Extend the due date (before it has passed, with a reason); notifies the requester."""
    from . import lifecycle
    _case_action(ctx, case_id, now, as_json, lambda s, app, case: lifecycle.extend(
        s, app.cfg, app.intake.policy, case, actor=_actor(actor), reason=reason, now=app.clock()))


@cases.command("pause")
@click.argument("case_id")
@click.option("--scope", is_flag=True, help="Asking to clarify the scope: never pauses the clock.")
@_with_common
@click.pass_context
def cases_pause(ctx: click.Context, case_id: str, scope: bool, reason: str, actor: str | None,
                now: str | None, as_json: bool) -> None:
    """Wait for the requester's identity information (clock per [deadlines] clock_mode)."""
    from . import lifecycle
    _case_action(ctx, case_id, now, as_json, lambda s, app, case: lifecycle.pause_for_identity(
        s, app.cfg, app.intake.policy, case, actor=_actor(actor), reason=reason, now=app.clock(),
        purpose="scope" if scope else "identity"))


@cases.command("resume")
@click.argument("case_id")
@_with_common
@click.pass_context
def cases_resume(ctx: click.Context, case_id: str, reason: str, actor: str | None, now: str | None,
                 as_json: bool) -> None:
    """Identity received: the clock runs again and the dates are recomputed."""
    from . import lifecycle
    _case_action(ctx, case_id, now, as_json, lambda s, app, case: lifecycle.resume(
        s, app.cfg, app.intake.policy, case, actor=_actor(actor), reason=reason or "identity received",
        now=app.clock()))


@cases.command("close")
@click.argument("case_id")
@_with_common
@click.pass_context
def cases_close(ctx: click.Context, case_id: str, reason: str, actor: str | None, now: str | None,
                as_json: bool) -> None:
    """Close a case (needs a reason)."""
    from . import lifecycle
    _case_action(ctx, case_id, now, as_json, lambda s, app, case: lifecycle.close(
        s, case, actor=_actor(actor), reason=reason))


@cases.command("reject")
@click.argument("case_id")
@_with_common
@click.pass_context
def cases_reject(ctx: click.Context, case_id: str, reason: str, actor: str | None, now: str | None,
                 as_json: bool) -> None:
    """Refuse to act (GDPR Art. 12(4)); sends the refusal notice with the requester's rights."""
    from . import lifecycle
    _case_action(ctx, case_id, now, as_json, lambda s, app, case: lifecycle.reject(
        s, app.cfg, case, actor=_actor(actor), reason=reason, now=app.clock()))


@cases.command("answered")
@click.argument("case_id")
@_with_common
@click.pass_context
def cases_answered(ctx: click.Context, case_id: str, reason: str, actor: str | None, now: str | None,
                   as_json: bool) -> None:
    """Record that the substantive answer was sent."""
    from . import lifecycle
    _case_action(ctx, case_id, now, as_json, lambda s, app, case: lifecycle.answered(
        s, case, actor=_actor(actor), reason=reason))


@cases.command("labels")
@click.argument("case_id")
@click.argument("labels")
@_with_common
@click.pass_context
def cases_labels(ctx: click.Context, case_id: str, labels: str, reason: str, actor: str | None,
                 now: str | None, as_json: bool) -> None:
    """Correct a case's labels (comma-separated); dates are recomputed from the receipt."""
    from . import lifecycle
    _case_action(ctx, case_id, now, as_json, lambda s, app, case: lifecycle.reclassify(
        s, app.intake.policy, case, labels.split(","), actor=_actor(actor), reason=reason or "staff correction"))


@cases.command("assign")
@click.argument("case_id")
@click.argument("owner")
@_with_common
@click.pass_context
def cases_assign(ctx: click.Context, case_id: str, owner: str, reason: str, actor: str | None,
                 now: str | None, as_json: bool) -> None:
    """Make a staff member the owner of a case."""
    from . import lifecycle
    _case_action(ctx, case_id, now, as_json, lambda s, app, case: lifecycle.assign(
        s, case, owner, actor=_actor(actor)))


@cases.command("note")
@click.argument("case_id")
@click.argument("text")
@_with_common
@click.pass_context
def cases_note(ctx: click.Context, case_id: str, text: str, reason: str, actor: str | None,
               now: str | None, as_json: bool) -> None:
    """Add a note to the case history."""
    from . import lifecycle
    _case_action(ctx, case_id, now, as_json, lambda s, app, case: lifecycle.note(
        s, case, text, actor=_actor(actor)))


@main.command()
@click.option("--received", required=True, help="Receipt instant, ISO 8601 with a zone (e.g. 2026-01-15T10:00+09:00).")
@click.option("--labels", required=True, help="Comma-separated labels, e.g. gdpr_request,deletion.")
@click.option("--country", default=None, help="GDPR holiday calendar country (default from policy: DE).")
@click.option("--subdiv", default=None, help="Subdivision of that country.")
@click.option("--clock-mode", type=click.Choice(["none", "suspend_for_identity", "restart_on_identity"]),
              default=None)
@click.option("--id-requested", default=None, help="Date the identity information was requested.")
@click.option("--id-received", default=None, help="Date it arrived.")
@click.option("--id-reason", default="", help="Why it was necessary.")
@click.pass_context
def due(ctx: click.Context, received: str, labels: str, country: str | None, subdiv: str | None,
        clock_mode: str | None, id_requested: str | None, id_received: str | None, id_reason: str) -> None:
    """Compute due dates and show the rules that applied (JSON)."""
    from datetime import date as _date
    from . import deadlines
    cfg = _load_config(ctx)
    mapping = dict(cfg.deadlines)
    mapping.setdefault("controller_timezone", cfg.bot.timezone)
    if country:
        mapping["gdpr_calendar"] = {"country": country.upper(), "subdiv": subdiv}
    if clock_mode:
        mapping["clock_mode"] = clock_mode
    try:
        policy = deadlines.Policy.from_mapping(mapping)
        instant = datetime.fromisoformat(received.replace("Z", "+00:00"))
        if instant.tzinfo is None:
            raise ValueError("--received needs a time zone offset, e.g. +09:00 or Z")
        identity = None
        if id_requested:
            identity = deadlines.IdentityPause(
                requested_on=_date.fromisoformat(id_requested),
                received_on=_date.fromisoformat(id_received) if id_received else None, reason=id_reason)
        result = deadlines.compute_due(instant, [l.strip() for l in labels.split(",") if l.strip()],
                                       policy, identity=identity)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))


@main.command()
@click.option("--print", "do_print", is_flag=True, help="Print the text part(s).")
@click.option("--send", is_flag=True, help="Queue today's digest for every staff member (once a day) and send.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Write the HTML part to FILE.")
@click.option("--staff", "staff_address", default=None, help="Only this staff member.")
@click.option("--now", hidden=True)
@click.pass_context
def digest(ctx: click.Context, do_print: bool, send: bool, html_file: str | None,
           staff_address: str | None, now: str | None) -> None:
    """The daily staff digest of open cases, with reply and command links."""
    from .app import build_app
    from .digests import build_digest
    cfg = _load_config(ctx)
    if not (do_print or send or html_file):
        raise click.UsageError("give --print, --send or --html FILE")
    recipients = [staff_address.lower()] if staff_address else list(cfg.staff.addresses)
    if not recipients:
        raise click.ClickException("no staff addresses configured (staff.addresses)")
    if html_file and len(recipients) != 1:
        raise click.UsageError("--html writes one digest: add --staff ADDRESS")
    app = build_app(cfg, clock=_clock(now), classifier=_NoClassifier())
    if send:
        queued = app.digest()
        counts = app.send()
        click.echo(f"digest queued for {queued} staff member(s); {counts['sent']} mail(s) sent")
    if do_print or html_file:
        with app.store.read_session() as s:
            for address in recipients:
                mail = build_digest(s, cfg, app.intake.policy, address, app.clock())
                if do_print:
                    click.echo(f"To: {address}\nSubject: {mail.subject}\n\n{mail.text}")
                if html_file:
                    Path(html_file).write_text(mail.html or "", encoding="utf-8")
                    click.echo(f"wrote {html_file}")


@main.command()
@click.option("--week", default=None, help="ISO week, e.g. 2026-W48 (default: the last complete week).")
@click.option("--print", "do_print", is_flag=True, help="Print the text part.")
@click.option("--send", is_flag=True, help="Queue the summary for the supervisor (once a week) and send.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Write the HTML (chart embedded) to FILE.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False), help="Write the register of requests to FILE.")
@click.option("--now", hidden=True)
@click.pass_context
def summary(ctx: click.Context, week: str | None, do_print: bool, send: bool, html_file: str | None,
            csv_file: str | None, now: str | None) -> None:
    """The supervisor's weekly summary: figures, trend chart and the register as CSV."""
    from .app import build_app
    from . import summary as summary_mod
    cfg = _load_config(ctx)
    if not (do_print or send or html_file or csv_file):
        raise click.UsageError("give --print, --send, --html FILE or --csv FILE")
    app = build_app(cfg, clock=_clock(now), classifier=_NoClassifier())
    week = week or summary_mod.last_complete_week(app.clock(), cfg.tz)
    try:
        summary_mod.week_bounds(week, cfg.tz)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--week") from None
    if send:
        if not cfg.staff.supervisor:
            raise click.ClickException("no supervisor configured (staff.supervisor)")
        queued = app.weekly_summary(week)
        counts = app.send()
        click.echo(f"summary for {week} {'queued' if queued else 'was already sent'}; "
                   f"{counts['sent']} mail(s) sent")
    with app.store.read_session() as s:
        if do_print or html_file:
            if not cfg.staff.supervisor:
                raise click.ClickException("no supervisor configured (staff.supervisor)")
            mail = summary_mod.build_summary(s, cfg, app.intake.policy, week)
            if do_print:
                click.echo(f"Subject: {mail.subject}\n\n{mail.text}")
            if html_file:
                Path(html_file).write_text(mail.html_with_embedded_images(), encoding="utf-8")
                click.echo(f"wrote {html_file}")
        if csv_file:
            Path(csv_file).write_bytes(summary_mod.register_csv(summary_mod.register_rows(s, cfg, week)))
            click.echo(f"wrote {csv_file}")


@main.group()
def audit() -> None:
    """The tamper-evident case history."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit_verify(ctx: click.Context, as_json: bool) -> None:
    """Check every case's event chain; exits 1 naming any edited or deleted event."""
    from .app import open_store
    from .cases import verify_chain
    from .store import Case, CaseEvent
    from sqlalchemy import func as sa_func
    store = open_store(_load_config(ctx))
    with store.read_session() as s:
        problems = verify_chain(s)
        n_cases = s.execute(select(sa_func.count(Case.id))).scalar_one()
        n_events = s.execute(select(sa_func.count(CaseEvent.id))).scalar_one()
    if as_json:
        click.echo(json.dumps({"ok": not problems, "cases": n_cases, "events": n_events, "problems": problems}))
    else:
        for p in problems:
            click.echo(f"TAMPERED: {p}")
        if not problems:
            click.echo(f"audit trail intact: {n_events} events in {n_cases} cases")
    if problems:
        ctx.exit(1)


@main.group()
def messages() -> None:
    """Look at inbound messages."""


@messages.command("list")
@click.option("--disposition", default=None,
              type=click.Choice(["case_opened", "follow_up", "staff_reply", "screened", "held", "pending"]))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def messages_list(ctx: click.Context, disposition: str | None, as_json: bool) -> None:
    """Every inbound message with its disposition (and the rule or error that decided it)."""
    from .app import open_store
    from .store import Case, InboundMessage
    store = open_store(_load_config(ctx))
    with store.read_session() as s:
        q = select(InboundMessage, Case.ref).outerjoin(Case, Case.id == InboundMessage.case_id) \
            .order_by(InboundMessage.id)
        if disposition == "pending":
            q = q.where(InboundMessage.status == "received")
        elif disposition:
            q = q.where(InboundMessage.disposition == disposition)
        rows = [{"id": m.id, "received_at": m.received_at.isoformat(), "mailbox": m.mailbox,
                 "uid": m.uid, "message_id": m.message_id, "sender": m.sender,
                 "disposition": m.disposition or "pending", "rule": m.rule, "error": m.error,
                 "case": ref, "labels": m.labels, "language": m.language}
                for m, ref in s.execute(q)]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False))
        return
    for r in rows:
        detail = r["rule"] or (r["error"] or "")[:80] or r["case"] or ""
        click.echo(f"#{r['id']:<6} {r['received_at'][:19]} {r['disposition']:<12} {detail:<40} {r['sender'] or ''}")


@main.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--all-held", is_flag=True, help="Retry every held message.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def reprocess(ctx: click.Context, ids: tuple[int, ...], all_held: bool, as_json: bool) -> None:
    """Retry held messages (after a fix)."""
    from .app import build_app
    from .pipeline import reprocess as requeue
    if not ids and not all_held:
        raise click.UsageError("give message ids or --all-held")
    app = build_app(_load_config(ctx))
    queued = requeue(app.store, ids, all_held=all_held)
    report = app.intake.process_pending(ids=queued)
    counts = app.send()
    data = {"requeued": queued, "dispositions": report.dispositions, "held": report.held,
            "sent": counts["sent"]}
    _emit(data, as_json, lambda: click.echo(
        f"reprocessed {len(queued)} message(s): {report.dispositions}; still held: {report.held}"))


if __name__ == "__main__":  # pragma: no cover
    main()
