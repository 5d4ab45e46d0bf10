"""Sources: where raw mail comes from (IMAP via imapclient, or a local Maildir).

Contract shared by every source: ``fetch_new()`` yields ``RawMail`` for every message not yet
acknowledged by the caller; ``mark_processed()`` is called only after the caller has durably
journaled the message, and moves it out of the way (IMAP: to the processed folder).

Messages are identified by (UIDVALIDITY, UID), never by the \\Seen flag: a human reading the
mailbox in a mail client must not hide an inquiry from the bot.
"""
from __future__ import annotations

import imaplib
import logging
import os
import ssl
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Protocol, TypeVar
from urllib.parse import quote

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawMail:
    mailbox: str            # e.g. "imap://user@host/INBOX" or "maildir:/path"
    uidvalidity: int        # IMAP UIDVALIDITY; a stable constant for a Maildir
    uid: str                # IMAP UID as text, or the Maildir key
    raw: bytes              # the message exactly as stored on the server
    received_at: datetime   # tz-aware UTC: IMAP INTERNALDATE / Maildir delivery time


SkipCallback = Callable[[int, str], bool]
"""skip(uidvalidity, uid) -> True when the caller has already journaled that message."""

Security = Literal["none", "starttls", "tls"]


class SourceError(Exception):
    """Base class for failures of a mail source."""


class SourceUnavailable(SourceError):
    """The server stayed unreachable through every reconnect attempt of one call."""


class UidValidityChanged(SourceError):
    """The folder's UIDVALIDITY changed mid-session: UIDs handed out earlier are void.

    Nothing is moved; the next ``fetch_new()`` starts over under the new UIDVALIDITY.
    """


@dataclass(frozen=True)
class Watermark:
    """Every message with UID <= ``uid`` (under ``uidvalidity``) has been handled."""

    uidvalidity: int
    uid: int


class Source(Protocol):
    """What the poll job needs from any mail source."""

    @property
    def mailbox(self) -> str: ...

    def fetch_new(
        self, skip: SkipCallback | None = None, after_uid: int | None = None
    ) -> Iterator[RawMail]: ...

    def mark_processed(self, uids: Sequence[str]) -> None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- IMAP

_FETCH_ITEMS = ["BODY.PEEK[]", "INTERNALDATE", "RFC822.SIZE"]
# Errors that mean "the connection is gone": reconnect and retry. imapclient's AbortError is
# imaplib's abort, which imaplib also raises for an untagged BYE.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (imaplib.IMAP4.abort, OSError, EOFError)
# Errors that a reconnect cannot fix; ssl.SSLCertVerificationError is an OSError, so it is
# listed (and checked) first.
_PERMANENT_ERRORS: tuple[type[BaseException], ...] = (ssl.SSLCertVerificationError, LoginError)
_DEFAULT_PORTS = {"none": 143, "starttls": 143, "tls": 993}
_SIZE_QUERY_CHUNK = 2000   # UIDs per "FETCH (RFC822.SIZE)" when planning batches

T = TypeVar("T")


class ImapSource:
    """Polls one IMAP folder by UID under UIDVALIDITY.

    With a ``processed_folder`` handled messages are moved there (created on first use).
    With ``processed_folder`` "" or None they stay in place, the folder is opened read-only
    and the source keeps a UID ``watermark`` that the caller may persist and hand back via
    ``fetch_new(after_uid=..., after_uidvalidity=...)``.
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        username: str = "",
        password: str = "",
        security: Security = "tls",
        folder: str = "INBOX",
        processed_folder: str | None = "Processed",
        batch_size: int = 500,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 60.0,
        *,
        max_batch_bytes: int = 64 * 1024 * 1024,
        ca_file: str | os.PathLike[str] | None = None,
        reconnect_attempts: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        if security not in _DEFAULT_PORTS:
            raise ValueError(f"security must be one of {sorted(_DEFAULT_PORTS)}, not {security!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if reconnect_attempts < 1:
            raise ValueError("reconnect_attempts must be at least 1")
        self.host = host
        self.port = port or _DEFAULT_PORTS[security]
        self.username = username
        self._password = password
        self.security: Security = security
        self.folder = folder
        self.processed_folder = processed_folder or None
        self.batch_size = batch_size
        # Inquiries often carry scanned ID documents: cap a batch by bytes as well, or 500
        # large messages would have to sit in memory at once.
        self.max_batch_bytes = max_batch_bytes
        self.timeout = timeout
        self.reconnect_attempts = reconnect_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._ssl_context = ssl_context or _verifying_context(ca_file)
        self._sleep: Callable[[float], None] = time.sleep
        self._client: IMAPClient | None = None
        self._selected_uidvalidity: int | None = None
        # UIDVALIDITY under which the current fetch handed out UIDs (None: nothing handed out).
        self._uidvalidity: int | None = None
        self._processed_folder_ready = False
        # Watermark bookkeeping for the most recent listing.
        self._watermark: Watermark | None = None
        self._listed: list[int] = []
        self._handled: set[int] = set()
        self._where = f"{host}:{self.port}/{folder}"
        if security == "none" and host not in ("127.0.0.1", "::1", "localhost"):
            logger.warning("imap %s: connecting without TLS", self._where)

    # public --------------------------------------------------------------------------------
    @property
    def mailbox(self) -> str:
        port = "" if self.port == _DEFAULT_PORTS[self.security] else f":{self.port}"
        return f"imap://{quote(self.username, safe='')}@{self.host}{port}/{quote(self.folder)}"

    @property
    def uidvalidity(self) -> int | None:
        """UIDVALIDITY of the last listing (None before the first ``fetch_new``)."""
        return self._uidvalidity

    @property
    def watermark(self) -> Watermark | None:
        """Highest UID below which everything is handled; persist it in leave-in-place mode."""
        return self._watermark

    def fetch_new(
        self,
        skip: SkipCallback | None = None,
        after_uid: int | None = None,
        *,
        after_uidvalidity: int | None = None,
    ) -> Iterator[RawMail]:
        """Yield every message with a UID above the watermark that ``skip`` does not claim.

        Messages the caller already journaled (``skip`` is true) are not fetched again; with a
        processed folder they are moved there now (the earlier move did not happen).
        ``after_uid`` is ignored when ``after_uidvalidity`` is given and no longer matches.
        Raises SourceUnavailable after the reconnect attempts of one step are used up, and
        UidValidityChanged if the folder was recreated during the iteration.
        """
        self._uidvalidity = None
        # Re-select on every poll: refreshes the view and notices a recreated folder.
        uidvalidity = self._run("select", self._reselect)
        self._uidvalidity = uidvalidity
        after = self._effective_after(uidvalidity, after_uid, after_uidvalidity)
        if after:
            self._watermark = Watermark(uidvalidity, after)
        listed = self._run("search", lambda client: _uids_above(client, after))
        self._listed, self._handled = listed, set()

        claimed = [uid for uid in listed if skip is not None and skip(uidvalidity, str(uid))]
        if claimed:
            logger.info("imap %s: %d message(s) already journaled", self._where, len(claimed))
            self.mark_processed([str(uid) for uid in claimed])
        claimed_set = set(claimed)
        wanted = [uid for uid in listed if uid not in claimed_set]
        logger.info("imap %s: %d new message(s) above UID %d", self._where, len(wanted), after)

        for batch in self._plan_batches(wanted):
            yield from self._fetch_batch(uidvalidity, batch)

    def mark_processed(self, uids: Sequence[str]) -> None:
        """Move the messages to the processed folder, or just advance the watermark."""
        numbers = sorted({int(uid) for uid in uids})
        if not numbers:
            return
        if self.processed_folder is not None:
            if self._uidvalidity is None:
                # Either no fetch_new() yet, or UIDVALIDITY changed: these UIDs mean nothing now.
                raise SourceError("mark_processed() needs UIDs from the current fetch_new()")
            self._run("move", lambda client: self._move(client, numbers))
            logger.info("imap %s: moved %d message(s) to %s",
                        self._where, len(numbers), self.processed_folder)
        self._handled.update(numbers)
        self._advance_watermark()

    def close(self) -> None:
        client, self._client = self._client, None
        self._selected_uidvalidity = None
        if client is None:
            return
        try:
            client.logout()
        except Exception:  # the connection may already be gone; nothing left to save
            _shutdown_quietly(client)

    def __enter__(self) -> ImapSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # fetching ------------------------------------------------------------------------------
    def _fetch_batch(self, uidvalidity: int, batch: list[int]) -> Iterator[RawMail]:
        response = self._run("fetch", lambda client: client.fetch(batch, _FETCH_ITEMS))
        returned = 0
        for uid in batch:
            data = response.get(uid)
            # Unsolicited FETCH responses (flag changes) carry no body; absent UIDs were
            # expunged by someone else since the SEARCH.
            if data is None or b"BODY[]" not in data:
                self._handled.add(uid)
                continue
            returned += 1
            raw = bytes(data[b"BODY[]"])
            size = data.get(b"RFC822.SIZE")
            if size is not None and size != len(raw):
                logger.warning("imap %s: UID %d is %d bytes, server announced %d",
                               self._where, uid, len(raw), size)
            yield RawMail(
                mailbox=self.mailbox,
                uidvalidity=uidvalidity,
                uid=str(uid),
                raw=raw,
                received_at=_as_utc(data.get(b"INTERNALDATE")),
            )
        self._advance_watermark()
        logger.debug("imap %s: fetched %d of %d requested", self._where, returned, len(batch))

    def _plan_batches(self, uids: list[int]) -> Iterator[list[int]]:
        """Split into batches of at most batch_size UIDs and (roughly) max_batch_bytes."""
        for chunk in _batches(uids, _SIZE_QUERY_CHUNK):
            sizes = self._run("size", lambda client: _sizes(client, chunk))
            batch: list[int] = []
            batch_bytes = 0
            for uid in chunk:
                size = sizes.get(uid, 0)
                if batch and (len(batch) >= self.batch_size
                              or batch_bytes + size > self.max_batch_bytes):
                    yield batch
                    batch, batch_bytes = [], 0
                batch.append(uid)
                batch_bytes += size
            if batch:
                yield batch

    def _effective_after(
        self, uidvalidity: int, after_uid: int | None, after_uidvalidity: int | None
    ) -> int:
        after = 0
        if after_uid is not None:
            if after_uidvalidity is not None and after_uidvalidity != uidvalidity:
                logger.warning("imap %s: UIDVALIDITY is now %d (watermark was for %d); "
                               "rescanning the folder", self._where, uidvalidity, after_uidvalidity)
            else:
                after = after_uid
        if self._watermark is not None and self._watermark.uidvalidity == uidvalidity:
            after = max(after, self._watermark.uid)
        return after

    def _advance_watermark(self) -> None:
        if self._uidvalidity is None:
            return
        current = self._watermark
        highest = current.uid if current and current.uidvalidity == self._uidvalidity else 0
        for uid in self._listed:
            if uid <= highest:
                continue
            if uid not in self._handled:
                break
            highest = uid
        if highest and (current is None or current != Watermark(self._uidvalidity, highest)):
            self._watermark = Watermark(self._uidvalidity, highest)

    # moving --------------------------------------------------------------------------------
    def _move(self, client: IMAPClient, uids: list[int]) -> None:
        assert self.processed_folder is not None
        self._ensure_processed_folder(client)
        for batch in _batches(uids, self.batch_size):
            try:
                self._move_batch(client, batch)
            except imaplib.IMAP4.error as exc:
                if isinstance(exc, imaplib.IMAP4.abort) or "TRYCREATE" not in str(exc):
                    raise
                # Someone deleted the processed folder since we created it.
                self._processed_folder_ready = False
                self._ensure_processed_folder(client)
                self._move_batch(client, batch)

    def _move_batch(self, client: IMAPClient, uids: list[int]) -> None:
        assert self.processed_folder is not None
        if self._server_supports_move(client):
            client.move(uids, self.processed_folder)
            return
        client.copy(uids, self.processed_folder)
        client.delete_messages(uids, silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
        else:
            # Plain EXPUNGE also removes other \Deleted messages in the folder; the only
            # option on servers without UIDPLUS.
            client.expunge()

    def _server_supports_move(self, client: IMAPClient) -> bool:
        return bool(client.has_capability("MOVE"))

    def _ensure_processed_folder(self, client: IMAPClient) -> None:
        if self._processed_folder_ready:
            return
        assert self.processed_folder is not None
        if not client.folder_exists(self.processed_folder):
            try:
                client.create_folder(self.processed_folder)
                logger.info("imap %s: created folder %s", self._where, self.processed_folder)
            except imaplib.IMAP4.error as exc:
                # Another client may have created it in the meantime.
                if isinstance(exc, imaplib.IMAP4.abort) or not client.folder_exists(
                    self.processed_folder
                ):
                    raise
            try:
                client.subscribe_folder(self.processed_folder)
            except imaplib.IMAP4.error as exc:
                if isinstance(exc, imaplib.IMAP4.abort):
                    raise
        self._processed_folder_ready = True

    # connection ----------------------------------------------------------------------------
    def _run(self, step: str, operation: Callable[[IMAPClient], T]) -> T:
        """Run one IMAP step, reconnecting with capped exponential backoff if the link drops."""
        attempt = 1
        while True:
            try:
                return operation(self._connected())
            except _PERMANENT_ERRORS:
                self._drop_connection()
                raise
            except _CONNECTION_ERRORS as exc:
                self._drop_connection()
                if attempt >= self.reconnect_attempts:
                    raise SourceUnavailable(
                        f"imap {self._where}: {step} failed after {attempt} attempt(s): "
                        f"{str(exc)[:120]}"
                    ) from exc
                delay = min(self.backoff_initial * 2 ** (attempt - 1), self.backoff_max)
                # imaplib may quote a server line in the error: keep it short.
                logger.warning("imap %s: %s failed (%s: %.120s); reconnecting in %.2fs (%d/%d)",
                               self._where, step, type(exc).__name__, exc, delay,
                               attempt, self.reconnect_attempts)
                self._sleep(delay)
                attempt += 1

    def _connected(self) -> IMAPClient:
        if self._client is None:
            self._client = self._connect()
            self._selected_uidvalidity = self._select(self._client)
        if self._uidvalidity is not None and self._selected_uidvalidity != self._uidvalidity:
            handed_out, self._uidvalidity = self._uidvalidity, None
            raise UidValidityChanged(
                f"imap {self._where}: UIDVALIDITY changed from {handed_out} to "
                f"{self._selected_uidvalidity}"
            )
        return self._client

    def _reselect(self, client: IMAPClient) -> int:
        self._selected_uidvalidity = self._select(client)
        return self._selected_uidvalidity

    def _connect(self) -> IMAPClient:
        implicit_tls = self.security == "tls"
        client = IMAPClient(self.host, self.port, ssl=implicit_tls,
                            ssl_context=self._ssl_context if implicit_tls else None,
                            timeout=self.timeout)
        try:
            # Keep INTERNALDATE's offset so it converts to UTC exactly (no local-time guess).
            client.normalise_times = False
            if self.security == "starttls":
                # imaplib refuses if STARTTLS is not advertised: never falls back to plaintext.
                client.starttls(self._ssl_context)
            client.login(self.username, self._password)
        except BaseException:
            _shutdown_quietly(client)
            raise
        logger.info("imap %s: connected (%s)", self._where, self.security)
        return client

    def _select(self, client: IMAPClient) -> int:
        # Leave-in-place mode never changes the mailbox, so open it read-only (EXAMINE).
        status = client.select_folder(self.folder, readonly=self.processed_folder is None)
        return int(status[b"UIDVALIDITY"])

    def _drop_connection(self) -> None:
        client, self._client = self._client, None
        self._selected_uidvalidity = None
        if client is not None:
            _shutdown_quietly(client)


def _verifying_context(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """System trust store, or only ``ca_file`` (self-hosted / test CA); always verifies."""
    if ca_file is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=os.fspath(ca_file))


def _uids_above(client: IMAPClient, after: int) -> list[int]:
    if after <= 0:
        uids = client.search("ALL")
    else:
        # "N:*" also matches the highest UID when it is below N, hence the filter.
        uids = client.search(["UID", f"{after + 1}:*"])
    return sorted(uid for uid in uids if uid > after)


def _sizes(client: IMAPClient, uids: list[int]) -> dict[int, int]:
    response = client.fetch(uids, ["RFC822.SIZE"])
    return {uid: int(data.get(b"RFC822.SIZE", 0)) for uid, data in response.items()}


def _batches(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _as_utc(moment: datetime | None) -> datetime:
    if moment is None:  # every server sends INTERNALDATE; be safe rather than crash
        return datetime.now(timezone.utc)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _shutdown_quietly(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except Exception:  # already closed
        pass


# --------------------------------------------------------------------------- Maildir

_UIDVALIDITY_FILE = "inbox-bot-uidvalidity"


class MaildirSource:
    """The embedded default: a local Maildir, same contract as ImapSource.

    uid = the Maildir key (file name without the ":2,flags" info), uidvalidity = a constant
    stored in the Maildir on first use, received_at = the file's mtime (delivery time).
    Handled messages are moved to the Maildir++ subfolder ``.<processed_folder>``.
    """

    def __init__(self, path: str | os.PathLike[str], processed_folder: str | None = "Processed"):
        self.path = Path(path).resolve()
        self.processed_folder = processed_folder or None
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.uidvalidity = self._load_uidvalidity()
        self._paths: dict[str, Path] = {}   # key -> file, from the latest listing

    @property
    def mailbox(self) -> str:
        return f"maildir:{self.path}"

    @property
    def watermark(self) -> Watermark | None:
        return None  # Maildir keys are not ordered numbers

    def fetch_new(
        self, skip: SkipCallback | None = None, after_uid: int | None = None
    ) -> Iterator[RawMail]:
        """Yield messages in new/ and cur/, oldest delivery first.

        ``after_uid`` is accepted for the Source protocol and ignored.
        """
        entries = self._list_messages()
        logger.info("maildir %s: %d message(s) waiting", self.path, len(entries))
        for key, path in entries:
            if skip is not None and skip(self.uidvalidity, key):
                if self.processed_folder is not None:
                    self._move(key)
                continue
            mail = self._read(key, path)
            if mail is not None:
                yield mail

    def mark_processed(self, uids: Sequence[str]) -> None:
        if self.processed_folder is None:
            return
        moved = sum(self._move(key) for key in uids)
        logger.info("maildir %s: moved %d message(s) to %s",
                    self.path, moved, self.processed_folder)

    def close(self) -> None:
        """Nothing to release; present for the Source protocol."""

    def __enter__(self) -> MaildirSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # internals -----------------------------------------------------------------------------
    def _list_messages(self) -> list[tuple[str, Path]]:
        found: list[tuple[float, str, Path]] = []
        for sub in ("new", "cur"):
            with os.scandir(self.path / sub) as listing:
                for entry in listing:
                    if entry.name.startswith("."):
                        continue
                    try:
                        mtime = entry.stat().st_mtime
                    except FileNotFoundError:
                        continue  # taken away between listing and stat
                    found.append((mtime, _maildir_key(entry.name), Path(entry.path)))
        found.sort(key=lambda item: (item[0], item[1]))
        self._paths = {key: path for _, key, path in found}
        return [(key, path) for _, key, path in found]

    def _read(self, key: str, path: Path) -> RawMail | None:
        for attempt in range(2):
            candidate = path if attempt == 0 else self._locate(key)
            if candidate is None:
                break
            try:
                with open(candidate, "rb") as handle:
                    raw = handle.read()
                    mtime = os.fstat(handle.fileno()).st_mtime
            except FileNotFoundError:
                continue  # renamed (e.g. new/ -> cur/ by a mail client) or deleted: look again
            return RawMail(
                mailbox=self.mailbox,
                uidvalidity=self.uidvalidity,
                uid=key,
                raw=raw,
                received_at=datetime.fromtimestamp(mtime, tz=timezone.utc),
            )
        logger.info("maildir %s: message vanished before it could be read", self.path)
        return None

    def _locate(self, key: str) -> Path | None:
        """Find a message's current file: a mail client may have renamed it since listing."""
        for sub in ("new", "cur"):
            with os.scandir(self.path / sub) as listing:
                for entry in listing:
                    if _maildir_key(entry.name) == key and not entry.name.startswith("."):
                        return Path(entry.path)
        return None

    def _move(self, key: str) -> bool:
        assert self.processed_folder is not None
        target_cur = self._processed_dir() / "cur"
        for attempt in range(2):
            source = self._paths.get(key) if attempt == 0 else self._locate(key)
            if source is None:
                if attempt == 0:
                    continue
                return False
            info = source.name[len(key):] or ":2,"
            try:
                os.rename(source, target_cur / f"{key}{info}")
                self._paths.pop(key, None)
                return True
            except FileNotFoundError:
                continue  # renamed under us: locate again once
        return False

    def _processed_dir(self) -> Path:
        assert self.processed_folder is not None
        folder = self.path / ("." + self.processed_folder.replace("/", "."))
        for sub in ("tmp", "new", "cur"):
            (folder / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        (folder / "maildirfolder").touch()  # Maildir++ marker for mail servers
        return folder

    def _load_uidvalidity(self) -> int:
        marker = self.path / _UIDVALIDITY_FILE
        try:
            return int(marker.read_text().strip())
        except FileNotFoundError:
            pass
        except ValueError:
            logger.warning("maildir %s: unreadable %s; deriving it again", self.path, marker.name)
        # Derived from the path so it is stable even if the marker cannot be written; stored
        # so it survives moving the Maildir.
        value = zlib.crc32(str(self.path).encode("utf-8")) or 1
        temporary = marker.with_suffix(".tmp")
        try:
            temporary.write_text(f"{value}\n")
            os.replace(temporary, marker)
        except OSError as exc:
            logger.warning("maildir %s: cannot store UIDVALIDITY (%s)", self.path, exc)
        return value


def _maildir_key(name: str) -> str:
    return name.split(":", 1)[0]
