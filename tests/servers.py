"""Real mail servers for the test suite: a private Dovecot (IMAP) and an aiosmtpd SMTP server.

No mocks: tests talk to real protocol implementations over loopback. Load the fixtures from
``tests/conftest.py`` with ``from tests.servers import *``.

Dovecot notes (see /work/shared/docs/mail-testing.md): every instance gets its own base_dir,
state_dir, log and instance_name and no system conf.d, so it never touches a system instance;
mail processes run as nobody:nogroup when the suite runs as root; the instance is detached in
its own session and stopped by the PID in its master.pid, never by name.
"""
from __future__ import annotations

import atexit
import grp
import itertools
import mailbox
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from imapclient import IMAPClient

__all__ = [
    "DovecotServer",
    "ImapAccount",
    "ReceivedMail",
    "SelfSignedCertificate",
    "SmtpServer",
    "dovecot",
    "dovecot_user",
    "ensure_dovecot",
    "free_port",
    "make_self_signed_certificate",
    "private_dovecot",
    "smtp_server",
    "smtp_server_factory",
]

LOOPBACK = "127.0.0.1"
DOVECOT_CANDIDATES = ("/usr/sbin/dovecot",)
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now (the kernel picks it; tiny race accepted in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _imap_greets(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            return sock.recv(64).startswith(b"* OK")
    except OSError:
        return False


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class SelfSignedCertificate:
    """A throwaway CA plus a server certificate for localhost / 127.0.0.1 signed by it."""

    ca_path: Path     # trust anchor: give this to clients (ssl.create_default_context(cafile=))
    cert_path: Path   # server certificate
    key_path: Path    # server private key

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this test CA."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert_path), str(self.key_path))
        return context


def make_self_signed_certificate(directory: Path) -> SelfSignedCertificate:
    """Create a CA and a leaf certificate with openssl (EC keys: fast to generate).

    A separate CA (rather than one self-signed leaf) keeps strict X.509 verification happy.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is required to create test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, pem = directory / "server.key", directory / "server.csr", directory / "server.pem"
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid:always\n"
    )
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", *ec_key, "-keyout", ca_key, "-out", ca_pem, "-days", "2",
         "-subj", "/CN=inbox-bot test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-new", *ec_key, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key,
         "-CAcreateserial", "-out", pem, "-days", "2", "-extfile", extensions],
    ]
    for command in commands:
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return SelfSignedCertificate(ca_path=ca_pem, cert_path=pem, key_path=key)


# --------------------------------------------------------------------------- Dovecot


def find_dovecot() -> str | None:
    found = shutil.which("dovecot")
    if found:
        return found
    return next((path for path in DOVECOT_CANDIDATES if os.access(path, os.X_OK)), None)


def ensure_dovecot() -> str:
    """Return the dovecot binary, or skip the test with the reason (never installs anything).

    Set INBOX_BOT_REQUIRE_DOVECOT=1 (e.g. in CI) to turn the skip into a hard failure.
    """
    binary = find_dovecot()
    if binary is None:
        message = "dovecot not installed (apt-get install -y dovecot-imapd)"
        if os.environ.get("INBOX_BOT_REQUIRE_DOVECOT") == "1":
            raise RuntimeError(message)
        pytest.skip(message)
    return binary


@dataclass(frozen=True)
class ImapAccount:
    """Everything a client needs to log in to a test mailbox."""

    host: str
    port: int                   # plain port (STARTTLS offered when the server has TLS)
    imaps_port: int | None      # implicit-TLS port, when the server has TLS
    username: str
    password: str
    ca_path: Path | None        # CA that signed the server certificate, when it has TLS
    server: DovecotServer = field(repr=False, compare=False)


_USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_RUNNING: set[DovecotServer] = set()


@atexit.register
def _stop_forgotten_servers() -> None:
    """A script or test that dies before cleanup() must not leave a detached Dovecot behind."""
    for server in list(_RUNNING):
        server.cleanup()


class DovecotServer:
    """A private Dovecot 2.3 instance with Maildir storage on loopback.

    ``tls=True`` creates a throwaway CA + certificate and opens an implicit-TLS port as well
    as STARTTLS on the plain port (plaintext LOGIN stays allowed: loopback counts as secure).
    Ports are chosen once and kept across ``restart()``.
    """

    def __init__(self, *, tls: bool = False, host: str = LOOPBACK) -> None:
        self.binary = find_dovecot() or "/usr/sbin/dovecot"
        self.host = host
        self.tls = tls
        self.root = Path(tempfile.mkdtemp(prefix="dovecot-"))
        # mkdtemp gives 0700, which blocks the unprivileged auth and mail processes.
        self.root.chmod(0o755)
        self.instance_name = f"inboxbot-{self.root.name.removeprefix('dovecot-')}"
        self.port = free_port(host)
        self.imaps_port: int | None = free_port(host) if tls else None
        self.certificate: SelfSignedCertificate | None = (
            make_self_signed_certificate(self.root / "tls") if tls else None
        )
        self._passwords: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._mail_uid, self._mail_gid = _mail_owner()
        self.passwd_dir.mkdir()
        self._protect(self.passwd_dir, 0o750)

    # paths ---------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def passwd_dir(self) -> Path:
        # One passwd-file per user: Dovecot re-reads a changed passwd-file at most once a
        # second, but opens a file it has never seen at once, so new users log in immediately.
        return self.root / "passwd.d"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def base_dir(self) -> Path:
        return self.root / "run"

    @property
    def ca_path(self) -> Path | None:
        return self.certificate.ca_path if self.certificate else None

    def client_ssl_context(self) -> ssl.SSLContext:
        if self.certificate is None:
            raise RuntimeError("this DovecotServer was started without tls=True")
        return self.certificate.client_context()

    def maildir_path(self, user: str) -> Path:
        return self.root / "home" / user / "Maildir"

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> DovecotServer:
        if self.running:
            return self
        self.config_path.write_text(self._config_text())
        with open(self.root / "stdout.log", "ab") as output:
            # Own session (setsid): detached from our process group, and every process of the
            # instance can be found by its session id.
            self._process = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _RUNNING.add(self)
        self._wait_until_listening()
        return self

    def stop(self) -> None:
        """Shut down like a server going away: sessions end first, then the master.

        Dovecot's master lingers about a second for its log and stats processes (and leaves
        IMAP sessions running); the mail data is consistent once the sessions are gone, so the
        rest is killed to keep restarts fast.
        """
        if self._process is None:
            return
        self.kill_connections()
        session = self._process.pid
        # Stop by the PID in master.pid, but only if it is one of ours (a stale file could
        # name a recycled PID); with -F it is the process we started anyway.
        recorded = self._master_pid()
        master = recorded if recorded in _session_pids(session) else session
        _signal(master, signal.SIGTERM)
        # Login processes the master started in the meantime do not exit on its SIGTERM.
        self.kill_connections()
        lingering = {"log", "stats"}
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and self._process.poll() is None:
            workers = [pid for pid in _session_pids(session)
                       if pid != master and _executable(pid) not in lingering]
            if not workers:
                break
            time.sleep(0.005)
        for pid in [master, *_session_pids(session)]:
            _signal(pid, signal.SIGKILL)
        self._process.wait(timeout=_STOP_TIMEOUT)
        # Children inherit the listening sockets: wait for every one of them so that
        # restart() can bind the same ports again.
        self._reap_session(session)
        self._process = None
        _RUNNING.discard(self)

    def restart(self) -> None:
        """Stop and start on the same ports: every open client connection is dropped."""
        self.stop()
        self.start()

    def kill_connections(self) -> int:
        """Terminate every client connection (clients see BYE/EOF); returns how many processes.

        Covers logged-in sessions (imap) and connections still at the login stage
        (imap-login), which otherwise outlive the master by seconds.
        """
        if self._process is None:
            return 0
        victims = [pid for pid in _session_pids(self._process.pid)
                   if _executable(pid) in ("imap", "imap-login")]
        for pid in victims:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while any(_alive(pid) for pid in victims) and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(victims)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> DovecotServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()   # the error already carries the log tail
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # users ---------------------------------------------------------------------------------
    def add_user(self, name: str, password: str) -> ImapAccount:
        if not _USERNAME.match(name):
            raise ValueError(f"unsupported test user name: {name!r}")
        if name in self._passwords:
            raise ValueError(f"user {name!r} already exists")
        home = self.root / "home" / name
        home.mkdir(parents=True)
        os.chown(home, self._mail_uid, self._mail_gid)
        home.chmod(0o700)
        passwd = self.passwd_dir / name
        # user:password:uid:gid:gecos:home:shell
        passwd.write_text(
            f"{name}:{{PLAIN}}{password}:{self._mail_uid}:{self._mail_gid}::{home}::\n"
        )
        self._protect(passwd, 0o640)
        self._passwords[name] = password
        return self.account(name)

    def account(self, name: str) -> ImapAccount:
        return ImapAccount(
            host=self.host, port=self.port, imaps_port=self.imaps_port, username=name,
            password=self._passwords[name], ca_path=self.ca_path, server=self,
        )

    # client helpers (the test's "other client") --------------------------------------------
    @contextmanager
    def client(self, user: str) -> Iterator[IMAPClient]:
        """A logged-in IMAPClient on the plain port; times come back tz-aware."""
        client = IMAPClient(self.host, self.port, ssl=False, timeout=10)
        client.normalise_times = False
        try:
            client.login(user, self._passwords[user])
            yield client
        finally:
            try:
                client.logout()
            except Exception:
                client.shutdown()

    def create_folder(self, user: str, folder: str) -> None:
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)

    def folder_exists(self, user: str, folder: str) -> bool:
        with self.client(user) as client:
            return bool(client.folder_exists(folder))

    def append(
        self,
        user: str,
        folder: str,
        raw: bytes,
        internaldate: datetime | None = None,
        flags: Sequence[str | bytes] = (),
    ) -> int:
        """APPEND one message; returns its UID (from the UIDPLUS APPENDUID response)."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            response = client.append(folder, raw, flags=tuple(flags), msg_time=internaldate)
        return _appenduid(response)

    def append_many(
        self, user: str, folder: str, messages: Iterable[bytes | dict[str, Any]],
        chunk: int = 500,
    ) -> None:
        """MULTIAPPEND many messages in chunks (one round trip per chunk).

        Items are raw bytes, or dicts as imapclient's multiappend takes them
        ({"msg": bytes, "flags": (...), "date": datetime}).
        """
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for batch in _chunks(list(messages), chunk):
                client.multiappend(folder, batch)

    def list_uids(self, user: str, folder: str) -> list[int]:
        """UIDs in the folder, ascending; an absent folder has none."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            return sorted(client.search("ALL"))

    def fetch(self, user: str, folder: str) -> dict[int, bytes]:
        """UID -> raw message, without setting \\Seen."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                return {}
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            if not uids:
                return {}
            response = client.fetch(uids, ["BODY.PEEK[]"])
        return {uid: data[b"BODY[]"] for uid, data in response.items()}

    def uidvalidity(self, user: str, folder: str) -> int:
        with self.client(user) as client:
            return int(client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])

    def add_flags(self, user: str, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        with self.client(user) as client:
            client.select_folder(folder)
            client.add_flags(list(uids), list(flags))

    def get_flags(self, user: str, folder: str) -> dict[int, tuple[bytes, ...]]:
        with self.client(user) as client:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            return {uid: tuple(flags) for uid, flags in client.get_flags(uids).items()}

    # internals -----------------------------------------------------------------------------
    def _config_text(self) -> str:
        ssl_settings = "ssl = no\n"
        imaps_port = 0
        if self.certificate is not None:
            ssl_settings = (
                "ssl = yes\n"
                f"ssl_cert = <{self.certificate.cert_path}\n"
                f"ssl_key = <{self.certificate.key_path}\n"
            )
            imaps_port = self.imaps_port or 0
        unprivileged = ""
        chroot = ""
        if os.geteuid() != 0:
            # Only root may chroot: the login and anvil processes stay in place.
            chroot = "  chroot =\n"
            # Not root: every Dovecot process runs as the invoking user.
            me = pwd.getpwuid(os.geteuid()).pw_name
            my_group = grp.getgrgid(os.getegid()).gr_name
            unprivileged = (
                f"default_internal_user = {me}\ndefault_login_user = {me}\n"
                f"default_internal_group = {my_group}\n"
                f"first_valid_uid = {os.geteuid()}\nfirst_valid_gid = {os.getegid()}\n"
            )
        return f"""\
# Private test instance (tests/servers.py). No system conf.d on purpose.
instance_name = {self.instance_name}
base_dir = {self.base_dir}
state_dir = {self.root / "state"}
log_path = {self.log_path}
info_log_path = {self.log_path}
protocols = imap
listen = {self.host}
{unprivileged}{ssl_settings}disable_plaintext_auth = no
# Tests log in with wrong passwords on purpose: no failure delay, and no per-IP auth penalty
# (mode 0 on anvil's penalty socket is Dovecot's documented switch-off).
auth_failure_delay = 0
service anvil {{
{chroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
mail_fsync = never
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_dir}/%u
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd_dir}/%u
}}
service imap-login {{
{chroot}  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {imaps_port}
    ssl = yes
  }}
}}
"""

    def _protect(self, path: Path, mode: int) -> None:
        # Read by the auth process (user dovecot): root:dovecot when we are root.
        if os.geteuid() == 0:
            try:
                os.chown(path, 0, grp.getgrnam("dovecot").gr_gid)
            except KeyError:
                mode |= 0o005 if path.is_dir() else 0o004
        path.chmod(mode)

    def _master_pid(self) -> int | None:
        try:
            return int((self.base_dir / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _wait_until_listening(self) -> None:
        ports = [self.port] + ([self.imaps_port] if self.imaps_port else [])
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"dovecot exited at start:\n{self._log_tail()}")
            # The master accepts connections before its login and auth processes run; the
            # greeting proves they do (a SIGTERM during that start-up phase stalls for seconds).
            if _imap_greets(self.host, self.port) and all(
                _port_accepts(self.host, port) for port in ports
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"dovecot did not listen within {_START_TIMEOUT}s:\n{self._log_tail()}")

    def _reap_session(self, session_id: int) -> None:
        deadline = time.monotonic() + _STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not _session_pids(session_id):
                return
            time.sleep(0.01)
        for pid in _session_pids(session_id):
            _signal(pid, signal.SIGKILL)

    def _log_tail(self, lines: int = 30) -> str:
        texts = []
        for path in (self.log_path, self.root / "stdout.log"):
            if path.exists():
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts)


def _mail_owner() -> tuple[int, int]:
    """Dovecot refuses to run mail processes as root: use nobody:nogroup when we are root."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    nobody = pwd.getpwnam("nobody")
    try:
        return nobody.pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        return nobody.pw_uid, nobody.pw_gid


def _session_pids(session_id: int) -> list[int]:
    """Live processes in the given session (the detached Dovecot and all its children)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the ")" that closes comm: state ppid pgrp session ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session_id and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _executable(pid: int) -> str:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _appenduid(response: bytes) -> int:
    match = re.search(rb"APPENDUID \d+ (\d+)", response)
    if match is None:
        raise RuntimeError(f"server did not return APPENDUID: {response!r}")
    return int(match.group(1))


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes                  # DATA exactly as received (dot-unstuffed, CRLF line ends)
    auth_user: str | None       # login name when the client authenticated


SmtpSecurity = Literal["none", "starttls", "tls"]


class _RecordingHandler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self.server._record(session, envelope)


class SmtpServer:
    """A real SMTP server (aiosmtpd) on loopback that keeps everything it receives.

    security: "none", "starttls" (offered; ``require_starttls`` to insist) or "tls" (implicit
    TLS on connect). ``auth=(user, password)`` enables AUTH PLAIN/LOGIN and requires it;
    ``auth_require_tls`` defaults to True whenever TLS is available.
    ``stop()``/``start()`` reuse the same port, so "SMTP down, then back" can be tested.
    """

    def __init__(
        self,
        *,
        security: SmtpSecurity = "none",
        require_starttls: bool = False,
        auth: tuple[str, str] | None = None,
        auth_require_tls: bool | None = None,
        maildir: Path | None = None,
        host: str = LOOPBACK,
        port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.security = security
        self.require_starttls = require_starttls
        self.auth = auth
        self.auth_require_tls = (security != "none") if auth_require_tls is None else auth_require_tls
        self.maildir = mailbox.Maildir(maildir, create=True) if maildir is not None else None
        self._tmp = Path(tempfile.mkdtemp(prefix="smtp-"))
        self.certificate = (
            make_self_signed_certificate(self._tmp / "tls") if security != "none" else None
        )
        self.messages: list[ReceivedMail] = []
        self._changed = threading.Condition()
        self._next_responses: list[str] = []
        self._controller: Any = None

    @property
    def ca_path(self) -> Path | None:
        return self.certificate.ca_path if self.certificate else None

    def client_ssl_context(self) -> ssl.SSLContext:
        if self.certificate is None:
            raise RuntimeError("this SmtpServer has no TLS")
        return self.certificate.client_context()

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> SmtpServer:
        if self._controller is not None:
            return self
        from aiosmtpd.controller import Controller

        options: dict[str, Any] = {"server_hostname": "localhost", "ready_timeout": 5.0}
        if self.security == "starttls":
            assert self.certificate is not None
            options["tls_context"] = self.certificate.server_context()
            options["require_starttls"] = self.require_starttls
        elif self.security == "tls":
            assert self.certificate is not None
            options["ssl_context"] = self.certificate.server_context()
        if self.auth is not None:
            options["authenticator"] = self._authenticate
            options["auth_required"] = True
            options["auth_require_tls"] = self.auth_require_tls
        # A fresh Controller per start: a stopped controller's loop is not reusable.
        controller = Controller(_RecordingHandler(self), hostname=self.host, port=self.port,
                                **options)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is None:
            return
        self._controller.stop()
        self._controller = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # test helpers --------------------------------------------------------------------------
    def reject_next(self, response: str = "451 4.3.0 Try again later", count: int = 1) -> None:
        """Answer the next ``count`` DATA commands with ``response`` instead of accepting."""
        with self._changed:
            self._next_responses.extend([response] * count)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMail]:
        """Block until at least ``count`` messages arrived; returns them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} messages within {timeout}s, got {len(self.messages)}"
                )
            return list(self.messages)

    def clear(self) -> None:
        with self._changed:
            self.messages.clear()

    # internals -----------------------------------------------------------------------------
    def _record(self, session: Any, envelope: Any) -> str:
        with self._changed:
            if self._next_responses:
                return self._next_responses.pop(0)
            raw = envelope.original_content or envelope.content or b""
            if isinstance(raw, str):
                raw = raw.encode("utf-8", "surrogateescape")
            auth_user = None
            if getattr(session, "authenticated", False) and session.auth_data is not None:
                auth_user = str(session.auth_data)
            mail = ReceivedMail(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                raw=raw,
                auth_user=auth_user,
            )
            self.messages.append(mail)
            if self.maildir is not None:
                self.maildir.add(raw)
            self._changed.notify_all()
        return "250 2.0.0 OK"

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        assert self.auth is not None
        if mechanism not in ("LOGIN", "PLAIN") or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected_user, expected_password = self.auth
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        if (login, password) == (expected_user, expected_password):
            return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)


# --------------------------------------------------------------------------- fixtures

_user_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """One Dovecot for the session, with TLS (STARTTLS on ``port``, implicit on ``imaps_port``).

    Tests must not stop it; use ``private_dovecot`` to restart or kill a server.
    """
    ensure_dovecot()
    with DovecotServer(tls=True) as server:
        yield server


@pytest.fixture
def dovecot_user(dovecot: DovecotServer) -> ImapAccount:
    """A fresh user (own empty Maildir) on the session Dovecot: tests never share a mailbox."""
    number = next(_user_numbers)
    return dovecot.add_user(f"user{number}", f"secret-{number}")


@pytest.fixture
def private_dovecot() -> Iterator[DovecotServer]:
    """A Dovecot of the test's own (TLS on), for tests that restart or kill the server."""
    ensure_dovecot()
    with DovecotServer(tls=True) as server:
        yield server


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SmtpServer]:
    """A plain SMTP server without AUTH that stores messages in memory and in a Maildir."""
    with SmtpServer(maildir=tmp_path / "smtp-maildir") as server:
        yield server


@pytest.fixture
def smtp_server_factory() -> Iterator[Any]:
    """Build and start SmtpServer(**options); every server is stopped at teardown."""
    servers: list[SmtpServer] = []

    def build(**options: Any) -> SmtpServer:
        server = SmtpServer(**options).start()
        servers.append(server)
        return server

    yield build
    for server in servers:
        server.cleanup()

