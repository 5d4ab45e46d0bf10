"""The supervisor's weekly summary: figures for one ISO week, a trend chart, the register as CSV.

A week is Monday 00:00 to the next Monday 00:00 in the bot's time zone. Figures are computed
from the case history (status events), so a summary for a past week describes that week as
it ended, whatever happened since:

- *received*: cases whose ``received_at`` lies in the week;
- *closed*: cases resolved in the week, a resolution being a move from an open state to
  answered, closed or rejected (answered -> closed is not a second one);
- *open*: cases open at the end of the week;
- *on time*: resolved on or before the case's due date (local date), over all resolved;
- *time to acknowledge*: ``received_at`` -> ``sent_at`` of the ack, for acks sent in the week;
- *time to answer*: ``received_at`` -> the resolution, for resolutions in the week.

The mail goes to ``staff.supervisor`` once per week (dedupe key ``summary:<week>:<address>``),
with the chart inline (``cid:``) in the HTML part and the register attached as CSV. The
register names no requester.
"""
from __future__ import annotations

import base64
import csv
import io
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from email.message import EmailMessage
from typing import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import deadlines, outbox
from .cases import OPEN_STATES
from .config import Config
from .digests import already_queued, enqueue_once
from .lifecycle import LABELS
from .store import Case, CaseEvent, LabelCorrection, Outbox, Store

logger = logging.getLogger(__name__)

TEMPLATE = "weekly_summary"
TERMINAL_STATES = ("answered", "closed", "rejected")
TREND_WEEKS = 8
OLDEST_OPEN = 10
ID_PENDING_LONG_DAYS = 10          # deadlines.md §8: "ID requests pending longer than 10 days"
_ISO_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


# -- weeks ------------------------------------------------------------------------------------

def week_bounds(iso_week: str, tz: tzinfo) -> tuple[datetime, datetime]:
    """Monday 00:00 local of ``2026-W48`` and the next Monday 00:00 (end excluded)."""
    m = _ISO_WEEK.match(iso_week.strip())
    if not m:
        raise ValueError(f"not an ISO week like 2026-W48: {iso_week!r}")
    try:
        monday = date.fromisocalendar(int(m.group(1)), int(m.group(2)), 1)
    except ValueError:
        raise ValueError(f"{iso_week} does not exist") from None
    return _midnight(monday, tz), _midnight(monday + timedelta(days=7), tz)


def _midnight(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz)


def iso_week_of(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def last_complete_week(now: datetime, tz: tzinfo) -> str:
    """The ISO week that ended most recently before ``now`` (the scheduled job's default)."""
    today = now.astimezone(tz).date()
    return iso_week_of(today - timedelta(days=today.weekday() + 1))


def previous_weeks(iso_week: str, count: int) -> list[str]:
    """``count`` weeks ending with ``iso_week``, oldest first."""
    m = _ISO_WEEK.match(iso_week)
    if not m:
        raise ValueError(f"not an ISO week like 2026-W48: {iso_week!r}")
    monday = date.fromisocalendar(int(m.group(1)), int(m.group(2)), 1)
    return [iso_week_of(monday - timedelta(weeks=n)) for n in range(count - 1, -1, -1)]


# -- a case's history -------------------------------------------------------------------------

@dataclass
class History:
    """A case and its status changes, oldest first, beginning with ("new" at receipt)."""

    case: Case
    changes: list[tuple[datetime, str]]

    def status_at(self, t: datetime) -> str | None:
        """The state just before instant ``t`` (None if not yet received)."""
        state = None
        for at, status in self.changes:
            if at >= t:
                break
            state = status
        return state

    def is_open_at(self, t: datetime) -> bool:
        return self.status_at(t) in OPEN_STATES

    def resolutions(self) -> list[datetime]:
        """Moves from an open state to answered/closed/rejected."""
        out, previous = [], None
        for at, status in self.changes:
            if status in TERMINAL_STATES and previous not in TERMINAL_STATES:
                out.append(at)
            previous = status
        return out

    def resolution_in(self, start: datetime, end: datetime) -> datetime | None:
        return next((at for at in self.resolutions() if start <= at < end), None)

    def resolved_by(self, t: datetime) -> datetime | None:
        """When the case was last resolved, if it is resolved at ``t``."""
        if self.status_at(t) not in TERMINAL_STATES:
            return None
        return max((at for at in self.resolutions() if at < t), default=None)

    def entered(self, status: str) -> list[datetime]:
        return [at for at, s in self.changes if s == status]

    def spans(self, status: str) -> list[tuple[datetime, datetime | None]]:
        """Intervals spent in ``status`` (end None: still in it)."""
        out: list[tuple[datetime, datetime | None]] = []
        previous = None
        for i, (at, s) in enumerate(self.changes):
            if s == status and previous != status:
                end = next((a for a, s2 in self.changes[i + 1:] if s2 != status), None)
                out.append((at, end))
            previous = s
        return out


def _history(case: Case, events: Iterable[CaseEvent]) -> History:
    changes: list[tuple[datetime, str]] = [(case.received_at, "new")]
    for ev in events:
        status = (ev.new or {}).get("status")
        if status:
            changes.append((max(ev.at, case.received_at), str(status)))
    if len(changes) == 1 and case.status != "new":
        # No recorded transitions (data imported by hand): the best we know is the row itself.
        if case.status in TERMINAL_STATES and case.closed_at is not None:
            changes.append((case.closed_at, case.status))
        else:
            changes[0] = (case.received_at, case.status)
    return History(case, changes)


def load_histories(session: Session, before: datetime) -> list[History]:
    """Every case received before ``before`` with its status changes."""
    cases = list(session.execute(select(Case).where(Case.received_at < before)
                                 .order_by(Case.received_at, Case.id)).scalars())
    events: dict[int, list[CaseEvent]] = defaultdict(list)
    rows = session.execute(select(CaseEvent).join(Case, Case.id == CaseEvent.case_id)
                           .where(Case.received_at < before, CaseEvent.kind == "status")
                           .order_by(CaseEvent.at, CaseEvent.id)).scalars()
    for ev in rows:
        events[ev.case_id].append(ev)
    return [_history(c, events.get(c.id, ())) for c in cases]


# -- figures ----------------------------------------------------------------------------------

@dataclass
class Counts:
    received: int = 0
    closed: int = 0
    open: int = 0


@dataclass(frozen=True)
class CaseLine:
    ref: str
    labels: tuple[str, ...]
    status: str                  # at the end of the week
    language: str
    receipt_date: date
    due_date: date
    age_days: int                # from receipt to the end of the week
    days_overdue: int            # at the end of the week; 0 when not overdue
    working_days_overdue: int    # the same on the controller calendar
    owner: str | None
    extended_due: date | None
    first_due_date: date | None  # before any extension
    since: date | None = None    # paused cases: when the pause began


@dataclass(frozen=True)
class WeekCount:
    week: str
    received: int
    closed: int


@dataclass
class SummaryFigures:
    week: str
    start: datetime
    end: datetime
    received: int
    closed: int
    open: int
    by_label: dict[str, Counts]
    by_language: dict[str, Counts]
    open_by_status: dict[str, int]
    on_time: int
    on_time_rate: float | None            # None when nothing was resolved
    ack_count: int
    ack_median: timedelta | None
    ack_p90: timedelta | None
    answer_count: int
    answer_median: timedelta | None
    answer_p90: timedelta | None
    overdue: list[CaseLine]
    extended: list[CaseLine]              # extended during the week
    extended_open: int                    # open and extended at the end of the week
    paused: list[CaseLine]                # awaiting identity at some point in the week
    id_pending_long: list[CaseLine]       # awaiting identity > 10 days at the end of the week
    complaints: list[CaseLine]            # received in the week or open at its end
    reclassifications: int
    reclassified_cases: int
    reclassification_pairs: list[tuple[str, str, int]]   # (from, to, count), most first
    oldest_open: list[CaseLine]
    trend: list[WeekCount] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); ``q`` in [0, 1]."""
    if not values:
        raise ValueError("percentile of nothing")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _median_p90(durations: list[timedelta]) -> tuple[timedelta | None, timedelta | None]:
    if not durations:
        return None, None
    seconds = [d.total_seconds() for d in durations]
    return (timedelta(seconds=round(percentile(seconds, 0.5))),
            timedelta(seconds=round(percentile(seconds, 0.9))))


def _line(h: History, end: datetime, tz: tzinfo, calendar: deadlines.Calendar,
          since: datetime | None = None) -> CaseLine:
    c, last_day = h.case, end.astimezone(tz).date()   # last_day: the Monday after the week
    late = c.due_date < last_day
    return CaseLine(ref=c.ref, labels=tuple(c.labels), status=h.status_at(end) or c.status,
                    language=c.language, receipt_date=c.receipt_date, due_date=c.due_date,
                    age_days=(last_day - c.receipt_date).days,
                    days_overdue=(last_day - c.due_date).days if late else 0,
                    working_days_overdue=deadlines.working_days_between(c.due_date, last_day, calendar)
                    if late else 0,
                    owner=c.owner,
                    extended_due=c.extended_due, first_due_date=c.first_due_date,
                    since=since.astimezone(tz).date() if since else None)


def _on_time(h: History, resolved_at: datetime, tz: tzinfo) -> bool:
    return resolved_at.astimezone(tz).date() <= h.case.due_date


def _tally(histories: list[History], start: datetime, end: datetime
           ) -> tuple[dict[str, Counts], dict[str, Counts]]:
    by_label: dict[str, Counts] = {label: Counts() for label in LABELS}
    by_language: dict[str, Counts] = defaultdict(Counts)
    for h in histories:
        c = h.case
        received = start <= c.received_at < end
        closed = h.resolution_in(start, end) is not None
        still_open = h.is_open_at(end)
        for bucket in [by_label.setdefault(label, Counts()) for label in c.labels] + \
                [by_language[c.language or "und"]]:
            bucket.received += int(received)
            bucket.closed += int(closed)
            bucket.open += int(still_open)
    languages = dict(sorted(by_language.items(), key=lambda kv: (-kv[1].received, -kv[1].open, kv[0])))
    return by_label, languages


def _ack_durations(session: Session, start: datetime, end: datetime) -> list[timedelta]:
    rows = session.execute(
        select(Case.received_at, Outbox.sent_at).join(Outbox, Outbox.case_id == Case.id)
        .where(Outbox.kind == "ack", Outbox.sent_at.is_not(None), Outbox.sent_at >= start,
               Outbox.sent_at < end)).all()
    return [max(sent - received, timedelta(0)) for received, sent in rows if sent is not None]


def _reclassifications(session: Session, start: datetime, end: datetime
                       ) -> tuple[int, int, list[tuple[str, str, int]]]:
    rows = list(session.execute(select(LabelCorrection).where(
        LabelCorrection.at >= start, LabelCorrection.at < end)).scalars())
    pairs = Counter((",".join(r.old_labels), ",".join(r.new_labels)) for r in rows)
    ordered = sorted(((a, b, n) for (a, b), n in pairs.items()), key=lambda p: (-p[2], p[0], p[1]))
    return len(rows), len({r.case_id for r in rows}), ordered


def trend(histories: list[History], week: str, tz: tzinfo, weeks: int = TREND_WEEKS) -> list[WeekCount]:
    out = []
    for w in previous_weeks(week, weeks):
        start, end = week_bounds(w, tz)
        received = sum(1 for h in histories if start <= h.case.received_at < end)
        closed = sum(1 for h in histories if h.resolution_in(start, end) is not None)
        out.append(WeekCount(w, received, closed))
    return out


def compute_summary(session: Session, cfg: Config, policy: deadlines.Policy, week: str) -> SummaryFigures:
    """The figures of the summary for ``week`` (e.g. ``2026-W48``)."""
    tz = cfg.tz
    start, end = week_bounds(week, tz)
    histories = load_histories(session, end)
    last_day = end.date()
    cal = policy.controller_holidays()

    by_label, by_language = _tally(histories, start, end)
    resolved = [(h, at) for h in histories if (at := h.resolution_in(start, end)) is not None]
    open_at_end = [h for h in histories if h.is_open_at(end)]
    on_time = sum(1 for h, at in resolved if _on_time(h, at, tz))
    acks = _ack_durations(session, start, end)
    ack_median, ack_p90 = _median_p90(acks)
    answer_median, answer_p90 = _median_p90([at - h.case.received_at for h, at in resolved])
    n_reclass, n_reclass_cases, pairs = _reclassifications(session, start, end)

    paused: list[CaseLine] = []
    for h in histories:
        spans = [s for s in h.spans("awaiting_identity") if s[0] < end and (s[1] is None or s[1] > start)]
        if spans:
            paused.append(_line(h, end, tz, cal, since=spans[-1][0]))
    pending_long = [p for p in paused if p.status == "awaiting_identity" and p.since is not None
                    and (last_day - p.since).days > ID_PENDING_LONG_DAYS]
    extended = [_line(h, end, tz, cal) for h in histories
                if any(start <= at < end for at in h.entered("extended"))]
    complaints = [_line(h, end, tz, cal) for h in histories if "complaint" in h.case.labels
                  and (start <= h.case.received_at < end or h.is_open_at(end))]
    overdue = sorted((_line(h, end, tz, cal) for h in open_at_end if h.case.due_date < last_day),
                     key=lambda line: (line.due_date, line.ref))
    oldest = sorted(open_at_end, key=lambda h: (h.case.received_at, h.case.id))[:OLDEST_OPEN]

    return SummaryFigures(
        week=week, start=start, end=end,
        received=sum(1 for h in histories if start <= h.case.received_at < end),
        closed=len(resolved), open=len(open_at_end),
        by_label=by_label, by_language=by_language,
        open_by_status=dict(Counter(h.status_at(end) or "" for h in open_at_end)),
        on_time=on_time, on_time_rate=(on_time / len(resolved)) if resolved else None,
        ack_count=len(acks), ack_median=ack_median, ack_p90=ack_p90,
        answer_count=len(resolved), answer_median=answer_median, answer_p90=answer_p90,
        overdue=overdue, extended=sorted(extended, key=lambda line: line.ref),
        extended_open=sum(1 for h in open_at_end if h.status_at(end) == "extended"),
        paused=sorted(paused, key=lambda line: line.ref), id_pending_long=pending_long,
        complaints=sorted(complaints, key=lambda line: line.ref),
        reclassifications=n_reclass, reclassified_cases=n_reclass_cases,
        reclassification_pairs=pairs,
        oldest_open=[_line(h, end, tz, cal) for h in oldest],
        trend=trend(histories, week, tz))


# -- the register (CSV) -----------------------------------------------------------------------

REGISTER_COLUMNS = ("case_id", "received", "receipt_date", "labels", "language", "status",
                    "due_date", "extended_due", "closed_at", "on_time")


def register_rows(session: Session, cfg: Config, week: str) -> list[dict[str, str]]:
    """One row per case received in the week, as it stood at the end of the week."""
    tz = cfg.tz
    start, end = week_bounds(week, tz)
    rows = []
    for h in load_histories(session, end):
        c = h.case
        if not start <= c.received_at < end:
            continue
        resolved_at = h.resolved_by(end)
        if resolved_at is not None:
            on_time = "yes" if _on_time(h, resolved_at, tz) else "no"
        else:
            on_time = "no" if c.due_date < end.date() else ""   # already late, or still pending
        rows.append({
            "case_id": c.ref,
            "received": c.received_at.astimezone(tz).isoformat(timespec="seconds"),
            "receipt_date": c.receipt_date.isoformat(),
            "labels": ";".join(c.labels),
            "language": c.language,
            "status": h.status_at(end) or c.status,
            "due_date": c.due_date.isoformat(),
            "extended_due": c.extended_due.isoformat() if c.extended_due else "",
            "closed_at": resolved_at.astimezone(tz).isoformat(timespec="seconds") if resolved_at else "",
            "on_time": on_time,
        })
    return rows


def register_csv(rows: list[dict[str, str]]) -> bytes:
    """UTF-8 with a byte-order mark, so that Excel in Japan opens it correctly."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REGISTER_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8-sig")


# -- the chart --------------------------------------------------------------------------------

_CJK_FONTS = ("Noto Sans CJK JP", "IPAexGothic", "IPAGothic", "IPAPGothic", "TakaoGothic",
              "VL Gothic", "Hiragino Sans", "Yu Gothic", "Meiryo")


def _cjk_font() -> str | None:
    from matplotlib import font_manager
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in _CJK_FONTS if name in installed), None)


def trend_chart_png(weeks: list[WeekCount], language: str = "en") -> bytes:
    """Bars of received and closed cases per week, as PNG bytes (Agg; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    font = _cjk_font() if language == "ja" else None
    if font:
        words = {"received": "受付", "closed": "完了", "title": f"週ごとの受付・完了件数（直近{len(weeks)}週）"}
    else:   # without a CJK font Japanese would print as boxes: English instead
        words = {"received": "received", "closed": "closed",
                 "title": f"Cases received and closed per week (last {len(weeks)} weeks)"}
    fig = Figure(figsize=(7.2, 3.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(range(len(weeks)))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [w.received for w in weeks], width, label=words["received"],
           color="#0969da")
    ax.bar([x + width / 2 for x in xs], [w.closed for w in weeks], width, label=words["closed"],
           color="#1f883d")
    ax.set_xticks(xs, [w.week.replace("-W", "\nW") for w in weeks], fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(words["title"], fontsize=10, fontfamily=font)
    ax.legend(fontsize=8, frameon=False, prop={"family": font, "size": 8} if font else None)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- the mail ---------------------------------------------------------------------------------

@dataclass
class MailWithInlineImages(outbox.OutgoingMail):
    """An OutgoingMail whose HTML part carries related images, referenced as ``cid:<id>``.

    Text attachments are also labelled ``charset=utf-8`` (without it readers assume ASCII).
    Both belong in ``outbox.OutgoingMail.build`` itself; kept here until then.
    """

    inline_images: list[tuple[str, str, bytes]] = field(default_factory=list)   # cid, mime, data

    def build(self) -> EmailMessage:
        msg = super().build()
        for part in msg.iter_attachments():
            if part.get_content_maintype() == "text" and part.get_param("charset") is None:
                part.set_param("charset", "utf-8")
        if not self.inline_images:
            return msg
        html = next(p for p in msg.walk() if p.get_content_type() == "text/html")
        for cid, mime, data in self.inline_images:
            maintype, _, subtype = mime.partition("/")
            # turns the HTML part into multipart/related(html, image...) in place
            html.add_related(data, maintype=maintype, subtype=subtype, cid=f"<{cid}>")
        return msg

    def html_with_embedded_images(self) -> str:
        """The HTML with ``cid:`` references replaced by data: URIs (for a file or a browser)."""
        html = self.html or ""
        for cid, mime, data in self.inline_images:
            html = html.replace(f"cid:{cid}", f"data:{mime};base64,{base64.b64encode(data).decode()}")
        return html


def _duration(d: timedelta | None, language: str) -> str:
    if d is None:
        return "–"
    minutes = d.total_seconds() / 60
    ja = language == "ja"
    if minutes < 60:
        return f"{minutes:.0f}分" if ja else f"{minutes:.0f} min"
    if minutes < 48 * 60:
        return f"{minutes / 60:.1f}時間" if ja else f"{minutes / 60:.1f} h"
    return f"{minutes / 1440:.1f}日" if ja else f"{minutes / 1440:.1f} days"


def summary_subject(f: SummaryFigures, language: str) -> str:
    if language == "ja":
        return f"週次サマリー {f.week}: 受付 {f.received} 件・完了 {f.closed} 件・未完了 {f.open} 件"
    return f"Weekly summary {f.week}: {f.received} received, {f.closed} closed, {f.open} open"


def summary_context(cfg: Config, f: SummaryFigures, language: str, chart_src: str) -> dict[str, object]:
    return {
        "subject": summary_subject(f, language), "organisation": cfg.bot.organisation,
        "bot_address": cfg.bot.address, "f": f, "chart_src": chart_src,
        "first_day": f.start.date(), "last_day": f.end.date() - timedelta(days=1),
        "on_time_pct": "–" if f.on_time_rate is None else f"{f.on_time_rate * 100:.0f}%",
        "ack_median": _duration(f.ack_median, language), "ack_p90": _duration(f.ack_p90, language),
        "answer_median": _duration(f.answer_median, language),
        "answer_p90": _duration(f.answer_p90, language),
        "id_pending_days": ID_PENDING_LONG_DAYS,
    }


def build_summary(session: Session, cfg: Config, policy: deadlines.Policy, week: str) -> MailWithInlineImages:
    """The summary mail for ``week`` to the supervisor, in their language."""
    supervisor = cfg.staff.supervisor
    if not supervisor:
        raise ValueError("no supervisor configured (staff.supervisor)")
    figures = compute_summary(session, cfg, policy, week)
    language = outbox.template_language(TEMPLATE, cfg.staff_language(supervisor))
    chart = trend_chart_png(figures.trend, language)
    cid = f"trend-{week}@{cfg.domain}"
    context = summary_context(cfg, figures, language, f"cid:{cid}")
    text, html = outbox.render(TEMPLATE, language, context)
    register = register_csv(register_rows(session, cfg, week))
    return MailWithInlineImages(
        kind="summary", sender=cfg.bot.address, sender_name="inbox-bot", recipient=supervisor,
        subject=str(context["subject"]), text=text, html=html, domain=cfg.domain,
        id_hint=f"summary-{week}", template=f"{TEMPLATE}.{language}",
        attachments=[(f"register-{week}.csv", "text/csv", register)],
        inline_images=[(cid, "image/png", chart)])


def summary_dedupe_key(week: str, supervisor: str) -> str:
    return f"summary:{week}:{supervisor.lower()}"


def send_summary(store: Store, cfg: Config, policy: deadlines.Policy, now: datetime,
                 week: str | None = None) -> bool:
    """Queue the summary for ``week`` (default: the last complete week) unless already queued."""
    supervisor = cfg.staff.supervisor
    if not supervisor:
        logger.warning("summary: no staff.supervisor configured; nothing sent")
        return False
    week = week or last_complete_week(now, cfg.tz)
    key = summary_dedupe_key(week, supervisor)
    with store.session() as s, s.begin():
        if already_queued(s, key):
            return False
        queued = enqueue_once(s, build_summary(s, cfg, policy, week), key, now)
    if queued:
        logger.info("summary: queued the weekly summary for %s", week)
    return queued


def summary_due(cfg: Config, now: datetime) -> bool:
    """Whether this week's summary time has passed (a catch-up run after downtime may send it)."""
    local = now.astimezone(cfg.tz)
    weekday = ("mon", "tue", "wed", "thu", "fri", "sat", "sun").index(cfg.staff.summary_weekday)
    hour, minute = (int(x) for x in cfg.staff.summary_time.split(":"))
    return (local.weekday(), local.hour, local.minute) >= (weekday, hour, minute)
