"""Metric expressions on tensors: the protected primitives and compiled score functions.

``expression`` defines the language (parsing, printing, no torch); this module gives it meaning
on weights and statistics. Constant folding (``simplify``) evaluates through the same primitives,
so a folded constant scores exactly as the subtree it replaces.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from autoprune.errors import UserError
from autoprune.pruning.expression import BIG, EPS, HESSIAN_TERMINALS, TERMINALS, Expr


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
