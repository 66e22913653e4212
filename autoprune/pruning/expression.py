"""Symbolic pruning metrics: expression trees over W, X, G, Hd, Hi, their canonical string, a
whitelist parser back from it, and compilation to protected tensor operations.

Notation (one linear layer, y = W x), as in ``autoprune.pruning.metrics``:
    W  (out, in)  weight
    X  (in,)      per input channel activation norm, broadcast along rows as (1, in)
    G  (out, in)  root-mean-square gradient of the LM loss w.r.t. W
    Hd (in,)      diagonal of the layer's Hessian H = 2/n X X^T (damped 1%, as SparseGPT)
    Hi (in,)      diagonal of the upper Cholesky factor of H^-1, SparseGPT's [H^-1]_jj: the OBS
                  saliency SparseGPT prunes by is div(sqr(W), sqr(Hi))
A score is f(W, X, G), broadcast to (out, in); a higher score keeps the weight.

Canonical form: prefix calls with no spaces inside names, ``mul(abs(W), X)``; constants in
``%.6g``. The parser accepts exactly that grammar and only whitelisted names, never ``eval``.

Protected operations (``scoring``) keep every value finite: sqrt and log act on |a| (log(|a| + eps)), exp
clamps its argument, division pushes a zero denominator to +-eps, mms and zscore add eps to
their spread, and every node maps NaN to 0 and +-inf to +-1e30.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autoprune.errors import UserError

EPS = 1e-8
BIG = 1e30
TERMINALS = ("W", "X", "G", "Hd", "Hi")
HESSIAN_TERMINALS = ("Hd", "Hi")
UNARY = ("abs", "neg", "sqr", "sqrt", "log", "exp", "tanh", "sigmoid", "mms", "zscore", "rowsum", "colsum")
BINARY = ("add", "sub", "mul", "div")
ARITY = {**{u: 1 for u in UNARY}, **{b: 2 for b in BINARY}}
MAX_CHARS = 4000
# hand-designed and published metrics written in this grammar (RIA needs rowsum and colsum)
NAMED_FORMS = {
    "magnitude": "abs(W)",
    "wanda": "mul(abs(W), X)",
    "ria": "mul(add(div(abs(W), rowsum(abs(W))), div(abs(W), colsum(abs(W)))), sqrt(X))",
    "pruner-zero": "mul(sqr(W), mms(G))",
    "obs": "div(sqr(W), sqr(Hi))",  # SparseGPT's saliency, as a score
}
MAX_DEPTH = 32


@dataclass(frozen=True)
class Expr:
    """A node: a terminal (``op`` in W, X, G), a constant (``op == "const"``) or a primitive call."""

    op: str
    args: tuple["Expr", ...] = ()
    value: float = 0.0

    def __str__(self) -> str:
        if self.op == "const":
            return "%.6g" % self.value
        if not self.args:
            return self.op
        return f"{self.op}({', '.join(str(a) for a in self.args)})"

    @property
    def terminals(self) -> set[str]:
        if self.op in TERMINALS:
            return {self.op}
        return set().union(*(a.terminals for a in self.args)) if self.args else set()

    @property
    def height(self) -> int:
        return 1 + max((a.height for a in self.args), default=-1)

    def __len__(self) -> int:
        return 1 + sum(len(a) for a in self.args)


def const(v: float) -> Expr:
    return Expr("const", (), float(v))


def call(op: str, *args: Expr) -> Expr:
    return Expr(op, tuple(args))


_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z_0-9]*)|(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
                    r"|(?P<punct>[(),]))")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            bad = text[pos:].lstrip()[:1]
            raise UserError(f"metric expression: unexpected character {bad!r} at position {pos}")
        kind = m.lastgroup
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def parse(text: str) -> Expr:
    """The expression of a canonical string; ``UserError`` for anything else."""
    if not isinstance(text, str) or not text.strip():
        raise UserError("metric expression: empty")
    if len(text) > MAX_CHARS:
        raise UserError(f"metric expression: longer than {MAX_CHARS} characters")
    toks = _tokens(text)
    pos = 0

    def expect(p: str) -> None:
        nonlocal pos
        if pos >= len(toks) or toks[pos][1] != p:
            where = f"{toks[pos][1]!r} at position {toks[pos][2]}" if pos < len(toks) else "end of input"
            raise UserError(f"metric expression: expected {p!r}, found {where}")
        pos += 1

    def node(depth: int) -> Expr:
        nonlocal pos
        if depth > MAX_DEPTH:
            raise UserError(f"metric expression: nested deeper than {MAX_DEPTH}")
        if pos >= len(toks):
            raise UserError("metric expression: unexpected end of input")
        kind, tok, at = toks[pos]
        pos += 1
        if kind == "num":
            return const(float(tok))
        if kind != "name":
            raise UserError(f"metric expression: unexpected {tok!r} at position {at}")
        if tok in TERMINALS:
            return Expr(tok)
        if tok not in ARITY:
            allowed = ", ".join(TERMINALS + UNARY + BINARY)
            raise UserError(f"metric expression: unknown primitive {tok!r} at position {at} (allowed: {allowed})")
        expect("(")
        args = [node(depth + 1)]
        for _ in range(ARITY[tok] - 1):
            expect(",")
            args.append(node(depth + 1))
        expect(")")
        return Expr(tok, tuple(args))

    tree = node(0)
    if pos != len(toks):
        raise UserError(f"metric expression: unexpected {toks[pos][1]!r} at position {toks[pos][2]}")
    return tree
