"""Simplification and rank-equivalence normalisation of metric expressions.

``simplify`` rewrites a tree into a value-equivalent (up to the protection epsilons) smaller
one: constant folding, removal of opposing pairs (neg/neg, sqr/sqrt, exp/log), absorbed
abs/neg, invariance of mms and zscore to positive affine maps, and sorted arguments of the
commutative add and mul.

``rank_form`` goes further: masks compare scores within each output row (or each N:M group
inside a row), so two scores s and s' give the same mask when, in every row, s' = h_row(s) with
h_row strictly increasing. At the top of the tree this holds for
    exp, sigmoid, tanh, mms, zscore                  (strictly increasing, or positive affine)
    sqr(a), sqrt(a), log(a)  ->  abs(a)              (protected: increasing functions of |a|)
    add(a, r), sub(a, r)  ->  a ;  sub(r, a) -> neg(a)   r constant along each row
    mul(a, p)  ->  a                                 p > 0 and constant along each row
    div(a, q)  ->  a                                 q >= 0 and constant along each row
                                                     (the protected division maps 0 to +eps)
    abs(a)  ->  a                                    a >= 0
``rank_key`` (the canonical string of ``rank_form(simplify(e))``) keys the fitness cache.
"""

from __future__ import annotations

from autoprune.pruning.expression import EPS, TERMINALS, Expr, call, const

_POSITIVE_OPS = ("exp", "sigmoid")
_NONNEG_OPS = ("abs", "sqr", "sqrt", "exp", "sigmoid", "mms")
_AFFINE_INVARIANT = ("mms", "zscore")
_SHAPE_DEPENDENT = ("rowsum", "colsum")  # their value on a constant depends on the layer's shape


def nonneg(e: Expr) -> bool:
    """True when e >= 0 everywhere (X and G are norms)."""
    if e.op == "const":
        return e.value >= 0
    if e.op in ("X", "G") or e.op in _NONNEG_OPS:
        return True
    if e.op in ("tanh", "rowsum", "colsum"):
        return nonneg(e.args[0])
    if e.op in ("add", "mul", "div"):
        return nonneg(e.args[0]) and nonneg(e.args[1])
    return False


def positive(e: Expr) -> bool:
    """True when e > 0 everywhere."""
    if e.op == "const":
        return e.value > 0
    if e.op in _POSITIVE_OPS:
        return True
    if e.op in ("add", "mul"):
        return positive(e.args[0]) and positive(e.args[1]) or e.op == "add" and (
            positive(e.args[0]) and nonneg(e.args[1]) or nonneg(e.args[0]) and positive(e.args[1]))
    if e.op in ("rowsum", "colsum", "tanh"):
        return positive(e.args[0])
    return False


def row_constant(e: Expr) -> bool:
    """True when e takes one value along each output row (constants, row sums)."""
    if e.op == "const" or e.op == "rowsum":
        return True
    if e.op in TERMINALS or e.op == "colsum":
        return False
    return all(row_constant(a) for a in e.args)


def _fold(e: Expr) -> Expr:
    if e.args and e.op not in _SHAPE_DEPENDENT and all(a.op == "const" for a in e.args):
        from autoprune.pruning.scoring import evaluate_constant  # torch, only once a constant is folded

        return const(evaluate_constant(e))
    return e


def _rewrite(e: Expr) -> Expr:
    """One node, children already simplified."""
    e = _fold(e)
    if not e.args:
        return e
    op, a = e.op, e.args[0]
    if op == "neg" and a.op == "neg":
        return a.args[0]
    if op in ("abs", "sqr", "sqrt", "log") and a.op in ("abs", "neg"):
        return _rewrite(call(op, a.args[0]))
    if op == "abs" and nonneg(a):
        return a
    if op == "abs" and a.op in ("mul", "div") and (nonneg(a.args[1]) or a.op == "mul" and nonneg(a.args[0])):
        x, y = a.args if nonneg(a.args[1]) else a.args[::-1]  # |x * y| = |x| * y for y >= 0
        return _rewrite(call(a.op, _rewrite(call("abs", x)), y))
    if (op, a.op) in (("sqrt", "sqr"), ("sqr", "sqrt"), ("exp", "log")):
        return _rewrite(call("abs", a.args[0]))
    if op == "log" and a.op == "exp":
        return a.args[0]
    if op in _AFFINE_INVARIANT:
        if a.op in _AFFINE_INVARIANT:
            return _rewrite(call(op, a.args[0]))
        if a.op in ("add", "sub") and a.args[1].op == "const" or a.op == "add" and a.args[0].op == "const":
            inner = a.args[1] if a.args[0].op == "const" else a.args[0]
            return _rewrite(call(op, inner))
        if a.op == "mul" and a.args[0].op == "const" and a.args[0].value > 0:
            return _rewrite(call(op, a.args[1]))
    if len(e.args) == 1:
        return e
    b = e.args[1]
    if op in ("add", "mul") and str(b) < str(a):  # commutative: constants sort first
        a, b = b, a
        e = call(op, a, b)
    if op == "sub" and a == b:
        return const(0.0)
    if op == "add" and a == b:
        return _rewrite(call("mul", const(2.0), a))
    if op == "mul" and a == b:
        return _rewrite(call("sqr", a))
    if op == "add" and b.op == "neg":
        return _rewrite(call("sub", a, b.args[0]))
    if op == "add" and a.op == "neg":
        return _rewrite(call("sub", b, a.args[0]))
    if op == "sub" and b.op == "neg":
        return _rewrite(call("add", a, b.args[0]))
    if op == "add" and a.op == "const" and a.value == 0:
        return b
    if op == "sub" and b.op == "const" and b.value == 0:
        return a
    if op == "mul" and a.op == "const":
        if a.value == 1:
            return b
        if a.value == 0:
            return const(0.0)
    if op == "mul" and a.op == "neg" and b.op == "neg":
        return _rewrite(call("mul", a.args[0], b.args[0]))
    if op == "div" and b.op == "const" and abs(b.value) >= EPS:  # a / c = (1/c) a
        return _rewrite(call("mul", const(1.0 / b.value), a))
    if op == "div" and a.op == "mul" and a.args[0].op == "const":  # (c a) / b = c (a / b)
        return _rewrite(call("mul", a.args[0], _rewrite(call("div", a.args[1], b))))
    if op in ("add", "mul") and a.op == op and a.args[0].op == "const" and b.op != "const":
        a, b = b, a
    if op == "add" and b.op == "add" and b.args[0].op == "const":  # constants rise to the top of sums
        if a.op == "const":
            return _rewrite(call("add", const(a.value + b.args[0].value), b.args[1]))
        return _rewrite(call("add", b.args[0], _rewrite(call("add", a, b.args[1]))))
    if op == "sub" and a.op == "add" and a.args[0].op == "const":  # (c + a) - b = c + (a - b)
        return _rewrite(call("add", a.args[0], _rewrite(call("sub", a.args[1], b))))
    if op == "mul" and b.op == "mul" and b.args[0].op == "const":  # constants rise to the top of products
        if a.op == "const":
            return _rewrite(call("mul", const(a.value * b.args[0].value), b.args[1]))
        return _rewrite(call("mul", b.args[0], _rewrite(call("mul", a, b.args[1]))))
    return e


def simplify(e: Expr) -> Expr:
    """A value-equivalent, usually smaller tree (bottom-up rewriting to a fixed point)."""
    if not e.args:
        return e
    out = _rewrite(Expr(e.op, tuple(simplify(a) for a in e.args), e.value))
    return out if out == e else simplify(out)


def _strip(e: Expr) -> Expr | None:
    """One rank-preserving rewrite of the whole expression, or None."""
    op = e.op
    if op in ("exp", "sigmoid", "tanh", "mms", "zscore"):
        return e.args[0]
    if op in ("sqr", "sqrt", "log"):
        return call("abs", e.args[0])
    if op == "abs" and nonneg(e.args[0]):
        return e.args[0]
    if op == "neg" and e.args[0].op == "neg":
        return e.args[0].args[0]
    if op in ("add", "sub", "mul", "div"):
        a, b = e.args
        if op in ("add", "sub") and row_constant(b):
            return a
        if op == "add" and row_constant(a):
            return b
        if op == "sub" and row_constant(a):
            return call("neg", b)
        if op == "mul" and row_constant(b) and positive(b):
            return a
        if op == "mul" and row_constant(a) and positive(a):
            return b
        if op == "mul" and a.op == "const" and a.value < 0:
            return call("neg", b)
        if op == "div" and row_constant(b) and nonneg(b):
            return a
    return None


def rank_form(e: Expr) -> Expr:
    """The simplest expression known to give the same mask as ``e`` in every layer."""
    e = simplify(e)
    while (nxt := _strip(e)) is not None:
        e = simplify(nxt)
    return e


def rank_key(e: Expr) -> str:
    return str(rank_form(e))


def is_degenerate(e: Expr) -> bool:
    """True when the scores tie within every row (no terminal varies along a row): a useless metric."""
    return row_constant(rank_form(e))
