"""Static types for the checker (gradual typing: ``dyn`` is assignable both ways)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class T:
    """A CEL type.  ``kind`` is a primitive name, ``list``, ``map``, ``type``, ``optional``,
    ``param`` (a type parameter, named by ``name``), ``abstract`` (named, with params) or
    ``object`` (a declared record, named by ``name``, with ``fields``: the request sections
    policies read, so that a misspelt field is a compile error; at run time a plain dict)."""

    kind: str
    params: tuple[T, ...] = ()
    name: str = ""
    fields: tuple[tuple[str, T], ...] = ()

    def field(self, name: str) -> T | None:
        """The type of field ``name`` of an object type (None: no such field)."""
        for n, t in self.fields:
            if n == name:
                return t
        return None

    def __str__(self) -> str:
        k = self.kind
        if k == "list":
            return f"list({self.params[0]})"
        if k == "map":
            return f"map({self.params[0]}, {self.params[1]})"
        if k == "type":
            return f"type({self.params[0]})" if self.params else "type"
        if k == "optional":
            return f"optional_type({self.params[0]})"
        if k == "param":
            return self.name
        if k == "object":
            return self.name
        if k == "abstract":
            inner = ", ".join(str(p) for p in self.params)
            return f"{self.name}({inner})" if self.params else self.name
        return k


INT, UINT, DOUBLE, BOOL = T("int"), T("uint"), T("double"), T("bool")
STRING, BYTES, NULL = T("string"), T("bytes"), T("null")
TIMESTAMP, DURATION = T("timestamp"), T("duration")
DYN, ERROR = T("dyn"), T("error")
PRIMITIVES = {t.kind: t for t in (INT, UINT, DOUBLE, BOOL, STRING, BYTES, NULL, TIMESTAMP,
                                  DURATION, DYN, ERROR)}


def list_of(e: T) -> T:
    return T("list", (e,))


def map_of(k: T, v: T) -> T:
    return T("map", (k, v))


def type_of(t: T) -> T:
    return T("type", (t,))


def optional_of(t: T) -> T:
    return T("optional", (t,))


#: Object types whose field values may be runtime.Deferred errors (a policy's variables).
DEFERRED_OBJECTS = frozenset({"variables"})

#: Object types that mirror proto3 messages of the API (the request sections): ``has()`` on
#: their fields follows proto3 presence, as cel-go's does on a message: a field is set when
#: it is not its default ("", 0, false, an empty list or map, an unset Timestamp). Without
#: this every field would be "set", since the converter fills each one in.
PROTO_OBJECTS = frozenset({"request", "change", "agent", "device", "rollout", "approval"})


def object_of(type_name: str, /, **fields: T) -> T:
    """A record type: ``object_of("agent", id=STRING, labels=map_of(STRING, STRING))``."""
    return T("object", name=type_name, fields=tuple(fields.items()))


_fresh = itertools.count()


def fresh_param() -> T:
    return T("param", name=f"_T{next(_fresh)}")


def parse_type(text: str) -> T:
    """Parse the compact type syntax used in declarations: ``map(K, list(int))``."""
    pos = 0

    def parse() -> T:
        nonlocal pos
        start = pos
        while pos < len(text) and (text[pos].isalnum() or text[pos] in "_."):
            pos += 1
        name = text[start:pos]
        params: list[T] = []
        if pos < len(text) and text[pos] == "(":
            pos += 1
            while True:
                while text[pos] == " ":
                    pos += 1
                params.append(parse())
                while text[pos] == " ":
                    pos += 1
                if text[pos] == ")":
                    pos += 1
                    break
                assert text[pos] == ","
                pos += 1
        if name in ("list", "map", "type", "optional"):
            return T(name, tuple(params))
        if name in PRIMITIVES:
            return PRIMITIVES[name]
        if len(name) <= 2 and name[0].isupper():
            return T("param", name=name)
        return T("abstract", tuple(params), name)

    return parse()


class Subst:
    """Type-parameter bindings accumulated while checking one expression.

    A parameter is bound at most once, so a failed attempt is undone by forgetting the
    bindings made since a :meth:`mark` (a trail), not by copying the whole map: the map
    grows with the expression, and a copy per attempted overload made checking quadratic.
    """

    def __init__(self) -> None:
        self.m: dict[str, T] = {}
        self._trail: list[str] = []

    def bind(self, name: str, t: T) -> None:
        self.m[name] = t
        self._trail.append(name)

    def mark(self) -> int:
        """A point to :meth:`undo` back to."""
        return len(self._trail)

    def undo(self, mark: int) -> None:
        """Forget the bindings made since ``mark``."""
        trail, m = self._trail, self.m
        while len(trail) > mark:
            del m[trail.pop()]

    def resolve(self, t: T) -> T:
        """Apply bindings deeply; unbound parameters stay parameters."""
        if t.kind == "param":
            b = self.m.get(t.name)
            return t if b is None else self.resolve(b)
        if t.params:
            return T(t.kind, tuple(self.resolve(p) for p in t.params), t.name)
        return t

    def finalize(self, t: T) -> T:
        """Resolve and turn still-unbound parameters into dyn (for reporting)."""
        t = self.resolve(t)
        if t.kind == "param":
            return DYN
        if t.params:
            return T(t.kind, tuple(self.finalize(p) for p in t.params), t.name)
        return t

    def _occurs(self, name: str, t: T) -> bool:
        t = self.resolve(t)
        if t.kind == "param":
            return t.name == name
        return any(self._occurs(name, p) for p in t.params)

    def assignable(self, target: T, src: T) -> bool:
        """Can a value of type ``src`` flow where ``target`` is expected?  Binds params.

        Bindings are only committed when the whole check succeeds."""
        saved = self.mark()
        ok = self._assign(target, src)
        if not ok:
            self.undo(saved)
        return ok

    def _assign(self, a: T, b: T) -> bool:
        a, b = self.resolve(a), self.resolve(b)
        if a == b:
            return True
        if a.kind == "param":
            if b.kind == "param" or not self._occurs(a.name, b):
                self.bind(a.name, b)
                return True
            return False
        if b.kind == "param":
            if not self._occurs(b.name, a):
                self.bind(b.name, a)
                return True
            return False
        if a.kind in ("dyn", "error") or b.kind in ("dyn", "error"):
            return True
        if a.kind == "map" and b.kind == "object":
            # a record is a map with string keys wherever it is used as one ("k" in agent,
            # agent["id"], iteration): typed only where it is selected by field name
            return self._assign(a.params[0], STRING) and self._assign(a.params[1], DYN)
        if a.kind == "null" and b.kind in ("optional", "abstract", "timestamp", "duration"):
            return True
        if b.kind == "null" and a.kind in ("optional", "abstract", "timestamp", "duration"):
            return True
        if a.kind == "type" and b.kind == "type":
            return True  # type values compare at runtime regardless of parameters
        if a.kind != b.kind or a.name != b.name or len(a.params) != len(b.params):
            return False
        return all(self._assign(x, y) for x, y in zip(a.params, b.params, strict=True))

    def join(self, a: T, b: T) -> T:
        """Common type of two branches / list elements (dyn when they differ)."""
        a, b = self.resolve(a), self.resolve(b)
        if a == b:
            return a
        if a.kind == "dyn" or b.kind == "dyn":
            # dyn wins over everything except for nested parameterised types
            return DYN
        if a.kind == "null" and b.kind in ("optional", "abstract"):
            return b
        if b.kind == "null" and a.kind in ("optional", "abstract"):
            return a
        if a.kind == b.kind and a.name == b.name and len(a.params) == len(b.params) and a.params:
            saved = self.mark()
            params = []
            for x, y in zip(a.params, b.params, strict=True):
                rx, ry = self.resolve(x), self.resolve(y)
                if rx.kind == "param" or ry.kind == "param":
                    if not self._assign(rx, ry):
                        self.undo(saved)
                        return DYN
                    params.append(self.resolve(rx))
                else:
                    params.append(self.join(rx, ry))
            return T(a.kind, tuple(params), a.name)
        if self.assignable(a, b) and b.kind != "dyn":
            return self.resolve(a)
        return DYN


def is_dynish(t: T) -> bool:
    """True when ``t`` is or contains dyn / an unbound parameter."""
    return t.kind in ("dyn", "param", "error") or any(is_dynish(p) for p in t.params)
