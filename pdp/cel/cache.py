"""Bounded LRU cache of compiled programs keyed by (environment, source hash)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from .program import Environment, Program


class ProgramCache:
    """Compile each (environment, source) once; evicts least recently used beyond maxsize.

    Thread-safe; ``hits`` / ``misses`` count lookups.  Compile errors are not cached."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[tuple[str, str, int | None, bool], Program] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get_or_compile(self, env: Environment, source: str, max_cost: int | None = None,
                       check: bool = True) -> Program:
        key = (env.cache_key(), hashlib.sha256(source.encode("utf-8")).hexdigest(),
               max_cost, check)
        with self._lock:
            prog = self._data.get(key)
            if prog is not None:
                self.hits += 1
                self._data.move_to_end(key)
                return prog
            self.misses += 1
        prog = env.compile(source, max_cost=max_cost, check=check)
        with self._lock:
            self._data[key] = prog
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return prog

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
