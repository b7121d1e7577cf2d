"""Signed checkpoints ("anchors") of the hash chain.

Why: a hash chain alone proves order, not authorship. Whoever can write the audit files can
edit a record and recompute every later hash, or cut records off the end, and the chain still
verifies. A checkpoint is a MAC (HMAC-SHA256, key from a file the writer reads and the files'
editors cannot) over where the chain stood: its head hash and seq, the rotated files and their
final hashes. Re-chaining changes the head a checkpoint signed; cutting records off the end
leaves a checkpoint (kept outside the ledger too) naming more records than exist.

A checkpoint is written twice:

* into the ledger, as the event of the record that follows the head it covers (so it is
  chained, forwarded to the Redis stream and seen by watchers like any other record);
* as one line, the same event, appended to the anchor file (``<audit file>.anchors`` by
  default): append-only, small, for an operator to ship off the host. The line is written
  only after the ledger is fsync'd through the checkpoint, so an anchor never names records
  a crash could still take away. The anchor file is fsync'd every N records / T seconds and
  at close (see sinks/file.py for why not with every batch).

The event::

    {"type": "Audit.Checkpoint", "time": "...Z", "ledger": "audit.jsonl",
     "seq": N, "head": "<hash of record N>",
     "files": [{"name": "audit.jsonl.000000000001", "first": 1, "last": 812,
                "hash": "<hash of record 812>"}],     # files rotated since the last one
     "key_id": "<16 hex>", "mac": "<HMAC-SHA256 hex over the rest, canonical JSON>"}

The checkpoint record itself is seq N + 1. ``key_id`` names the key (a hash of it), so a
verifier given the wrong key says so instead of calling every checkpoint forged.

The checkpoint the writer ends a ledger with when it stops carries ``"final": true`` (signed
with the rest): a restarted writer begins with a checkpoint of its own right after it, so a
record that follows a shutdown checkpoint and is not a checkpoint was appended while no
writer ran. The writer refuses to start on one and ``verify`` reports it (``appended``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from pdp.audit.chain import ChainHead, canonical, loads
from pdp.audit.events import format_time
from pdp.audit.modes import AUDIT_FILE_MODE

log = structlog.get_logger("pdp.audit")

CHECKPOINT = "Audit.Checkpoint"
#: Written by the writer when, at start-up, it moved a torn final line aside.
TORN_TAIL = "Audit.TornTail"
#: The previous writer of the ledger did not close it (killed): written first by the next.
UNCLEAN_SHUTDOWN = "Audit.UncleanShutdown"

#: Shorter keys are refused: the MAC is only as strong as the key.
MIN_KEY_BYTES = 16

_MAC_FIELDS = ("type", "time", "ledger", "seq", "head", "files", "key_id")


class AnchorKeyError(ValueError):
    """The anchor key file is missing, unreadable or too short."""


@dataclass(frozen=True)
class AnchorKey:
    secret: bytes = field(repr=False)
    key_id: str

    @classmethod
    def from_bytes(cls, secret: bytes) -> AnchorKey:
        secret = secret.strip()
        if len(secret) < MIN_KEY_BYTES:
            raise AnchorKeyError(f"anchor key: at least {MIN_KEY_BYTES} bytes needed, got "
                                 f"{len(secret)} (e.g. `head -c 32 /dev/urandom | base64`)")
        kid = hashlib.sha256(b"pdp-audit-anchor-key-id\0" + secret).hexdigest()[:16]
        return cls(secret, kid)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AnchorKey:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise AnchorKeyError(f"anchor key file {path}: {e.strerror or e}") from e
        return cls.from_bytes(data)

    def mac(self, event: Mapping[str, Any]) -> str:
        """MAC of the checkpoint fields of ``event`` (whatever else it carries is ignored);
        ``final`` is signed when present (checkpoints made before it existed verify as
        before; adding or removing it breaks the MAC)."""
        body = {k: event.get(k) for k in _MAC_FIELDS}
        if "final" in event:
            body["final"] = event["final"]
        return hmac.new(self.secret, canonical(body), hashlib.sha256).hexdigest()

    def signed(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` carries this key's MAC; False also for content the writer can
        never have signed (NaN, 1e400: canonical JSON refuses them), not an exception."""
        mac = event.get("mac")
        if not isinstance(mac, str):
            return False
        try:
            expected = self.mac(event)
        except (TypeError, ValueError):
            return False
        return hmac.compare_digest(mac, expected)


@dataclass(frozen=True)
class Keyring:
    """The keys a ledger was signed with, oldest first: after a key change (rotation) the
    older checkpoints stay signed with the old key, and ``verify`` checks each checkpoint
    with the key its ``key_id`` names."""

    keys: tuple[AnchorKey, ...]

    @classmethod
    def of(cls, key: AnchorKey | Keyring) -> Keyring:
        return key if isinstance(key, Keyring) else cls((key,))

    def get(self, key_id: Any) -> AnchorKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    @property
    def key_id(self) -> str:
        """The ids, for messages ("a, b")."""
        return ", ".join(k.key_id for k in self.keys)


@dataclass(frozen=True)
class Segment:
    """A rotated file as a checkpoint names it."""

    name: str
    first: int
    last: int
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "first": self.first, "last": self.last, "hash": self.hash}


def checkpoint_event(key: AnchorKey, ledger: str, head: ChainHead,
                     files: list[Segment], when: float | None = None,
                     final: bool = False) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "type": CHECKPOINT, "time": format_time(when if when is not None else time.time()),
        "ledger": ledger, "seq": head.seq, "head": head.hash,
        "files": [s.to_json() for s in files], "key_id": key.key_id,
    }
    if final:
        ev["final"] = True
    ev["mac"] = key.mac(ev)
    return ev


def is_final(event: Any) -> bool:
    """A shutdown checkpoint: the writer closed the ledger after it. The next record, if
    any, is the checkpoint a restarted writer begins with; anything else was appended
    after the writer stopped."""
    return is_checkpoint(event) and event.get("final") is True


def trusted(key: AnchorKey, event: Any, ledger: str, seq: int, prev: str) -> bool | None:
    """Whether ``event`` (the event of record ``seq``, whose ``prev`` is given) is a
    checkpoint of ``ledger`` signed with ``key`` that signs the head the chain has: True;
    False when it claims ``key``'s id but does not check out (forged, or re-chained); None
    when it cannot tell (another key's id: made before a key change)."""
    if not is_checkpoint(event) or event.get("key_id") != key.key_id:
        return None
    return bool(key.signed(event) and event.get("ledger") == ledger
                and event.get("seq") == seq - 1 and event.get("head") == prev)


def is_checkpoint(event: Any) -> bool:
    return isinstance(event, dict) and event.get("type") == CHECKPOINT


def default_anchor_path(ledger: str | os.PathLike[str]) -> Path:
    p = Path(ledger)
    return p.with_name(p.name + ".anchors")


# -- the anchor file ---------------------------------------------------------------------


def path_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path`` now, None when there is none: compared with
    an open file's, it tells a file removed or replaced under a writer."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class AnchorFile:
    """Append-only writer of the anchor file. Several writers (``--workers``) may share one:
    each line is one ``write`` on an ``O_APPEND`` descriptor and names its ledger."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self.synced_at = time.monotonic()
        #: Times the file at ``path`` was found removed or replaced under the open one (and
        #: recreated there); the last time's account. Stats / health report them.
        self.replaced = 0
        self.last_replaced: str | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, AUDIT_FILE_MODE)
        self._fd = fd
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        size = os.fstat(fd).st_size
        if size:
            # A crash mid-append leaves a fragment; end it, so the next line starts clean
            # (readers skip the fragment with a warning; it was never acknowledged).
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(fd, b"\n")
        if created:
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _check_path(self) -> None:
        """Reopen (recreating it) when the file at ``path`` is no longer the open one:
        removed or replaced since it was opened. Writing on would put every later anchor in
        an unlinked inode nobody can read (or a file nobody ships)."""
        now = path_identity(self.path)
        if now is not None and now == self._ident:
            return
        what = "removed" if now is None else "replaced by another file"
        self.replaced += 1
        self.last_replaced = (f"anchor file {self.path} was {what} while open; recreated "
                              f"(checkpoints before it are only in the ledger)")
        log.error("audit_anchor_file_replaced", path=str(self.path), what=what,
                  times=self.replaced)
        old, self._fd = self._fd, None
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old)
        self.open()

    def append(self, event: Mapping[str, Any], fsync: bool = True) -> None:
        if self._fd is None:
            self.open()
        else:
            self._check_path()
        assert self._fd is not None
        line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view):]
        if fsync:
            self.sync()

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            self.synced_at = time.monotonic()

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None
                self._ident = None


@dataclass(frozen=True)
class AnchorLine:
    path: str
    line: int
    event: dict[str, Any]


def _event_of(raw: bytes) -> dict[str, Any] | None:
    """A checkpoint event from an anchor-file line, or from a whole ledger record (what a
    Redis stream entry's ``record`` field holds), so anchors exported either way are read."""
    try:
        obj = loads(raw)  # ValueError also for a line nested too deeply to parse
    except ValueError:
        return None
    if isinstance(obj, dict) and "event" in obj and "seq" in obj and "hash" in obj:
        obj = obj["event"]
    return obj if is_checkpoint(obj) else None


def read_anchors(path: str | os.PathLike[str],
                 ledger: str | None = None) -> tuple[list[AnchorLine], list[str]]:
    """Checkpoints in an anchor file (of ``ledger`` only, if given), in file order, and
    warnings for lines that are not checkpoints (a torn final line after a crash)."""
    p = Path(path)
    data = p.read_bytes()
    out: list[AnchorLine] = []
    warnings: list[str] = []
    lines = data.split(b"\n")
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        ev = _event_of(raw)
        if ev is None:
            where = "final line" if n == len(lines) else "line"
            warnings.append(f"{p}:{n}: anchor {where} is not a checkpoint (torn by a crash, "
                            "or damaged); skipped")
            continue
        if ledger is None or ev.get("ledger") == ledger:
            out.append(AnchorLine(str(p), n, ev))
    return out, warnings


def lines_back(path: Path, chunk: int = 64 * 1024) -> Iterator[tuple[int, bytes]]:
    """The whole lines of ``path`` from the last, with their byte offsets."""
    with open(path, "rb") as f:
        end = pos = f.seek(0, os.SEEK_END)
        rest = b""
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + rest
            parts = buf.split(b"\n")
            rest = parts[0]
            off = pos + len(parts[0]) + 1
            starts = []
            for part in parts[1:]:
                starts.append((off, part))
                off += len(part) + 1
            for start, part in reversed(starts):
                if start < end and part:
                    yield start, part
        if rest:
            yield 0, rest


def last_anchor(path: str | os.PathLike[str], ledger: str) -> dict[str, Any] | None:
    """The latest checkpoint of ``ledger`` in the anchor file (read from the end)."""
    p = Path(path)
    if not p.exists():
        return None
    for _, raw in lines_back(p):
        ev = _event_of(raw) if raw.strip() else None
        if ev is not None and ev.get("ledger") == ledger:
            return ev
    return None


# -- when to write one -------------------------------------------------------------------


class Anchorer:
    """The writer's side: when a checkpoint is due, what it names, where its copy goes."""

    def __init__(self, key: AnchorKey, anchor_file: str | os.PathLike[str], *,
                 every_records: int, every_s: float) -> None:
        self.key = key
        self.file = AnchorFile(anchor_file)
        self.every_records = every_records
        self.every_s = every_s
        #: Records written since the last checkpoint (the checkpoint record not counted).
        self.unanchored = 0
        self.last_time = time.monotonic()
        #: Files rotated since the last checkpoint, to be named by the next one.
        self.segments: list[Segment] = []

    def due(self, new_records: int, now: float | None = None) -> bool:
        pending = self.unanchored + new_records
        if pending <= 0:
            return False
        if pending >= self.every_records:
            return True
        return (now if now is not None else time.monotonic()) - self.last_time >= self.every_s

    def file_sync_due(self, new_records: int) -> bool:
        """Whether the anchor file should be fsync'd with the next checkpoint: it covers
        ``every_records``, or the file has gone ``every_s`` without."""
        return (self.unanchored + new_records >= self.every_records
                or time.monotonic() - self.file.synced_at >= self.every_s)

    def seconds_left(self) -> float:
        return max(0.0, self.last_time + self.every_s - time.monotonic())

    def make(self, ledger: str, head: ChainHead, final: bool = False) -> dict[str, Any]:
        return checkpoint_event(self.key, ledger, head, list(self.segments), final=final)

    def written(self, records: int) -> None:
        self.unanchored += records

    def anchored(self) -> None:
        self.unanchored = 0
        self.segments = []
        self.last_time = time.monotonic()
