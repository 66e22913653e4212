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

Protected operations keep every value finite: sqrt and log act on |a| (log(|a| + eps)), exp
clamps its argument, division pushes a zero denominator to +-eps, mms and zscore add eps to
their spread, and every node maps NaN to 0 and +-inf to +-1e30.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

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


def _safe(t: Tensor) -> Tensor:
    return torch.nan_to_num(t, nan=0.0, posinf=BIG, neginf=-BIG)


def _div(a: Tensor, b: Tensor) -> Tensor:
    return a / torch.where(b >= 0, b.clamp_min(EPS), b.clamp_max(-EPS))


def _mms(a: Tensor) -> Tensor:
    lo, hi = a.amin(dim=(-2, -1), keepdim=True), a.amax(dim=(-2, -1), keepdim=True)
    return (a - lo) / (hi - lo + EPS)


def _zscore(a: Tensor) -> Tensor:
    return (a - a.mean(dim=(-2, -1), keepdim=True)) / (a.std(dim=(-2, -1), correction=0, keepdim=True) + EPS)


def apply_op(op: str, args: list[Tensor], shape: tuple[int, ...]) -> Tensor:
    """One protected primitive on tensors broadcastable to ``shape`` = (out, in), or to a stack
    (layers, out, in) of same-shaped layers: reductions never cross the last two dimensions."""
    a = args[0]
    if op == "abs":
        r = a.abs()
    elif op == "neg":
        r = -a
    elif op == "sqr":
        r = a * a
    elif op == "sqrt":
        r = a.abs().sqrt()
    elif op == "log":
        r = (a.abs() + EPS).log()
    elif op == "exp":
        r = a.clamp(max=80.0).exp()
    elif op == "tanh":
        r = a.tanh()
    elif op == "sigmoid":
        r = a.sigmoid()
    elif op == "mms":
        r = _mms(a)
    elif op == "zscore":
        r = _zscore(a)
    elif op == "rowsum":  # sum along the row of the broadcast (out, in) matrix
        r = a.sum(dim=-1, keepdim=True) * (shape[-1] / a.shape[-1])
    elif op == "colsum":
        r = a.sum(dim=-2, keepdim=True) * (shape[-2] / a.shape[-2])
    elif op == "add":
        r = a + args[1]
    elif op == "sub":
        r = a - args[1]
    elif op == "mul":
        r = a * args[1]
    elif op == "div":
        r = _div(a, args[1])
    else:
        raise UserError(f"metric expression: unknown primitive {op!r}")
    return _safe(r)


Compiled = Callable[..., Tensor]


def compile_expr(expr: Expr) -> Compiled:
    """A function (W, X, G, H) -> scores (out, in), float32, finite, on W's device; or, stacked,
    (W (L, out, in), X (L, in), G (L, out, in), H (L, 2, in)) -> (L, out, in), layer by layer.
    H stacks the channel vectors Hd and Hi (``LayerStats.hessian_channels``)."""
    uses_g = "G" in expr.terminals
    uses_h = bool(expr.terminals & set(HESSIAN_TERMINALS))

    def score(W: Tensor, X: Tensor, G: Tensor | None, H: Tensor | None = None) -> Tensor:
        if uses_g and G is None:
            raise UserError(f"metric {expr} uses G, but no gradient statistics were collected")
        if uses_h and H is None:
            raise UserError(f"metric {expr} uses the Hessian's diagonals, but no Hessians were collected")
        W = W.float()
        env = {"W": W, "X": X.float().to(W.device).unsqueeze(-2), "G": None if G is None else G.float().to(W.device)}
        if uses_h:
            H = H.float().to(W.device)
            env["Hd"], env["Hi"] = H[..., 0, :].unsqueeze(-2), H[..., 1, :].unsqueeze(-2)
        shape = tuple(W.shape)

        def ev(e: Expr) -> Tensor:
            if e.op == "const":
                return torch.full((1, 1), e.value, dtype=torch.float32, device=W.device)
            if e.op in TERMINALS:
                return env[e.op]
            return apply_op(e.op, [ev(a) for a in e.args], shape)

        return ev(expr).expand(shape)

    return score


def evaluate_constant(expr: Expr) -> float:
    """The value of an expression without terminals (for constant folding)."""
    t = compile_expr(expr)(torch.zeros(1, 1), torch.zeros(1), None)
    return float(t.reshape(-1)[0])
