"""Named pruning metrics: score = f(W, X, G); a higher score means keep the weight.

Notation (one linear layer, y = W x):
    W  (out, in)  weight
    X  (in,)      sqrt(mean over calibration tokens of x_j^2): per input channel activation norm
    G  (out, in)  root-mean-square gradient of the LM loss w.r.t. W (None when not collected)

Scores are compared within each output row (or each N:M group), so any positive per-row factor
or monotone transform of the whole score gives the same mask. Every metric also scores a stack
(W (L, out, in), X (L, in), G (L, out, in)) of same-shaped layers at once, layer by layer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

from torch import Tensor

from autoprune.errors import UserError

Metric = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def magnitude(W: Tensor, X: Tensor, G: Tensor | None, H: Tensor | None = None) -> Tensor:
    return W.abs()


def wanda(W: Tensor, X: Tensor, G: Tensor | None, H: Tensor | None = None) -> Tensor:
    """Wanda (Sun et al. 2023): |W_ij| * ||X_j||."""
    return W.abs() * X.unsqueeze(-2)


def ria(W: Tensor, X: Tensor, G: Tensor | None, H: Tensor | None = None, a: float = 0.5) -> Tensor:
    """RIA (Zhang et al. 2024): (|W|/row sum + |W|/column sum) * ||X_j||^a, a = 0.5."""
    A = W.abs()
    relative = A / A.sum(dim=-1, keepdim=True).clamp_min(1e-12) + A / A.sum(dim=-2, keepdim=True).clamp_min(1e-12)
    return relative * X.unsqueeze(-2).pow(a)


NAMED: dict[str, Metric] = {"magnitude": magnitude, "wanda": wanda, "ria": ria}
# metrics whose masks come from elsewhere (the OBS solver), not from a score
SOLVER_METRICS = ("sparsegpt",)


# named metrics written as expressions (autoprune.pruning.expression); Pruner-Zero's discovered metric
NAMED_EXPRESSIONS = {"pruner-zero": "mul(sqr(W), mms(G))", "obs": "div(sqr(W), sqr(Hi))"}


@lru_cache(maxsize=1024)
def _expression(spec: str):
    from autoprune.pruning.expression import parse

    spec = NAMED_EXPRESSIONS.get(spec, spec)
    if spec.isidentifier() and spec not in ("W", "X", "G", "Hd", "Hi"):
        names = ", ".join([*NAMED, *NAMED_EXPRESSIONS])
        raise UserError(f"unknown metric {spec!r} (choose {names}, or an expression such as mul(abs(W), X))")
    return parse(spec)


def resolve_metric(spec: str) -> Metric:
    """The scoring function for a metric name or a metric expression (parsed against a whitelist)."""
    if spec in NAMED:
        return NAMED[spec]
    from autoprune.pruning.scoring import compile_expr

    return compile_expr(_expression(spec))


def needs_gradients(spec: str) -> bool:
    """True when the metric reads the gradient statistic G."""
    return spec not in NAMED and spec not in SOLVER_METRICS and "G" in _expression(spec).terminals


def needs_hessian(spec: str) -> bool:
    """True when the metric reads the Hessian's diagonals (Hd, Hi)."""
    from autoprune.pruning.expression import HESSIAN_TERMINALS

    return (spec not in NAMED and spec not in SOLVER_METRICS
            and bool(_expression(spec).terminals & set(HESSIAN_TERMINALS)))
