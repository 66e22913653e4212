"""Importance of structures from calibration statistics; a higher score keeps the structure.

Notation, one block, inputs x_t (t = 1..n calibration tokens) of a linear y = W x:
    X = sqrt(1/n sum_t x_t^2)       per input channel (autoprune's metric terminal X)
    mu = 1/n sum_t x_t, S = sum_t x_t x_t^T   mean and Gram, kept for the layers that read the
                                    structures' outputs (o_proj, down_proj): they drive reconstruction
    G                               root-mean-square gradient of the LM loss w.r.t. W (weight-shaped)

Scores of a KV group or an MLP channel:
    activation   FLAP's fluctuation: sum over the structure's input columns j of the reading layer
                 of Var_t(x_j) * ||W[:, j]||^2 (what its removal changes beyond a constant offset);
    obs          structured OBS (SlimGPT), a selection rather than a score: greedily, the structures
                 whose removal the least-squares reconstruction compensates best (``obs_keep``);
                 for structures the name means this, since the per-weight metric ``obs`` reads the
                 Hessian terminals, which structure scores do not take;
    a metric f   any autoprune metric f(W, X, G) (``pruning.metrics.resolve_metric``: a name or a
                 GP-discovered expression) summed over every weight the structure owns: its rows of
                 q, k, v (gate, up) and its columns of o (down), so a discovered metric scores structures;
    taylor       the metric abs(mul(W, G)): first-order Taylor |W * dL/dW| summed over the
                 structure's weights, as LLM-Pruner's element-wise importance.
Blocks: ShortGPT's Block Influence, BI_i = 1 - mean_t cos(h_t, h'_t), h the block's input hidden
state and h' its output, on the calibration windows; the blocks with the lowest BI go first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from autoprune.errors import UserError

ACTIVATION = "activation"
OBS = "obs"
TAYLOR = "abs(mul(W, G))"


@dataclass
class Moments:
    """Running input statistics of one linear: token count, sum of x, sum of x^2 and, for the layers
    reconstruction reads, the Gram matrix S = sum x x^T (float32)."""

    n: int
    s: Tensor  # (in,)
    sq: Tensor  # (in,)
    S: Tensor | None = None  # (in, in)

    def add(self, x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        self.n += x.shape[0]
        self.s += x.sum(0)
        self.sq += (x * x).sum(0)
        if self.S is not None:
            self.S.addmm_(x.t(), x)

    @property
    def X(self) -> Tensor:
        return (self.sq / max(self.n, 1)).sqrt()

    @property
    def var(self) -> Tensor:
        mu = self.s / max(self.n, 1)
        return (self.sq / max(self.n, 1) - mu * mu).clamp_min(0)


class StopBlock(Exception):
    """Raised once the reading layer's input is recorded: the rest of the block need not run."""


class InputMoments:
    """``Moments`` of the inputs of ``linears`` while a block runs, with the Gram of ``reader``'s;
    with ``stop``, the block stops (``StopBlock``) once ``reader``'s input is recorded. Owns its
    hooks (a context manager)."""

    def __init__(self, linears: dict[str, nn.Linear], reader: str, stop: bool = False):
        self.moments = {}
        for name, lin in linears.items():
            z = torch.zeros(lin.in_features, device=lin.weight.device)
            S = torch.zeros(lin.in_features, lin.in_features, device=z.device) if name == reader else None
            self.moments[name] = Moments(0, z, z.clone(), S)
        self._linears, self._reader, self._stop = linears, reader, stop
        self._handles: list = []

    def _hook(self, name: str):
        def fn(_mod, args):
            self.moments[name].add(args[0].detach())
            if self._stop and name == self._reader:
                raise StopBlock
        return fn

    def __enter__(self) -> "InputMoments":
        self._handles = [lin.register_forward_pre_hook(self._hook(n)) for n, lin in self._linears.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@dataclass(frozen=True)
class Importance:
    """A validated importance: ``activation``, ``obs``, ``taylor`` or a metric (name or expression)."""

    spec: str

    def __post_init__(self) -> None:
        from autoprune.pruning.metrics import SOLVER_METRICS, needs_hessian, resolve_metric

        if self.spec in SOLVER_METRICS:
            raise UserError(f"importance {self.spec!r} is a solver, not a score; choose activation, obs, taylor "
                            "or a metric")
        if self.metric is not None:
            resolve_metric(self.metric)  # UserError for anything the whitelist refuses
            if needs_hessian(self.metric):
                raise UserError(f"importance {self.spec!r} reads the Hessian terminals Hd/Hi; structure scores take "
                                "metrics of W, X and G")

    @property
    def metric(self) -> str | None:
        """The metric expression scoring each weight; None for the activation and OBS selections."""
        return None if self.spec in (ACTIVATION, OBS) else TAYLOR if self.spec == "taylor" else self.spec

    @property
    def needs_gradients(self) -> bool:
        from autoprune.pruning.metrics import needs_gradients

        return self.metric is not None and needs_gradients(self.metric)


def _group(v: Tensor, groups: int) -> Tensor:
    """(groups * size,) -> (groups,): sum over each structure's consecutive entries."""
    return v.reshape(groups, -1).sum(1)


def structure_scores(importance: Importance, linears: dict[str, nn.Linear], rows: tuple[str, ...], reader: str,
                     moments: dict[str, Moments], groups: int, grads: dict[str, Tensor] | None = None) -> Tensor:
    """(groups,) scores of the structures that own consecutive equal slices of the output rows of
    ``rows`` (q, k, v or gate, up) and of the input columns of ``reader`` (o or down)."""
    if importance.metric is None:
        W = linears[reader].weight.float()
        return _group(moments[reader].var * W.pow(2).sum(0), groups)
    from autoprune.pruning.metrics import resolve_metric

    f = resolve_metric(importance.metric)
    total = torch.zeros(groups, device=linears[reader].weight.device)
    for name in (*rows, reader):
        G = None if grads is None else grads[name]
        score = f(linears[name].weight, moments[name].X, G).float()  # (out, in)
        total += _group(score.sum(1) if name in rows else score.sum(0), groups)
    return total


def keep_top(scores: Tensor, remove: int) -> Tensor:
    """Sorted indices of the ``len(scores) - remove`` highest scores."""
    return scores.topk(len(scores) - remove).indices.sort().values


def obs_keep(W: Tensor, S: Tensor, groups: int, remove: int, damp: float = 0.01, rounds: int = 16) -> Tensor:
    """Sorted kept structures by greedy structured OBS (SlimGPT), over the input columns of the
    reading layer W (out, groups * size), in up to ``rounds`` rounds: each removes the structures J
    whose removal, compensated by the rest, costs least, E_J = tr(W_J [Hinv_JJ]^-1 W_J^T) with
    Hinv = (S + lam I)^-1, then updates W and Hinv for them as OBS does; lam as ``compensate``'s."""
    n = W.shape[1]
    idx = torch.arange(n, device=W.device).view(groups, -1)  # (groups, size)
    H = S.double().clone()
    H += damp * H.diagonal().mean().clamp_min(1e-12) * torch.eye(n, dtype=H.dtype, device=H.device)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    Wc = W.double().clone()
    alive = torch.ones(groups, dtype=torch.bool, device=W.device)
    left = remove
    for r in range(rounds, 0, -1):
        if left == 0:
            break
        a = alive.nonzero().squeeze(1)
        ia = idx[a]  # (alive, size)
        Hb = Hinv[ia.unsqueeze(2), ia.unsqueeze(1)]  # (alive, size, size)
        Wb = Wc[:, ia].permute(1, 2, 0)  # (alive, size, out)
        cost = (Wb * torch.linalg.solve(Hb, Wb)).sum((1, 2))
        gone = a[cost.topk(-(-left // r), largest=False).indices]
        J = idx[gone].reshape(-1)
        update = torch.linalg.solve(Hinv[J][:, J], Hinv[J])  # (|J|, n) = Hinv_JJ^-1 Hinv_J:
        Wc -= Wc[:, J] @ update
        Hinv -= Hinv[:, J] @ update
        alive[gone] = False
        left -= len(gone)
    return alive.nonzero().squeeze(1)


@torch.no_grad()
def block_influence(blocks: nn.ModuleList, run: Callable[[], object]) -> list[float]:
    """ShortGPT's BI of every block while ``run()`` passes the calibration windows through the model."""
    sums = [torch.zeros((), dtype=torch.float64) for _ in blocks]
    counts = [0] * len(blocks)

    def hook(i):
        def fn(_mod, args, kwargs, out):
            h = args[0] if args else kwargs["hidden_states"]
            h2 = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(h.float(), h2.float(), dim=-1)  # (batch, seq)
            sums[i] += cos.sum().double().cpu()
            counts[i] += cos.numel()
        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return [1.0 - float(s) / max(c, 1) for s, c in zip(sums, counts)]
