"""`pdp counters ack`: an admin accepts that the counter store lost its state.

Sidecars that noticed a loss (see ``redis_store``, "Lost state") flag it in the tenant's
slot (``pdp:{tenant}:lost``) and deny counter-bound rules. Acknowledging writes a fresh
``a`` epoch marker and removes the flag in one script call per tenant; every sidecar adopts
the new marker on its next call and counts from what the store holds now. Nothing else is
touched: the counts lost stay lost, which is what the admin accepts.

Without ``--tenant`` every flagged tenant is acknowledged (found by SCAN on every node);
``--tenant`` also covers a tenant whose loss no sidecar has noticed yet.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from pdp.counters import keys
from pdp.counters.redis_store import RedisClient, make_client
from pdp.counters.settings import CounterSettings

# KEYS: epoch marker, loss flag (one slot). ARGV: an id for the marker.
# Returns the flag's value ("<noticed ms> <marker seen>") or false when none was set.
_ACK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local flag = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[1], 'a:' .. ARGV[1] .. ':' .. string.format('%d', now))
redis.call('DEL', KEYS[2])
return flag
"""


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """One tenant acknowledged; ``noticed`` is when a sidecar flagged the loss (None: no
    flag was set, the tenant was named with ``--tenant``)."""

    tenant: str
    noticed: float | None


async def flagged_tenants(client: RedisClient) -> list[str]:
    """Tenants with an unacknowledged loss, from their flags on every node."""
    out: set[str] = set()
    async for key in client.scan_iter(match="pdp:{*}:lost", count=1000):
        text = key.decode() if isinstance(key, bytes) else str(key)
        tag = text[len("pdp:{"):-len("}:lost")]
        if "}" not in tag:  # the hash tag holds the escaped tenant, never a bare brace
            out.add(keys.unesc(tag))
    return sorted(out)


async def acknowledge(
    client: RedisClient, tenants: Sequence[str] | None = None
) -> list[Acknowledged]:
    """Write a fresh marker for ``tenants`` (default: every flagged tenant), clear flags."""
    names = list(dict.fromkeys(tenants)) if tenants else await flagged_tenants(client)
    marker_id = "ack-" + secrets.token_hex(6)
    done: list[Acknowledged] = []
    for tenant in names:
        prefix = keys.tenant_prefix(tenant)
        flag: Any = await client.eval(
            _ACK, 2, keys.epoch_key(prefix), keys.lost_key(prefix), marker_id
        )
        noticed = None
        if flag:
            text = flag.decode() if isinstance(flag, bytes) else str(flag)
            noticed = int(text.split(" ", 1)[0]) / 1000
        done.append(Acknowledged(tenant, noticed))
    return done


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdp counters", description="counter store"
                                     " administration")
    sub = parser.add_subparsers(dest="command", required=True)
    ack = sub.add_parser(
        "ack", help="accept a lost counter state (Redis restarted empty): sidecars resume",
        description="Acknowledge that the counter store lost its state. Counter-bound rules"
                    " denied with COUNTER_STATE_LOST apply again, from the counts the store"
                    " holds now, on each sidecar's next call.")
    ack.add_argument("--redis-url", default=os.environ.get("PDP_REDIS_URL"),
                     help="the counters' Redis (env PDP_REDIS_URL)")
    ack.add_argument("--cluster", action="store_true",
                     default=os.environ.get("PDP_REDIS_CLUSTER", "").lower() in ("1", "true"),
                     help="the URL points at a Redis Cluster (env PDP_REDIS_CLUSTER)")
    ack.add_argument("--tenant", action="append", default=None, metavar="TENANT",
                     help="acknowledge this tenant (repeatable; default: every tenant a"
                          " sidecar flagged as lost)")
    ack.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    return parser


def main(argv: Sequence[str]) -> int:
    """`pdp counters ack ...`: exit 0 when done (also when nothing was flagged), 2 on an
    error."""
    args = build_parser().parse_args(list(argv))
    if not args.redis_url:
        print("pdp counters ack: --redis-url (or PDP_REDIS_URL) is required", file=sys.stderr)
        return 2
    try:
        settings = CounterSettings(url=args.redis_url, cluster=args.cluster,
                                   connect_timeout=args.timeout, op_timeout=args.timeout)
        done = asyncio.run(_ack(settings, args.tenant, args.timeout))
    except (RedisError, OSError, TimeoutError, ValueError) as e:
        print(f"pdp counters ack: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if not done:
        print("no unacknowledged counter state loss is flagged; nothing to do"
              " (name a tenant with --tenant to write a fresh marker anyway)")
    for a in done:
        if a.noticed is None:
            print(f"tenant {a.tenant!r}: fresh epoch marker written (no loss was flagged)")
        else:
            when = dt.datetime.fromtimestamp(a.noticed, dt.UTC).isoformat(timespec="seconds")
            print(f"tenant {a.tenant!r}: loss noticed at {when.replace('+00:00', 'Z')}"
                  " acknowledged; sidecars resume on their next call")
    return 0


async def _ack(
    settings: CounterSettings, tenants: Sequence[str] | None, timeout: float
) -> list[Acknowledged]:
    client = make_client(settings)
    try:
        async with asyncio.timeout(timeout):
            return await acknowledge(client, tenants)
    finally:
        await client.aclose()
