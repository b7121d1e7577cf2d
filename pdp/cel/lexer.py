"""Tokenizer for CEL source text.

Literals are decoded here (escapes, raw strings, bytes), so the parser only ever sees values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import CelCompileError

RESERVED = frozenset({
    "as", "break", "const", "continue", "else", "for", "function", "if", "import", "let",
    "loop", "package", "namespace", "return", "var", "void", "while"})

PUNCT3: tuple[str, ...] = ()
PUNCT2 = ("==", "!=", "<=", ">=", "&&", "||")
PUNCT1 = "+-*/%!<>?:.,()[]{}"


@dataclass(frozen=True, slots=True)
class Token:
    """One lexical token; ``value`` holds the decoded literal for literal kinds."""

    kind: str  # INT UINT DOUBLE STRING BYTES IDENT EOF or the punctuation text
    value: object
    offset: int
    end: int


_SIMPLE_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", "'": "'", '"': '"', "`": "`", "?": "?",
}
_HEX = set("0123456789abcdefABCDEF")


class Lexer:
    """Turns source text into a list of tokens; raises CelCompileError with a position."""

    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0
        self.n = len(source)

    def error(self, msg: str, offset: int) -> CelCompileError:
        return CelCompileError(msg, self.src, offset)

    def tokens(self) -> list[Token]:
        out: list[Token] = []
        while True:
            tok = self.next()
            out.append(tok)
            if tok.kind == "EOF":
                return out

    def _skip_ws(self) -> None:
        src, n = self.src, self.n
        while self.pos < n:
            c = src[self.pos]
            if c in " \t\n\r\f\v":
                self.pos += 1
            elif src.startswith("//", self.pos):
                nl = src.find("\n", self.pos)
                self.pos = n if nl < 0 else nl + 1
            else:
                return

    def next(self) -> Token:
        self._skip_ws()
        src, start = self.src, self.pos
        if start >= self.n:
            return Token("EOF", None, start, start)
        c = src[start]
        # string / bytes literals with prefixes
        if c in "'\"" or (c in "rRbB" and self._string_prefix()):
            return self._string()
        if c.isascii() and (c.isalpha() or c == "_"):
            p = start + 1
            while p < self.n and src[p].isascii() and (src[p].isalnum() or src[p] == "_"):
                p += 1
            word = src[start:p]
            self.pos = p
            if word in ("true", "false", "null", "in"):
                return Token(word, None, start, p)
            return Token("IDENT", word, start, p)
        if (c.isascii() and c.isdigit()) or (c == "." and start + 1 < self.n
                                          and src[start + 1].isascii()
                                          and src[start + 1].isdigit()):
            return self._number()
        two = src[start:start + 2]
        if two in PUNCT2:
            self.pos += 2
            return Token(two, None, start, start + 2)
        if c in PUNCT1:
            self.pos += 1
            return Token(c, None, start, start + 1)
        if c == "`":
            raise self.error("unsupported syntax: '`'", start)
        raise self.error(f"Syntax error: token recognition error at: '{c}'", start)

    def _string_prefix(self) -> bool:
        src, p = self.src, self.pos
        prefix = ""
        while p < self.n and src[p] in "rRbB" and len(prefix) < 2:
            prefix += src[p]
            p += 1
        if p < self.n and src[p] in "'\"" and prefix:
            low = prefix.lower()
            return low in ("r", "b", "rb", "br")
        return False

    def _number(self) -> Token:
        src, start = self.src, self.pos
        p = start
        n = self.n
        if src.startswith(("0x", "0X"), p):
            p += 2
            q = p
            while p < n and src[p] in _HEX:
                p += 1
            if p == q:
                raise self.error("Syntax error: invalid hex literal", start)
            val = int(src[q:p], 16)
            if p < n and src[p] in "uU":
                self.pos = p + 1
                return self._int_tok("UINT", val, start)
            self.pos = p
            return self._int_tok("INT", val, start)
        while p < n and src[p].isascii() and src[p].isdigit():
            p += 1
        is_float = False
        if p + 1 < n and src[p] == "." and src[p + 1].isascii() and src[p + 1].isdigit():
            is_float = True
            p += 1
            while p < n and src[p].isascii() and src[p].isdigit():
                p += 1
        if p < n and src[p] in "eE":
            q = p + 1
            if q < n and src[q] in "+-":
                q += 1
            if q < n and src[q].isascii() and src[q].isdigit():
                is_float = True
                p = q
                while p < n and src[p].isascii() and src[p].isdigit():
                    p += 1
        text = src[start:p]
        if is_float:
            self.pos = p
            value = float(text)
            if value == math.inf:  # cel-go's parser refuses it too
                raise self.error("floating point literal out of range", start)
            return Token("DOUBLE", value, start, p)
        if len(text) > 40:  # past any int64 / uint64 (and Python's int() digit limit)
            raise self.error("integer literal out of range", start)
        val = int(text)
        if p < n and src[p] in "uU":
            self.pos = p + 1
            return self._int_tok("UINT", val, start)
        self.pos = p
        return self._int_tok("INT", val, start)

    def _int_tok(self, kind: str, val: int, start: int) -> Token:
        # INT range is checked by the parser, which knows about a leading minus sign.
        if kind == "UINT" and val >= 1 << 64:
            raise self.error("invalid uint literal", start)
        return Token(kind, val, start, self.pos)

    def _string(self) -> Token:
        src, start = self.src, self.pos
        p = start
        raw = is_bytes = False
        while src[p] in "rRbB":
            if src[p] in "rR":
                raw = True
            else:
                is_bytes = True
            p += 1
        q = src[p]
        triple = src.startswith(q * 3, p)
        delim = q * 3 if triple else q
        p += len(delim)
        parts: list[str] = []  # for bytes: chars < 256 stand for raw bytes, others are text
        byte_chunks: list[bytes] = []

        def emit_text(s: str) -> None:
            if is_bytes:
                byte_chunks.append(s.encode("utf-8"))
            else:
                parts.append(s)

        def emit_byte(b: int) -> None:
            if is_bytes:
                byte_chunks.append(bytes([b]))
            else:
                parts.append(chr(b))

        n = self.n
        while True:
            if p >= n:
                raise self.error("Syntax error: unterminated string literal", start)
            if src.startswith(delim, p):
                p += len(delim)
                break
            c = src[p]
            if not triple and c in "\r\n":
                raise self.error("Syntax error: newline in string literal", p)
            if c == "\\":
                if raw:
                    emit_text(c)
                    p += 1
                    continue
                p = self._escape(p, is_bytes, emit_text, emit_byte)
                continue
            emit_text(c)
            p += 1
        self.pos = p
        if is_bytes:
            return Token("BYTES", b"".join(byte_chunks), start, p)
        return Token("STRING", "".join(parts), start, p)

    def _escape(self, p: int, is_bytes: bool, emit_text: object, emit_byte: object) -> int:
        src, n = self.src, self.n
        assert callable(emit_text) and callable(emit_byte)
        if p + 1 >= n:
            raise self.error("Syntax error: invalid escape sequence", p)
        e = src[p + 1]
        if e in _SIMPLE_ESCAPES:
            emit_text(_SIMPLE_ESCAPES[e])
            return p + 2
        if e in "xX":
            h = src[p + 2:p + 4]
            if len(h) != 2 or not set(h) <= _HEX:
                raise self.error("Syntax error: invalid hex escape", p)
            emit_byte(int(h, 16))
            return p + 4
        if e in "uU":
            width = 4 if e == "u" else 8
            h = src[p + 2:p + 2 + width]
            if len(h) != width or not set(h) <= _HEX:
                raise self.error("Syntax error: invalid unicode escape", p)
            cp = int(h, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise self.error("Syntax error: invalid unicode code point", p)
            emit_text(chr(cp))
            return p + 2 + width
        if e in "0123":
            o = src[p + 1:p + 4]
            if len(o) != 3 or not set(o) <= set("01234567"):
                raise self.error("Syntax error: invalid octal escape", p)
            emit_byte(int(o, 8))
            return p + 4
        raise self.error("Syntax error: invalid escape sequence", p)
