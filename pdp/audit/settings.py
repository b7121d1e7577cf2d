"""Settings of the audit pipeline (one dataclass; validated on construction)."""

from __future__ import annotations

import dataclasses
import os.path
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Durability = Literal["async", "sync"]
MaskMode = Literal["remove", "hash"]


@dataclass
class AuditSettings:
    """How audit events are written.

    The JSON-lines file is always written: it is the hash chain's home, what ``sync``
    durability fsyncs, and what ``watch`` reads history from. Redis and stdout are extra sinks.
    """

    path: str = "./var/audit/audit.jsonl"
    #: Start a new file before a record would push the current one past this size.
    rotate_bytes: int = 64 * 1024 * 1024
    #: Bounded in-memory queue between ``emit`` and the writer (events). Past it, events spill
    #: to ``<spool_dir>/overflow.jsonl`` synchronously instead of being dropped.
    queue_size: int = 10_000
    #: Records written (and, in sync mode, fsync'd) together at most.
    batch_size: int = 512
    #: Writes that need no fsync are chained and written on the event loop in slices of this
    #: many events, the loop running decisions between slices (bounds the loop's pause to
    #: about a slice's work). In a GIL-bound process a worker thread costs hand-offs and lock
    #: contention and buys no parallelism. Fsyncs and writes that may rotate the file go to
    #: the thread. 0 = always the thread.
    inline_max: int = 64
    #: ``sync``: the decision path should use ``emit_durable`` / ``log_decision`` awaits fsync.
    durability: Durability = "async"
    redis_url: str | None = None
    #: ``redis_url`` names a node of a Redis Cluster.
    redis_cluster: bool = False
    redis_stream: str = "pdp:audit"
    #: Approximate ``MAXLEN ~`` trimming of the stream; None = never trim.
    redis_maxlen: int | None = None
    #: Names this chain's delivery cursor in Redis (several sidecars / workers may share a
    #: stream, each with its own chain). None = ``<hostname>:<absolute audit file path>``.
    instance: str | None = None
    stdout: bool = False
    #: Where sink spools and the overflow spool live; None = ``<path>.spool/`` (per audit
    #: file, so workers with their own audit files never share a spool).
    spool_dir: str | None = None
    mask_paths: list[str] = field(default_factory=list)
    mask_mode: MaskMode = "hash"
    #: Optional key: masked values become HMAC-SHA256 instead of plain SHA-256.
    mask_hmac_key: str | None = None
    #: Records buffered per live watcher before it is ended with ``WatchOverflowError``.
    watch_buffer: int = 10_000
    #: Records a sink keeps in memory while it is slow before spilling to its spool.
    sink_memory_limit: int = 10_000
    #: Seconds one sink write may take before it counts as failed.
    sink_timeout: float = 5.0
    #: Retry backoff for a failed sink, seconds (doubling, capped).
    sink_retry_initial: float = 0.05
    sink_retry_max: float = 2.0
    #: How long ``close`` tries to deliver to sinks before leaving the rest in their spools.
    close_timeout: float = 5.0
    #: Key file for signed checkpoints of the chain (anchors.py); None = no checkpoints.
    anchor_key_file: str | None = None
    #: A checkpoint ends the batch that brings the records since the last one to this many...
    anchor_every_records: int = 1000
    #: ...or that comes this many seconds after it (an idle log gets one within this time).
    #: With ``sync`` durability every batch that has waiters also ends with one, and at
    #: shutdown the rest is checkpointed.
    anchor_every_s: float = 10.0
    #: Append-only copy of the checkpoints, to ship off the host; None = ``<path>.anchors``.
    anchor_file: str | None = None

    def __post_init__(self) -> None:
        for name in ("rotate_bytes", "queue_size", "batch_size", "watch_buffer",
                     "sink_memory_limit"):
            if getattr(self, name) <= 0:
                raise ValueError(f"audit {name}: must be > 0, got {getattr(self, name)}")
        if self.inline_max < 0:
            raise ValueError(f"audit inline_max: must be >= 0, got {self.inline_max}")
        if self.durability not in ("async", "sync"):
            raise ValueError(f"audit durability: 'async' or 'sync', got {self.durability!r}")
        if self.mask_mode not in ("remove", "hash"):
            raise ValueError(f"audit mask_mode: 'remove' or 'hash', got {self.mask_mode!r}")
        if self.anchor_every_records <= 0 or not self.anchor_every_s > 0:
            raise ValueError("audit anchor_every_records / anchor_every_s: must be > 0")
        if self.redis_maxlen is not None and self.redis_maxlen <= 0:
            raise ValueError("audit redis_maxlen: must be > 0 or None")
        self.mask_paths = list(self.mask_paths)

    @property
    def spool_path(self) -> str:
        if self.spool_dir is not None:
            return self.spool_dir
        return os.path.abspath(self.path) + ".spool"

    @property
    def anchor_path(self) -> str:
        if self.anchor_file is not None:
            return self.anchor_file
        return os.path.abspath(self.path) + ".anchors"

    @property
    def instance_name(self) -> str:
        if self.instance:
            return self.instance
        return f"{socket.gethostname()}:{os.path.abspath(self.path)}"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AuditSettings:
        """Build from a config mapping (e.g. YAML); unknown keys are an error, not ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown audit settings: {', '.join(sorted(unknown))}")
        return cls(**dict(data))
