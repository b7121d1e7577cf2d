"""Recursive-descent parser for the CEL grammar, with macro recognition.

Grammar (langdef.md): Expr = Or ["?" Or ":" Expr]; Or/And/Relation/Addition/Multiplication are
left-associative binary levels; Unary = ("!"|"-")* Member; Member = Primary ("." IDENT
["(" args ")"] | "[" Expr "]")*.  Nesting is bounded (MAX_DEPTH) so hostile input cannot
exhaust the Python stack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from . import ast as A
from .errors import CelCompileError
from .lexer import RESERVED, Lexer, Token
from .values import UInt

#: Internal function names of the optional syntax (cel-spec's optional extension):
#: ``a.?f`` is OPT_SELECT(a, "f"), ``a[?k]`` OPT_INDEX(a, k); ``[?x]`` and ``{?k: x}`` wrap
#: ``x`` in OPT_ELEMENT (only the literal's builder understands it).
OPT_SELECT = "_?._"
OPT_INDEX = "_[?_]"
OPT_ELEMENT = "@optelem"

MAX_DEPTH = 100
#: Selections, indexes and member calls in a row (``a.b.c``, ``x[0][1]``, ``s.f().g()``):
#: each is one more level of the tree every later stage walks, as nesting is. The spec asks
#: for at least 12; configs nest at most 64 levels (configparse.MAX_DEPTH).
MAX_CHAIN = MAX_DEPTH
MAX_SOURCE = 100_000
#: Nodes in one expression (after macros). Compiling costs ~50-200 µs a node in Python and
#: runs on the server's event loop (admission, start-up, a store update): the limit bounds
#: that pause. Real policies have tens of nodes; a long allow list is one list literal.
MAX_NODES = 1_000
INT64_MAX = (1 << 63) - 1

_BINOPS: list[dict[str, str]] = [
    {"<": "_<_", "<=": "_<=_", ">": "_>_", ">=": "_>=_", "==": "_==_", "!=": "_!=_",
     "in": "@in"},
    {"+": "_+_", "-": "_-_"},
    {"*": "_*_", "/": "_/_", "%": "_%_"},
]


class Parser:
    """Parses one expression; ``parse()`` returns the root node or raises CelCompileError."""

    def __init__(self, source: str, optional_syntax: bool = False) -> None:
        self.optional_syntax = optional_syntax
        if len(source) > MAX_SOURCE:
            raise CelCompileError(f"expression code point size exceeds limit {MAX_SOURCE}",
                                  source, 0)
        self.src = source
        self.toks = Lexer(source).tokens()
        self.i = 0
        self.depth = 0
        # how many selections/indexes/calls in a row end at a node: a chain continues
        # through parentheses (``(a.b).c``), so it is counted per node, not per loop
        # (the node is kept with its count, so its id is not reused while parsing)
        self._chains: dict[int, tuple[int, A.Expr]] = {}

    # -- helpers -------------------------------------------------------------------------
    def peek(self) -> Token:
        return self.toks[self.i]

    def advance(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def accept(self, kind: str) -> Token | None:
        if self.toks[self.i].kind == kind:
            return self.advance()
        return None

    def expect(self, kind: str, what: str = "") -> Token:
        t = self.peek()
        if t.kind != kind:
            raise self.error(f"Syntax error: expected {what or repr(kind)}, "
                             f"found {self._describe(t)}", t.offset)
        return self.advance()

    def _describe(self, t: Token) -> str:
        if t.kind == "EOF":
            return "<EOF>"
        return repr(self.src[t.offset:t.end])

    def error(self, msg: str, offset: int) -> CelCompileError:
        return CelCompileError(msg, self.src, offset)

    def _enter(self, offset: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nesting exceeds limit {MAX_DEPTH}", offset)

    # -- grammar -------------------------------------------------------------------------
    def parse(self) -> A.Expr:
        e = self.expr()
        t = self.peek()
        if t.kind != "EOF":
            raise self.error(f"Syntax error: unexpected {self._describe(t)}", t.offset)
        self._count(e)
        return e

    def _count(self, root: A.Expr) -> None:
        """Refuse a tree of more than MAX_NODES nodes (pointing at the one over)."""
        for n, e in enumerate(iter_nodes(root), 1):
            if n > MAX_NODES:
                raise self.error(f"expression has more than {MAX_NODES} nodes (the limit);"
                                 " split it, or test membership in one list literal",
                                 e.offset)

    def expr(self) -> A.Expr:
        self._enter(self.peek().offset)
        try:
            cond = self.logical("||")
            t = self.accept("?")
            if t is None:
                return cond
            a = self.logical("||")
            self.expect(":", "':'")
            b = self.expr()
            return A.Call(t.offset, "_?_:_", [cond, a, b])
        finally:
            self.depth -= 1

    def logical(self, op: str) -> A.Expr:
        sub: Callable[[], A.Expr] = ((lambda: self.logical("&&")) if op == "||"
                                     else (lambda: self.binary(0)))
        e = sub()
        while (t := self.accept(op)) is not None:
            rhs = sub()
            e = A.Call(t.offset, "_||_" if op == "||" else "_&&_", [e, rhs])
        return e

    def binary(self, level: int) -> A.Expr:
        if level == len(_BINOPS):
            return self.unary()
        ops = _BINOPS[level]
        e = self.binary(level + 1)
        while self.peek().kind in ops:
            t = self.advance()
            rhs = self.binary(level + 1)
            e = A.Call(t.offset, ops[t.kind], [e, rhs])
        return e

    def unary(self) -> A.Expr:
        t = self.peek()
        if t.kind == "!":
            ops = []
            while self.peek().kind == "!":
                ops.append(self.advance())
            neg = self.member()
            for o in reversed(ops):
                neg = A.Call(o.offset, "!_", [neg])
            return neg
        if t.kind == "-":
            ops = []
            while self.peek().kind == "-":
                ops.append(self.advance())
            nxt = self.peek()
            if nxt.kind in ("INT", "DOUBLE"):
                # the last minus belongs to the literal (so -9223372036854775808 is valid)
                lit = self.advance()
                val = -lit.value  # type: ignore[operator]
                if lit.kind == "INT" and not (-INT64_MAX - 1 <= val <= INT64_MAX):
                    raise self.error("invalid int literal", lit.offset)
                e: A.Expr = self.postfix(A.Const(ops[-1].offset, val))
                ops.pop()
            else:
                e = self.member()
            for o in reversed(ops):
                e = A.Call(o.offset, "-_", [e])
            return e
        return self.member()

    def member(self) -> A.Expr:
        return self.postfix(self.primary())

    def postfix(self, e: A.Expr) -> A.Expr:
        return self._postfix(e, self._chains.get(id(e), (0, e))[0])

    def _postfix(self, e: A.Expr, chain: int) -> A.Expr:
        while True:
            t = self.peek()
            if t.kind in (".", "["):
                chain += 1
                if chain > MAX_CHAIN:
                    raise self.error(f"more than {MAX_CHAIN} selections, indexes or calls in"
                                     " a row (the limit)", t.offset)
            if t.kind == ".":
                self.advance()
                optional = self.peek().kind == "?"
                if optional:
                    if not self.optional_syntax:
                        raise self.error("unsupported syntax '.?'", t.offset)
                    self.advance()
                name_tok = self.expect("IDENT", "a field name")
                name = str(name_tok.value)
                if optional:
                    # a.?f: optional.of(a.f) when a has f, else optional.none()
                    e = A.Call(t.offset, OPT_SELECT, [e, A.Const(name_tok.offset, name)])
                elif self.peek().kind == "(":
                    lp = self.advance()
                    args = self.args(")")
                    e = self.make_call(lp.offset, name, args, e)
                else:
                    e = A.Select(t.offset, e, name)
            elif t.kind == "[":
                self.advance()
                optional = self.peek().kind == "?"
                if optional:
                    if not self.optional_syntax:
                        raise self.error("unsupported syntax '[?'", t.offset)
                    self.advance()
                self._enter(t.offset)
                idx = self.expr()
                self.depth -= 1
                self.expect("]", "']'")
                e = A.Call(t.offset, OPT_INDEX if optional else "_[_]", [e, idx])
            else:
                if chain:
                    self._chains[id(e)] = (chain, e)
                return e

    def args(self, close: str) -> list[A.Expr]:
        out: list[A.Expr] = []
        if self.accept(close):
            return out
        while True:
            out.append(self.expr())
            if self.accept(close):
                return out
            self.expect(",", "','")

    def primary(self) -> A.Expr:
        t = self.advance()
        k = t.kind
        if k == "INT":
            if int(t.value) > INT64_MAX:  # type: ignore[call-overload]
                raise self.error("invalid int literal", t.offset)
            return A.Const(t.offset, t.value)
        if k == "UINT":
            return A.Const(t.offset, UInt(t.value))  # type: ignore[call-overload]
        if k in ("DOUBLE", "STRING", "BYTES"):
            return A.Const(t.offset, t.value)
        if k == "true":
            return A.Const(t.offset, True)
        if k == "false":
            return A.Const(t.offset, False)
        if k == "null":
            return A.Const(t.offset, None)
        if k == "(":
            self._enter(t.offset)
            e = self.expr()
            self.depth -= 1
            self.expect(")", "')'")
            return e
        if k == "[":
            self._enter(t.offset)
            elems = self.list_items("]")
            self.depth -= 1
            return A.ListExpr(t.offset, elems)
        if k == "{":
            self._enter(t.offset)
            entries = self.map_entries()
            self.depth -= 1
            return A.MapExpr(t.offset, entries)
        leading_dot = False
        if k == ".":
            leading_dot = True
            t = self.advance()
            k = t.kind
        if k == "IDENT":
            name = str(t.value)
            if name in RESERVED:
                raise self.error(f"reserved identifier: {name}", t.offset)
            if self.peek().kind == "(":
                lp = self.advance()
                args = self.args(")")
                fname = "." + name if leading_dot else name
                return self.make_call(lp.offset, fname, args, None)
            if self.peek().kind == "{":
                return self.struct(t, name, leading_dot)
            return A.Ident(t.offset, name, leading_dot)
        if k == "?":
            raise self.error("unsupported syntax '?'", t.offset)
        raise self.error(f"Syntax error: mismatched input {self._describe(t)}", t.offset)

    def _optional_marker(self) -> bool:
        """``?`` before a list element or map entry: kept only when its value is present."""
        if self.peek().kind != "?":
            return False
        if not self.optional_syntax:
            raise self.error("unsupported syntax '?'", self.peek().offset)
        self.advance()
        return True

    def list_items(self, close: str) -> list[A.Expr]:
        out: list[A.Expr] = []
        while not self.accept(close):
            optional = self._optional_marker()
            x = self.expr()
            out.append(A.Call(x.offset, OPT_ELEMENT, [x]) if optional else x)
            if not self.accept(","):
                self.expect(close, repr(close))
                break
        return out

    def map_entries(self) -> list[tuple[A.Expr, A.Expr]]:
        out: list[tuple[A.Expr, A.Expr]] = []
        while not self.accept("}"):
            optional = self._optional_marker()
            k = self.expr()
            self.expect(":", "':'")
            v = self.expr()
            out.append((k, A.Call(v.offset, OPT_ELEMENT, [v]) if optional else v))
            if not self.accept(","):
                self.expect("}", "'}'")
                break
        return out

    def struct(self, t: Token, name: str, leading_dot: bool) -> A.Expr:
        # Qualified message names (a.b.C{...}) are parsed from Select chains in postfix, but
        # pdp has no message types; we parse the simple form and let the checker reject it.
        lb = self.advance()
        fields: list[tuple[str, A.Expr]] = []
        while not self.accept("}"):
            f = self.expect("IDENT", "a field name")
            self.expect(":", "':'")
            fields.append((str(f.value), self.expr()))
            if not self.accept(","):
                self.expect("}", "'}'")
                break
        return A.StructExpr(lb.offset, ("." if leading_dot else "") + name, fields)

    # -- macros --------------------------------------------------------------------------
    def make_call(self, offset: int, name: str, args: list[A.Expr],
                  target: A.Expr | None) -> A.Expr:
        n = len(args)
        if target is None:
            if name == "has" and n == 1:
                arg = args[0]
                if not isinstance(arg, A.Select) or arg.test_only:
                    raise self.error("invalid argument to has() macro", offset)
                return A.Select(arg.offset, arg.operand, arg.field, True)
            return A.Call(offset, name, args)
        if name == "bind" and n == 3 and isinstance(target, A.Ident) and target.name == "cel":
            var = self._var(args[0], offset)
            return A.Comprehension(offset, "bind", args[1], var, None, [args[2]])
        kind = None
        if name in ("all", "exists", "exists_one", "existsOne") and n in (2, 3):
            kind = "exists_one" if name == "existsOne" else name
        elif name == "map" and n in (2, 3):
            kind = "map"
        elif name == "filter" and n == 2:
            kind = "filter"
        elif name == "transformList" and n in (3, 4):
            kind = "transformList"
        elif (name in ("transformMap", "transformMapEntry") and n in (3, 4)) or (
                name in ("optMap", "optFlatMap") and n == 2):
            kind = name
        if kind is None:
            return A.Call(offset, name, args, target)
        two = kind.startswith("transform") or (kind in ("all", "exists", "exists_one")
                                                and n == 3)
        var = self._var(args[0], offset)
        var2 = self._var(args[1], offset) if two else None
        rest = args[2:] if two else args[1:]
        if var2 is not None and var2 == var:
            raise self.error(f"duplicate variable name: {var}", offset)
        return A.Comprehension(offset, kind, target, var, var2, rest)

    def _var(self, e: A.Expr, offset: int) -> str:
        if not isinstance(e, A.Ident) or e.leading_dot:
            raise self.error("argument must be a simple name", e.offset)
        return e.name


def parse(source: str, optional_syntax: bool = False) -> A.Expr:
    """Parse ``source`` into an expression tree (raises CelCompileError); the optional
    syntax (``.?``, ``[?``, ``[?x]``, ``{?k: x}``) only with ``optional_syntax``."""
    return Parser(source, optional_syntax).parse()


def iter_nodes(root: A.Expr) -> Iterator[A.Expr]:
    """Every node of a parsed expression, without recursion."""
    todo = [root]
    while todo:
        e = todo.pop()
        yield e
        todo.extend(A.children(e))


def count_nodes(root: A.Expr) -> int:
    """Nodes of a parsed expression (what MAX_NODES bounds)."""
    return sum(1 for _ in iter_nodes(root))
