"""Subprocess for the kill -9 test: emits durable events under load, prints each acked seq.

Usage: python -m tests.audit.durable_writer AUDIT_PATH SPOOL_DIR [ANCHOR_KEY_FILE]

A line "<seq>" on stdout means emit_durable returned for that record: it must survive
SIGKILL. "ready" is printed once the log is started.
"""

from __future__ import annotations

import asyncio
import sys

from pdp.audit import AuditLog, AuditSettings


async def worker(log: AuditLog, w: int) -> None:
    i = 0
    while True:
        # Big enough that a batch takes several pages, so a kill can land mid-write.
        seq = await log.emit_durable({"type": "Test", "tenant": "t", "worker": w, "i": i,
                                      "pad": "x" * 2000})
        sys.stdout.write(f"{seq}\n")
        sys.stdout.flush()
        log.emit({"type": "Async", "tenant": "t", "worker": w, "i": i})
        i += 1


async def run(path: str, spool: str, key: str | None) -> None:
    log = AuditLog(AuditSettings(path=path, spool_dir=spool, durability="sync",
                                 rotate_bytes=256 * 1024, batch_size=64, anchor_key_file=key))
    await log.start()
    print("ready", flush=True)
    await asyncio.gather(*(worker(log, w) for w in range(32)))


if __name__ == "__main__":
    import structlog

    # stdout carries "ready" and the acks only: the log (a torn line moved aside after the
    # previous kill, say) goes to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    asyncio.run(run(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
