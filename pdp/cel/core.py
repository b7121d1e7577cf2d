"""The standard CEL function set (langdef.md "Standard Definitions")."""

from __future__ import annotations

from typing import Any

from . import meter as M
from . import stdlib as S
from .functions import Registry
from .regex import matches

_ORD = ["bool,bool", "int,int", "uint,uint", "double,double", "string,string", "bytes,bytes",
        "timestamp,timestamp", "duration,duration", "int,uint", "int,double", "uint,int",
        "uint,double", "double,int", "double,uint"]


def register_core(r: Registry) -> None:
    """Operators, conversions, string and time functions every environment has."""
    r.add("_+_", "int,int->int; uint,uint->uint; double,double->double; "
          "string,string->string; bytes,bytes->bytes; list(A),list(A)->list(A); "
          "timestamp,duration->timestamp; duration,timestamp->timestamp; "
          "duration,duration->duration", S.add)
    r.add("_-_", "int,int->int; uint,uint->uint; double,double->double; "
          "timestamp,timestamp->duration; timestamp,duration->timestamp; "
          "duration,duration->duration", S.sub)
    r.add("_*_", "int,int->int; uint,uint->uint; double,double->double", S.mul)
    r.add("_/_", "int,int->int; uint,uint->uint; double,double->double", S.div)
    r.add("_%_", "int,int->int; uint,uint->uint", S.mod)
    r.add("-_", "int->int; double->double", S.neg)
    r.add("!_", "bool->bool", S.logical_not)
    r.add("_==_", "A,A->bool", S.cel_eq)
    r.add("_!=_", "A,A->bool", S.cel_ne)
    for op, cmp in (("_<_", S.lt), ("_<=_", S.le), ("_>_", S.gt), ("_>=_", S.ge)):
        r.add(op, [f"{p}->bool" for p in _ORD], cmp)
    r.add("@in", "A,list(A)->bool; A,map(A,B)->bool", S.contains_in)
    r.add("_[_]", "list(A),int->A; map(A,B),A->B; optional(list(A)),int->optional(A); "
          "optional(map(A,B)),A->optional(B)", S.index)
    r.add("size", "string->int; bytes->int; list(A)->int; map(A,B)->int; "
          "string.()->int; bytes.()->int; list(A).()->int; map(A,B).()->int", S.size)
    r.add("contains", "string.(string)->bool", S.contains, cost=1)
    r.add("startsWith", "string.(string)->bool", S.starts_with, grow=M.grow_prefix)
    r.add("endsWith", "string.(string)->bool", S.ends_with, grow=M.grow_prefix)
    r.add("matches", "string.(string)->bool; string,string->bool", matches, cost=4,
          grow=M.grow_matches, clocked=True)
    r.add("int", "int->int; uint->int; double->int; string->int; timestamp->int", S.to_int,
          cost=1)
    r.add("uint", "uint->uint; int->uint; double->uint; string->uint", S.to_uint, cost=1)
    r.add("double", "double->double; int->double; uint->double; string->double", S.to_double,
          cost=1)
    r.add("string", "string->string; int->string; uint->string; double->string; "
          "bool->string; bytes->string; timestamp->string; duration->string", S.to_string,
          grow=M.grow_to_string)
    r.add("bytes", "bytes->bytes; string->bytes", S.to_bytes, grow=M.grow_to_bytes)
    r.add("bool", "bool->bool; string->bool", S.to_bool, cost=1)
    r.add("timestamp", "timestamp->timestamp; string->timestamp; int->timestamp",
          S.to_timestamp, cost=1)
    r.add("duration", "duration->duration; string->duration", S.to_duration, cost=1)
    r.add("dyn", "A->dyn", S.to_dyn)
    r.add("type", "A->type(A)", S.type_of)
    for name, fn in S.TS_GETTERS.items():
        sigs = ["timestamp.()->int", "timestamp.(string)->int"]
        if name in ("getHours", "getMinutes", "getSeconds", "getMilliseconds"):
            sigs.append("duration.()->int")
        r.add(name, sigs, _member(fn))


def _member(fn: Any) -> Any:
    return fn
