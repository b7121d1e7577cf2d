"""The encoding of events: the fast path writes exactly the bytes the general path writes,
and each record names the form (v1 / v2 / v3) its hash was computed over."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from pdp.audit import chain
from pdp.audit.events import to_jsonable

SHARED = [{"name": f"p{i}", "version": 1, "content_hash": f"sha256:{i:064x}",
           "status": "active", "builtin": i < 2} for i in range(12)]


def _general(event: Any) -> chain.EncodedEvent:
    """to_jsonable first, then the plain definition of the v3 text."""
    data = to_jsonable(event)
    return chain.EncodedEvent(chain.text_v3(data), 3)


def test_fast_and_general_paths_write_identical_records() -> None:
    events: list[Any] = [
        {"type": "Decision", "decision_id": f"d{i}", "allowed": i % 2 == 0, "elapsed_ms": 0.5,
         "policies": SHARED, "reasons": [], "request": {"agent": {"labels": {"é": "ü"}}}}
        for i in range(5)
    ]
    events += [{"type": "x", "policies": [{"b": 1, "a": 2}]},
               {"a": (1, 2)}, {1: "x", "b": 2}, {"big": 1e16, "small": 1e-5, "neg": -0.0},
               {"d": dt.date(2026, 1, 1), "w": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
               {"s": "\x00pdp-not-the-hole\x00", "u": "\u2028\x7f\x1f\"\\"}]
    head = chain.ChainHead()
    for event in events:
        fast = chain.make_entry(chain.encode_event(event), head).line
        general = chain.make_entry(_general(event), head).line
        assert fast == general, event
        record = chain.parse_line(fast)
        assert record["v"] == 3 and chain.hash_ok(record)
        head = chain.ChainHead(head.seq + 1, record["hash"])


def test_integers_beyond_64_bits_fall_back_to_format_v1() -> None:
    e = chain.make_entry({"type": "x", "n": 10**30}, chain.ChainHead())
    record = chain.parse_line(e.line)
    assert record["v"] == 1 and record["event"]["n"] == 10**30
    assert chain.hash_ok(record)
    assert chain.record_hash(record) == chain.record_hash({**record, "v": 1})


def test_each_version_hashes_with_its_own_canonical_form() -> None:
    body = {"v": 1, "seq": 1, "prev": chain.GENESIS, "event": {"x": 1e-05}}
    v1 = {**body, "hash": chain.record_hash(body)}
    v2 = {**body, "v": 2}
    v2["hash"] = chain.record_hash(v2)
    v3 = {"event": {"x": 1e-05}, "prev": chain.GENESIS, "seq": 1, "v": 3}
    v3["hash"] = chain.record_hash(v3)
    assert b'"x":1e-05' in chain.canonical(body) and b'"x":0.00001' in chain.canonical_v2(v2)
    assert chain.hash_ok(v1) and chain.hash_ok(v2) and chain.hash_ok(v3)
    assert not chain.hash_ok({**v1, "v": 2}) and not chain.hash_ok({**v2, "v": 3})
    assert not chain.hash_ok({**v3, "v": 2}) and not chain.hash_ok({**v2, "v": 4})


def test_v3_hashes_the_line_as_written() -> None:
    """v3 does not sort: the hash is over the line's own bytes after the hash field, so a
    verifier needs only the line. Reordering keys inside an event is an edit like any other;
    whitespace between tokens is not (readers re-encode what they parse)."""
    e = chain.make_entry({"type": "x", "b": 1, "a": [1.5, "é"]}, chain.ChainHead())
    assert e.line.startswith(b'{"hash":"' + e.hash.encode() + b'","event":{"type":"x","b":1,')
    body = b"{" + e.line[len(b'{"hash":"') + 64 + 2:].rstrip(b"\n")
    assert hashlib.sha256(body).hexdigest() == e.hash
    assert chain.hash_ok(chain.parse_line(e.line))
    spaced = e.line.replace(b'"b":1', b'"b": 1')
    assert chain.hash_ok(chain.parse_line(spaced))
    swapped = e.line.replace(b'"b":1,"a":[1.5,"\xc3\xa9"]', b'"a":[1.5,"\xc3\xa9"],"b":1')
    assert swapped != e.line
    assert not chain.hash_ok(chain.parse_line(swapped))


def test_a_nan_literal_is_not_a_record() -> None:
    """v2 and v3 write a stray NaN as null; a NaN literal edited into a line must not parse back to
    something that hashes like the original."""
    e = chain.make_entry({"type": "x", "m": None}, chain.ChainHead())
    edited = e.line.replace(b'"m":null', b'"m":NaN')
    try:
        chain.parse_line(edited)
    except ValueError:
        pass
    else:
        raise AssertionError("NaN literal accepted")


def test_entries_carry_type_and_tenant_without_parsing_their_line() -> None:
    """Sinks and watchers filter on type and tenant; a written record is not parsed back
    into objects for that (most records are only ever written)."""
    e = chain.make_entry({"type": "Decision", "tenant": "acme", "x": 1}, chain.ChainHead())
    assert e.tags == ("Decision", "acme")
    assert e._record is None  # nothing parsed yet
    assert e.record["event"]["tenant"] == "acme"  # on demand
    again = chain.entry_from_line(e.line)
    assert again.tags == e.tags and again.hash == e.hash
    odd = chain.make_entry(["not", "an", "object"], chain.ChainHead())
    assert odd.tags is None and odd.record["event"] == ["not", "an", "object"]
