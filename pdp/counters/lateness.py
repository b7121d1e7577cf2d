"""Refusing a reservation that reaches Redis after its caller gave up on it.

Why: a caller waits for a reservation at most its timeout, then denies (the store did not
answer). Redis paused or slow (a fork, a long command, SIGSTOP) still runs the queued call
when it resumes: the push was denied, yet it took a slot of the cap or started a cooldown.
So each reservation carries the instant, on the Redis clock, after which its caller has
given up, and the script refuses to commit past it (``reserve.lua``, ARGV[5]).

The instant is the caller's deadline plus an upper bound of (Redis clock - local monotonic
clock), learnt from replies: a reply's ``now`` was read between sending and receiving, so
``now - sent`` bounds the offset from above. With an upper bound the script never refuses a
call whose caller is still waiting, unless the Redis clock jumped forward; then the refusal
arrives in time, which proves the bound stale: it is replaced by the new reading and the
call is sent once more. Between readings the bound grows by ``DRIFT`` (1 ms per second, far
more than a clock slews), so a slowly drifting clock does not cause refusals either. Per
tenant prefix: tenants can live on different Redis Cluster nodes, with different clocks.
"""

from __future__ import annotations

#: How much faster than the local clock the Redis clock may run between two readings.
DRIFT = 0.001
#: Tenants whose bound is kept (each a few dozen bytes); beyond it the oldest are forgotten.
MAX_PREFIXES = 100_000


class Lateness:
    """Per tenant prefix: an upper bound of (Redis ms - local monotonic ms)."""

    def __init__(self) -> None:
        self._bound: dict[str, tuple[float, float]] = {}  # prefix -> (bound ms, read at s)
        self._any: tuple[float, float] | None = None  # read at start-up: before any reply

    def observe_server(self, sent: float, redis_now_ms: float) -> None:
        """A reading not tied to a tenant (``TIME`` when the scripts are loaded): used for
        tenants with no reply yet. On a cluster another node's clock may differ; a call it
        makes refused then is sent again (as after a jump), never denied for it."""
        self._any = (redis_now_ms - sent * 1000, sent)

    def expires(self, prefix: str, sent: float, timeout: float) -> str:
        """ARGV[5] for a call sent at ``sent`` (monotonic s) that waits ``timeout`` s: the
        Redis-clock ms after which it must not commit; "" while nothing is known yet."""
        hit = self._bound.get(prefix) or self._any
        if hit is None:
            return ""
        bound, read_at = hit
        bound += max(0.0, sent - read_at) * 1000 * DRIFT
        return str(int((sent + timeout) * 1000 + bound) + 1)

    def observe(self, prefix: str, sent: float, redis_now_ms: int, *, stale: bool = False
                ) -> None:
        """A reply of a call sent at ``sent`` read the Redis clock as ``redis_now_ms``;
        ``stale``: that call was refused while its caller still waited (the clock jumped)."""
        reading = redis_now_ms - sent * 1000
        hit = self._bound.get(prefix)
        if hit is not None and not stale:
            bound, read_at = hit
            grown = bound + max(0.0, sent - read_at) * 1000 * DRIFT
            if grown <= reading:
                return  # the older bound is still the tighter one
        elif hit is None and len(self._bound) >= MAX_PREFIXES:
            self._bound.pop(next(iter(self._bound)))
        self._bound[prefix] = (reading, sent)
