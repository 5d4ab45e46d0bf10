"""Postfix's smtp-sink as the benchmark's SMTP server: a real SMTP server in C, made for
measuring mail clients.

Why: the benchmark runs the bot, Dovecot and the SMTP server on the same CPUs. aiosmtpd, the
test suite's server, is pure Python and spends about 0.45 ms of CPU per mail (address parsing,
one asyncio step per line): on a 2-CPU machine that is CPU the bot does not get, and more than
the bot's whole SMTP client side. smtp-sink spends about 0.05 ms, as Dovecot does on the IMAP
side and as the MTA a deployment hands its mail to would. bench_intake.py reports the run with
each server it has.

smtp-sink comes with Debian's ``postfix`` package. Installing that package would set up and
start a mail system, so ``fetch()`` only downloads it (``apt-get download``) and unpacks it
under bench/.postfix/, which git ignores; ``find()`` also takes an installed one.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
UNPACKED = BENCH_DIR / ".postfix"


@dataclass(frozen=True)
class SinkBinary:
    path: Path
    library_dir: Path | None       # the unpacked package's libpostfix-*.so, else None

    def version(self) -> str:
        package = UNPACKED / "VERSION"
        return package.read_text().strip() if self.library_dir and package.is_file() else "installed"


def find() -> SinkBinary | None:
    for candidate in (shutil.which("smtp-sink"), "/usr/sbin/smtp-sink"):
        if candidate and Path(candidate).is_file():
            return SinkBinary(Path(candidate), None)
    unpacked = UNPACKED / "usr" / "sbin" / "smtp-sink"
    if unpacked.is_file():
        return SinkBinary(unpacked, UNPACKED / "usr" / "lib" / "postfix")
    return None


def fetch() -> SinkBinary | None:
    """Download Debian's postfix package and unpack it (nothing is installed or started)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="postfix-deb-") as tmp:
        got = subprocess.run(["apt-get", "download", "postfix"], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob("postfix_*.deb"))
        if got.returncode != 0 or not debs:
            return None
        shutil.rmtree(UNPACKED, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(UNPACKED)], check=True)
        (UNPACKED / "VERSION").write_text(debs[0].name.split("_")[1] + "\n")
    return find()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    rcpt_tos: tuple[str, ...]
    message_id: str


class SmtpSink:
    """``smtp-sink -D dump`` on a loopback port: accepts every mail and appends it, with its
    envelope, to one dump file, read back by ``messages()`` once the run is over."""

    name = "postfix smtp-sink"

    def __init__(self, binary: SinkBinary, host: str = "127.0.0.1") -> None:
        self.binary, self.host = binary, host
        self.port = _free_port(host)
        self._dir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
        self.dump = self._dir / "dump"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "SmtpSink":
        env = dict(os.environ)
        if self.binary.library_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                filter(None, [str(self.binary.library_dir), env.get("LD_LIBRARY_PATH")]))
        # -u: the user to run as (as root it would switch to "nobody", who may not write the
        # dump); 256: the listen backlog.
        self._process = subprocess.Popen(
            [str(self.binary.path), "-u", getpass.getuser(), "-D", str(self.dump),
             f"{self.host}:{self.port}", "256"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"smtp-sink exited: {self._process.stderr.read().decode(errors='replace')}")  # type: ignore[union-attr]
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start listening")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def cpu_seconds(self) -> float:
        assert self._process is not None
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def messages(self) -> list[Received]:
        """Every mail received so far: its recipients and Message-ID. Each dump record starts
        with smtp-sink's X-Client-Addr line; our acknowledgements contain no such line."""
        if not self.dump.exists():
            return []
        out: list[Received] = []
        for record in self.dump.read_text(errors="replace").split("X-Client-Addr: ")[1:]:
            head = record.split("\n\n", 1)[0]
            rcpts = tuple(line[len("X-Rcpt-Args: "):].strip().strip("<>") for line in head.splitlines()
                          if line.startswith("X-Rcpt-Args: "))
            message_id = next((line.split(":", 1)[1].strip() for line in head.splitlines()
                               if line.lower().startswith("message-id:")), "")
            out.append(Received(rcpts, message_id))
        return out
