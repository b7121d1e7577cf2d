"""`pdp serve --workers N`: N server processes on one port (SO_REUSEPORT).

Each worker is a full server process; the kernel spreads connections across them. They share
counters (Redis: required, an in-process store would give each worker its own caps) and each
writes its own audit file (``audit-w<i>.jsonl``) so every hash chain has a single writer.
SIGTERM/SIGINT/SIGHUP to the parent is passed to every worker; the parent exits 0 when all did.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from pdp.settings import Settings, SettingsError


def worker_settings(settings: Settings, index: int) -> Settings:
    path = Path(settings.audit_file)
    audit = path.with_name(f"{path.stem}-w{index}{path.suffix}")
    return dataclasses.replace(settings, audit_file=str(audit), workers=settings.workers,
                               unix_socket=None if index else settings.unix_socket)


def _run_worker(settings: Settings) -> None:
    # Until serve() installs its handler, SIGHUP's default would end this worker: a reload
    # sent while it starts is ignored instead (the tokens it is about to read are current).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import asyncio

    from pdp.logging import configure_logging
    from pdp.server.app import StartupError, serve

    configure_logging(settings.log_level, settings.log_format)
    try:
        code = asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"pdp serve (worker {os.getpid()}): cannot start: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


def serve_workers(settings: Settings) -> int:
    if settings.redis_url is None:
        raise SettingsError("--workers: more than one worker needs --redis-url (shared"
                            " counters)")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_run_worker, args=(worker_settings(settings, i),),
                         name=f"pdp-worker-{i}") for i in range(settings.workers)]

    def forward(signum: int, _frame: FrameType | None) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)

    # SIGHUP reloads the workers' tokens and roles (app.py); left at its default, it would
    # end this parent and leave the workers running without one
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    for name, code in failed:  # which one, and how (a negative code is the signal)
        print(f"pdp serve: {name} exited {code}", file=sys.stderr)
    return 1 if failed else 0
