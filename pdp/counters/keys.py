"""Redis key layout, shared by both stores so they hold the same shape of state.

Every key starts with ``pdp:{<tenant>}``: the braces are a Redis Cluster hash tag, so all
keys of one tenant land in one slot and one Lua call may touch them all. Components are
escaped so that a ``:``, ``{`` or ``}`` inside a tenant, counter or scope name can neither
collide with another key nor break the hash tag.

* ``pdp:{t}:cap:<counter>:<scope>:<YYYY-MM-DD>``  DAILY_CAP count of one local day
* ``pdp:{t}:cool:<counter>:<scope>``             COOLDOWN: time of the last allowed reserve
* ``pdp:{t}:vel:<counter>:<scope>``              VELOCITY: sorted set of reserve times
* ``pdp:{t}:ev:<scope>``                         ROLLBACK_RATE: hash of bucketed event counts
* ``pdp:{t}:step:<scope>``                       MIN_STEP_DURATION: time of the last advance
* ``pdp:{t}:evid:<kind>:<event key>:<scope>``    an idempotent event recorded under a scope
* ``pdp:{t}:call:<id>``                          a script call that changed something, for
  10 s: the same call arriving again (a retry after its reply was lost) does nothing
* ``pdp:{t}:epoch``                              the epoch marker (Redis only; see below)
* ``pdp:{t}:lost``                               set while a loss of this tenant is unacknowledged

Every key expires with its window except the epoch marker: it must outlive any idle time
(its absence is what tells a loss), and there is one per tenant ever used. It lives in the
tenant's own slot so the reservation script checks it in the same call.
"""

from __future__ import annotations


def esc(part: str) -> str:
    """Escape one key component (reversible, keeps ordinary names readable).

    ``%`` first, so the escapes themselves stay unambiguous; chained ``replace`` is several
    times faster than ``str.translate`` with a dict on these short strings (hot path).
    """
    return part.replace("%", "%25").replace(":", "%3A").replace("{", "%7B").replace("}", "%7D")


def tenant_prefix(tenant: str) -> str:
    if not tenant:
        raise ValueError("tenant must not be empty")
    return f"pdp:{{{esc(tenant)}}}"


def cap_key(prefix: str, counter: str, scope: str, day: str) -> str:
    return f"{prefix}:cap:{esc(counter)}:{esc(scope)}:{day}"


def cooldown_key(prefix: str, counter: str, scope: str) -> str:
    return f"{prefix}:cool:{esc(counter)}:{esc(scope)}"


def velocity_key(prefix: str, counter: str, scope: str) -> str:
    return f"{prefix}:vel:{esc(counter)}:{esc(scope)}"


def events_key(prefix: str, scope: str) -> str:
    return f"{prefix}:ev:{esc(scope)}"


def step_key(prefix: str, scope: str) -> str:
    return f"{prefix}:step:{esc(scope)}"


def unesc(part: str) -> str:
    """Undo :func:`esc` (``%25`` last, so an escaped escape stays literal)."""
    return part.replace("%3A", ":").replace("%7B", "{").replace("%7D", "}").replace("%25", "%")


def epoch_key(prefix: str) -> str:
    return f"{prefix}:epoch"


def lost_key(prefix: str) -> str:
    return f"{prefix}:lost"


def event_id_key(prefix: str, kind_code: str, event_key: str, scope: str) -> str:
    """An event's key, once recorded under ``scope`` (record.lua builds the same)."""
    return f"{prefix}:evid:{kind_code}:{esc(event_key)}:{esc(scope)}"
