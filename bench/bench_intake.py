"""Benchmark the intake end to end against a bare fetch+parse floor (intake acceptance "h").

    .venv/bin/python bench/bench_intake.py [--n 10000] [--batch 500] [--model DIR]
                                           [--smtp sink,aiosmtpd] [--set SECTION_KEY=VALUE]
                                           [--json] [--check] [--profile FILE.prof]

Starts a private Dovecot and the SMTP servers (``--smtp``: Postfix's smtp-sink, see
smtp_sink.py, and aiosmtpd from tests/servers.py), MULTIAPPENDs ``--n`` generated inquiries
(70 % English, 20 % Japanese split between ISO-2022-JP and Shift_JIS, 10 % German; every
sender and Message-ID unique) and measures:

1. the floor: one IMAP connection, UID FETCH (BODY.PEEK[] INTERNALDATE) in batches and
   ``inbox_bot.parse.parse()`` of every message; no database, no classification, and the
   mailbox is examined read-only so the messages stay in INBOX, unseen;
2. end to end, once per SMTP server, each on its own copy of the mailbox: ``inbox-bot run
   --once`` as a child process (SQLite in a temp dir), its wall clock, the peak memory of its
   process tree, the CPU of each of its processes and of the servers, then the cases in the
   database and the acknowledgements the SMTP server received. The first server's figures
   lead; the others follow under "with <server>".

The fixed cost of a run (imports, model load, migrations, logins) is measured separately with
``run --once`` on an empty mailbox and reported as ``startup_s`` / ``startup_peak_rss_mb``.

Exit status: 1 when the case or acknowledgement count is not ``--n`` or a run failed; with
``--check`` also when a target (ratio >= 0.5, memory <= 400 MB) is missed; 2 when Dovecot
is not installed. ``--profile`` runs end to end in-process (``build_app(cfg).run_once()``)
under cProfile instead of as a child, writes the stats and prints the top functions.
Environment: ``BENCH_PY_SPY=FILE`` runs the bot under ``py-spy record --subprocesses`` (raw
stacks to FILE); ``BENCH_KEEP_LOG=FILE`` keeps the bot's log (the last run's).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import logging
import os
import pstats
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from imapclient import IMAPClient  # noqa: E402

from bench import smtp_sink  # noqa: E402
from tests import mailgen  # noqa: E402
from tests.e2e import write_config  # noqa: E402
from tests.servers import DovecotServer, ImapAccount, SmtpServer, find_dovecot  # noqa: E402

logger = logging.getLogger("bench_intake")

TARGETS = {"ratio": 0.5, "peak_rss_mb": 400.0}
USER, PASSWORD = "bench", "bench-secret"
IDLE_USER = "idle"          # an empty mailbox for the startup measurement
FOLDER = "INBOX"


# --------------------------------------------------------------------------- the mailbox


def generate_messages(n: int) -> list[bytes]:
    """``n`` inquiries, interleaved 7:1:1:1 (en : ja ISO-2022-JP : ja Shift_JIS : de).

    Each generator derives the sender address and Message-ID from its index, so one global
    index per message keeps both unique across the whole set.
    """
    raws: list[bytes] = []
    for i in range(n):
        slot = i % 10
        if slot < 7:
            inquiry = mailgen.english(i)
        elif slot == 7:
            inquiry = mailgen.japanese(i, "iso-2022-jp")
        elif slot == 8:
            inquiry = mailgen.japanese(i, "shift_jis")
        else:
            inquiry = mailgen.german(i)
        raws.append(inquiry.raw)
    return raws


def load_mailbox(server: DovecotServer, raws: list[bytes], chunk: int, user: str = USER) -> float:
    """MULTIAPPEND everything into the user's INBOX; returns the seconds it took."""
    started = time.perf_counter()
    server.append_many(user, FOLDER, raws, chunk=chunk)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- the floor


@dataclass
class FloorResult:
    messages: int
    seconds: float
    languages: dict[str, int]


def measure_floor(account: ImapAccount, batch: int) -> FloorResult:
    """Connect, examine INBOX read-only, fetch in batches and parse every message.

    parse() loads its language models on first use (about 1.5 s); that is a fixed cost like
    the bot's start-up, so it is paid before the clock starts and the floor is a rate.
    """
    from inbox_bot.parse import parse

    for raw in generate_messages(10):
        parse(raw)
    languages: Counter[str] = Counter()
    parsed = 0
    started = time.perf_counter()
    client = IMAPClient(account.host, account.port, ssl=False, timeout=60)
    try:
        client.login(account.username, account.password)
        client.select_folder(FOLDER, readonly=True)   # EXAMINE: no flag can change
        uids = sorted(client.search("ALL"))
        for start in range(0, len(uids), batch):
            response = client.fetch(uids[start:start + batch], ["BODY.PEEK[]", "INTERNALDATE"])
            for data in response.values():
                raw = data.get(b"BODY[]")
                if raw is None:   # an unsolicited FETCH (flag change) carries no body
                    continue
                languages[parse(bytes(raw)).language] += 1
                parsed += 1
    finally:
        client.logout()
    return FloorResult(parsed, time.perf_counter() - started, dict(sorted(languages.items())))


# --------------------------------------------------------------------------- end to end


@dataclass
class ChildRun:
    returncode: int
    seconds: float
    peak_rss_mb: float
    stdout: str
    stderr_tail: str
    cpu_s: float = 0.0               # user+system of the bot and the children it reaped
    peak_tree_pss_mb: float = 0.0    # the whole process tree (bot, workers, sender), sampled
    tree_processes: int = 0
    cpu_by_process: dict[str, float] | None = None
    peak_rss_by_process: dict[str, float] | None = None


def session_cpu(dovecot: Any) -> float:
    """CPU seconds of the Dovecot instance: every process of its session, with the reaped
    children of each (an imap process per connection ends with its connection)."""
    from tests.servers import _session_pids
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _session_pids(dovecot._process.pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])      # utime stime cutime cstime
    return total / ticks


def _own_cpu() -> float:
    """This process's CPU seconds: the aiosmtpd server thread (and the samplers)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class TreeMemory:
    """Samples the proportional set size (PSS) of a process and all its descendants twice a
    second and keeps the peak of the sum. PSS shares each page among the processes mapping it,
    so forked workers sharing the models copy-on-write are not counted twice (a sum of RSS
    would be); the sum is what the tree really occupies."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mb, self.processes = pid, 0.0, 0
        # Last CPU seconds seen per process, and its name (the bot names its workers
        # "inbox-bot-work" and its sender "inbox-bot-send"): where the CPU went.
        self.cpu: dict[int, tuple[str, float]] = {}
        self.hwm_kb: dict[int, int] = {}        # peak RSS (VmHWM) per process
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def _run(self) -> None:
        # Reading smaps_rollup walks the page tables: a few milliseconds for a big process,
        # so sample twice a second and look for new children every two seconds.
        pids: list[int] = []
        for tick in itertools.count():
            if self._stop.wait(0.5):
                return
            if tick % 4 == 0:
                pids = self._tree()
            total = 0
            for pid in pids:
                try:
                    head, _, tail = Path(f"/proc/{pid}/stat").read_text().rpartition(")")
                    fields = tail.split()
                    self.cpu[pid] = (head.partition("(")[2],
                                     (int(fields[11]) + int(fields[12])) / self._ticks)
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.hwm_kb[pid] = int(line.split()[1])
                            break
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
                            break
                except OSError:
                    continue
            if total / 1024 > self.peak_mb:
                self.peak_mb, self.processes = total / 1024, len(pids)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_by_name(self) -> dict[str, float]:
        """CPU seconds per process name, as last sampled (up to half a second short for a
        process that ended between samples; the bot's own total comes from wait4)."""
        out: Counter[str] = Counter()
        for pid, (name, seconds) in self.cpu.items():
            out["main" if pid == self.pid else name] += seconds
        return {name: round(seconds, 2) for name, seconds in sorted(out.items())}

    def peak_rss_by_name(self) -> dict[str, float]:
        """Peak RSS in MB per process name (the largest one of a name)."""
        out: dict[str, float] = {}
        for pid, kb in self.hwm_kb.items():
            name = "main" if pid == self.pid else self.cpu.get(pid, ("?", 0.0))[0]
            out[name] = max(out.get(name, 0.0), round(kb / 1024, 1))
        return dict(sorted(out.items()))


def bot_settings(n: int) -> dict[str, Any]:
    """Extra [bot] keys for write_config: no budget may withhold one of the ``n`` acks.

    write_config already sets sender_budget = 50 (every sender here writes once) and
    horizon_days = 30 (INTERNALDATE is the time of the append); the global budget is raised.
    """
    return {"global_budget": max(500, 2 * n)}


def child_environment(batch: int, model: Path | None,
                      settings: list[str] | None = None) -> dict[str, str]:
    """The caller's environment minus stray INBOX_BOT_* settings, plus the fetch batch size,
    the classifier model (when not the shipped one) and ``settings`` ("SECTION_KEY=VALUE",
    e.g. "SMTP_CONNECTIONS=2", to compare configurations)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOX_BOT_")}
    env["INBOX_BOT_MAILBOX_BATCH_SIZE"] = str(batch)   # same batches as the floor
    for setting in settings or []:
        name, _, value = setting.partition("=")
        env[f"INBOX_BOT_{name.upper()}"] = value
    if model is not None:
        env["INBOX_BOT_MODEL"] = str(model.resolve())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("inbox-bot")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "inbox_bot.cli"]
    spy = os.environ.get("BENCH_PY_SPY")   # collapsed stacks of the bot and its children
    if spy:
        command = ["py-spy", "record", "--subprocesses", "--format", "raw", "--rate", "250",
                   "-o", spy, "--", *command]
    return command


def run_child(config: Path, env: dict[str, str], log_level: str, timeout: float) -> ChildRun:
    """``inbox-bot run --once --json``; wall clock and the child's own ru_maxrss via wait4.

    wait4 reports exactly this child (RUSAGE_CHILDREN would be the maximum over every child
    ever waited for). Output goes to files: a full pipe would stall the child and the clock.
    """
    cmd = [*cli_command(), "--config", str(config), "--log-level", log_level, "run", "--once", "--json"]
    out_path, err_path = config.with_suffix(".stdout"), config.with_suffix(".stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=config.parent, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        memory = TreeMemory(proc.pid)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:   # Ctrl-C / SIGTERM: leave no bot behind (Popen reaps it)
            proc.kill()
            proc.wait()
            raise
        finally:
            watchdog.cancel()
            memory.stop()
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here, not by Popen
    keep = os.environ.get("BENCH_KEEP_LOG")      # the bot's whole log, e.g. for its timeline
    if keep:
        shutil.copyfile(err_path, keep)
    stderr_lines = err_path.read_text(errors="replace").splitlines()
    return ChildRun(proc.returncode, seconds, usage.ru_maxrss / 1024,   # KiB on Linux
                    out_path.read_text(errors="replace"), "\n".join(stderr_lines[-20:]),
                    cpu_s=usage.ru_utime + usage.ru_stime, peak_tree_pss_mb=memory.peak_mb,
                    tree_processes=memory.processes, cpu_by_process=memory.cpu_by_name(),
                    peak_rss_by_process=memory.peak_rss_by_name())


def run_in_process(config: Path, env: dict[str, str], log_level: str, profile_path: Path,
                   top: int) -> tuple[float, str, str]:
    """``build_app(cfg).run_once()`` under cProfile; returns (seconds, report JSON, top list).

    The bot logs to a file at ``log_level``, as the child would: same logging cost, quiet
    terminal.
    """
    from inbox_bot import config as config_mod
    from inbox_bot.app import build_app

    if "INBOX_BOT_MODEL" in env:   # read by Classifier.load from the process environment
        os.environ["INBOX_BOT_MODEL"] = env["INBOX_BOT_MODEL"]
    bot_logger = logging.getLogger("inbox_bot")
    bot_logger.setLevel(log_level.upper())
    bot_logger.propagate = False
    log_file = logging.FileHandler(config.with_suffix(".log"), encoding="utf-8")
    bot_logger.addHandler(log_file)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    try:
        cfg = config_mod.load(config, env)
        app = build_app(cfg)
        report = app.run_once()
        app.store.dispose()
    finally:
        profiler.disable()
        bot_logger.removeHandler(log_file)
        log_file.close()
    seconds = time.perf_counter() - started
    profiler.dump_stats(profile_path)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return seconds, json.dumps(report.__dict__, default=str), text.getvalue()


def count_cases(database: Path) -> int:
    """Cases in the bot's SQLite database (0 when the run never got as far as creating it)."""
    if not database.exists():
        return 0
    with closing(sqlite3.connect(database)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM cases").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def wait_for_acks(smtp: SmtpServer, expected: int, timeout: float = 2.0) -> int:
    """Every ack is recorded before its 250 reply, so this only guards against stragglers."""
    try:
        smtp.wait_for(expected, timeout=timeout)
    except TimeoutError:
        pass
    return len(smtp.messages)


# --------------------------------------------------------------------------- orchestration


@contextmanager
def terminated_cleanly() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so the servers and temp dirs are still cleaned up."""
    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class EndToEnd:
    """One ``run --once`` over the whole mailbox, against one SMTP server."""
    smtp_server: str
    seconds: float
    returncode: int
    report: dict[str, Any]
    peak_rss_mb: float | None
    tree_pss_mb: float | None
    cpu_s: float | None
    others_cpu: dict[str, Any]
    cases: int
    acks: int
    recipients: int
    left_in_inbox: int
    top_functions: str = ""


def open_smtp_server(kind: str, stack: ExitStack) -> Any:
    if kind == "aiosmtpd":
        server = stack.enter_context(SmtpServer())
        server.name = f"aiosmtpd {_version('aiosmtpd')}"
        return server
    binary = smtp_sink.find() or smtp_sink.fetch()
    if binary is None:
        return None
    sink = stack.enter_context(smtp_sink.SmtpSink(binary))
    sink.name = f"postfix smtp-sink {binary.version()}"
    return sink


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


def server_cpu(smtp: Any) -> float:
    """CPU seconds the SMTP server has used: smtp-sink is its own process; aiosmtpd is a
    thread of this one (with the samplers, a few per cent of it)."""
    return smtp.cpu_seconds() if isinstance(smtp, smtp_sink.SmtpSink) else _own_cpu()


def received(smtp: Any, expected: int) -> tuple[int, int]:
    """(mails, distinct recipient lists) the server has."""
    if isinstance(smtp, smtp_sink.SmtpSink):
        mails = smtp.messages()
        return len(mails), len({m.rcpt_tos for m in mails})
    acks = wait_for_acks(smtp, expected)
    return acks, len({m.rcpt_tos for m in smtp.messages})


def run_end_to_end(args: argparse.Namespace, dovecot: Any, smtp: Any, user: str, work: Path,
                   env: dict[str, str], settings: dict[str, Any]) -> EndToEnd:
    account = dovecot.add_user(user, PASSWORD)
    load_mailbox(dovecot, generate_messages(args.n), args.append_chunk, user)
    e2e_dir = _subdir(work, user)
    config = write_config(e2e_dir, account, smtp, **settings)
    peak_rss_mb: float | None = None
    others_cpu: dict[str, Any] = {}
    tree_pss_mb: float | None = None
    cpu_s: float | None = None
    top_functions = ""
    if args.profile:
        seconds, report_json, top_functions = run_in_process(config, env, args.log_level,
                                                             args.profile, args.top)
        returncode = 0          # in-process: RSS is the bench's, not the bot's
    else:
        # An imap process's CPU is added to its parent's when the parent reaps it: let the
        # processes of the earlier logins end first, or this run would be charged for them.
        time.sleep(1.0)
        dovecot_cpu_before = session_cpu(dovecot)
        server_cpu_before = server_cpu(smtp)
        child = run_child(config, env, args.log_level, args.timeout)
        others_cpu = {"dovecot_cpu_s": round(session_cpu(dovecot) - dovecot_cpu_before, 2),
                      "smtp_server_cpu_s": round(server_cpu(smtp) - server_cpu_before, 2),
                      "bot_cpu_by_process_s": child.cpu_by_process,
                      "peak_rss_by_process_mb": child.peak_rss_by_process}
        seconds, report_json, returncode = child.seconds, child.stdout, child.returncode
        peak_rss_mb, tree_pss_mb, cpu_s = child.peak_rss_mb, child.peak_tree_pss_mb, child.cpu_s
        if returncode != 0:
            logger.error("run --once exited %d:\n%s", returncode, child.stderr_tail)
    acks, recipients = received(smtp, args.n)
    logger.info("end to end with %s: %.2f s", smtp.name, seconds)
    return EndToEnd(smtp.name, seconds, returncode, _last_json_line(report_json), peak_rss_mb,
                    tree_pss_mb, cpu_s, others_cpu, count_cases(e2e_dir / "inbox-bot.sqlite3"),
                    acks, recipients, len(dovecot.list_uids(user, FOLDER)), top_functions)


def run_benchmark(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Returns the figures and the list of failed checks."""
    failures: list[str] = []
    runs: list[EndToEnd] = []
    with ExitStack() as stack:
        stack.enter_context(terminated_cleanly())
        dovecot = stack.enter_context(DovecotServer(tls=False))
        servers = {kind: open_smtp_server(kind, stack) for kind in args.smtp}
        for kind in [k for k, server in servers.items() if server is None]:
            logger.warning("no smtp-sink (Debian's postfix package could not be fetched); "
                           "skipping the run against it")
            del servers[kind]
        if not servers:
            raise SystemExit("no SMTP server to run against")
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-intake-")))
        account = dovecot.add_user(USER, PASSWORD)
        idle = dovecot.add_user(IDLE_USER, PASSWORD)

        raws = generate_messages(args.n)
        load_s = load_mailbox(dovecot, raws, args.append_chunk)
        mailbox_mb = sum(map(len, raws)) / 1e6
        del raws
        logger.info("loaded %d messages (%.1f MB) in %.1f s", args.n, mailbox_mb, load_s)

        floor = measure_floor(account, args.batch)
        if floor.messages != args.n:
            failures.append(f"floor parsed {floor.messages} of {args.n} messages")
        logger.info("floor: %d messages in %.2f s", floor.messages, floor.seconds)

        env = child_environment(args.batch, args.model, args.set)
        settings = bot_settings(args.n)
        primary = next(iter(servers.values()))
        startup = run_child(write_config(_subdir(work, "idle"), idle, primary, **settings), env,
                            args.log_level, args.timeout)
        if startup.returncode != 0:
            failures.append(f"run --once on the empty mailbox exited {startup.returncode}")
        logger.info("startup (empty mailbox): %.2f s", startup.seconds)

        for kind, smtp in servers.items():
            run = run_end_to_end(args, dovecot, smtp, f"e2e-{kind}", work, env, settings)
            runs.append(run)
            if run.returncode != 0:
                failures.append(f"run --once against {run.smtp_server} exited {run.returncode}")
            if run.cases != args.n:
                failures.append(f"{run.smtp_server}: {run.cases} cases in the database, expected {args.n}")
            if run.acks != args.n or run.recipients != args.n:
                failures.append(f"{run.smtp_server} received {run.acks} acknowledgements for "
                                f"{run.recipients} recipients, expected {args.n}")

    floor_rate = floor.messages / floor.seconds
    main = runs[0]
    e2e_rate = args.n / main.seconds
    steady = main.seconds - startup.seconds
    report = main.report
    results: dict[str, Any] = {
        "n": args.n,
        "mix": floor.languages,
        "mailbox_mb": round(mailbox_mb, 1),
        "fetch_batch": args.batch,
        "load_s": round(load_s, 2),
        "floor_s": round(floor.seconds, 2),
        "floor_msgs_per_s": round(floor_rate, 1),
        "smtp_server": main.smtp_server,
        "e2e_s": round(main.seconds, 2),
        "e2e_msgs_per_s": round(e2e_rate, 1),
        "ratio": round(e2e_rate / floor_rate, 3),
        "startup_s": round(startup.seconds, 2),
        "startup_peak_rss_mb": round(startup.peak_rss_mb, 1),
        "e2e_after_startup_msgs_per_s": round(args.n / steady, 1) if steady > 0 else None,
        "ratio_after_startup": round(args.n / steady / floor_rate, 3) if steady > 0 else None,
        "peak_rss_mb": None if main.peak_rss_mb is None else round(main.peak_rss_mb, 1),
        "peak_tree_pss_mb": None if main.tree_pss_mb is None else round(main.tree_pss_mb, 1),
        "bot_cpu_s": None if main.cpu_s is None else round(main.cpu_s, 2),
        # The servers run on the same machine and take their share of the CPUs.
        **main.others_cpu,
        "mode": "in-process cProfile" if args.profile else "subprocess",
        # Other load on the machine skews every rate above: say how busy it was.
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "journaled": report.get("journaled"),
        "processed": report.get("processed"),
        "dispositions": report.get("dispositions"),
        "held": len(report.get("held") or []),
        "sent_by_run": report.get("sent"),
        "cases": main.cases,
        "acks_received": main.acks,
        "ack_recipients": main.recipients,
        "left_in_inbox": main.left_in_inbox,
    }
    # The same run against each further SMTP server, for comparison.
    for other in runs[1:]:
        results[f"with {other.smtp_server}"] = {
            "e2e_s": round(other.seconds, 2),
            "ratio": round(args.n / other.seconds / floor_rate, 3),
            "bot_cpu_s": None if other.cpu_s is None else round(other.cpu_s, 2),
            **other.others_cpu,
            "peak_tree_pss_mb": None if other.tree_pss_mb is None else round(other.tree_pss_mb, 1),
            "cases": other.cases, "acks_received": other.acks}
    if main.top_functions:
        results["profile"] = str(args.profile)
        print(main.top_functions, file=sys.stderr)
    return results, failures


def missed_targets(results: dict[str, Any]) -> list[str]:
    missed = []
    if results["ratio"] < TARGETS["ratio"]:
        missed.append(f"ratio {results['ratio']} < {TARGETS['ratio']}")
    rss = results["peak_rss_mb"]
    if rss is not None and rss > TARGETS["peak_rss_mb"]:
        missed.append(f"peak RSS {rss} MB > {TARGETS['peak_rss_mb']} MB")
    # The bot forks workers and a sender: the memory target holds for all of them together.
    tree = results.get("peak_tree_pss_mb")
    if tree is not None and tree > TARGETS["peak_rss_mb"]:
        missed.append(f"peak PSS of the process tree {tree} MB > {TARGETS['peak_rss_mb']} MB")
    return missed


def _server_list(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = set(kinds) - {"sink", "aiosmtpd"}
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown SMTP server(s): {', '.join(sorted(unknown)) or '(none)'}")
    return list(dict.fromkeys(kinds))


def _subdir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir()
    return path


def _last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _print_text(results: dict[str, Any]) -> None:
    for key, value in results.items():
        print(f"{key:<30} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="messages in the mailbox")
    parser.add_argument("--batch", type=int, default=500,
                        help="UIDs per FETCH, for the floor and (mailbox.batch_size) the bot")
    parser.add_argument("--append-chunk", type=int, default=500, help="messages per MULTIAPPEND")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="the bot's --log-level")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per bot run")
    parser.add_argument("--model", type=Path, default=None, metavar="DIR",
                        help="classifier model for the bot (default: the shipped model)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION_KEY=VALUE",
                        help="a bot setting for the runs, as INBOX_BOT_<SECTION_KEY> (repeatable)")
    parser.add_argument("--smtp", default="sink,aiosmtpd", type=_server_list,
                        help="SMTP servers to run end to end against, the first one's figures "
                             "on top: sink (Postfix's smtp-sink, see smtp_sink.py) and/or "
                             "aiosmtpd (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--profile", type=Path, default=None, metavar="FILE",
                        help="run end to end in-process under cProfile, stats to FILE")
    parser.add_argument("--top", type=int, default=30, help="functions listed with --profile")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch < 1 or args.append_chunk < 1:
        parser.error("--n, --batch and --append-chunk must be positive")
    # Progress lines from the bench itself; everything else (aiosmtpd says a line per SMTP
    # command) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logger.setLevel(logging.INFO)
    if find_dovecot() is None:
        print("dovecot not installed (apt-get install -y dovecot-imapd)", file=sys.stderr)
        return 2

    results, failures = run_benchmark(args)
    missed = missed_targets(results)
    results["targets_missed"] = missed
    results["failures"] = failures
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        _print_text(results)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if missed:
        print("targets missed: " + "; ".join(missed), file=sys.stderr)
    return 1 if failures or (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
