"""Calibration statistics of the inputs of linear layers, gathered by forward hooks.

Per linear layer with inputs x (tokens, in):
    X = sqrt(sum_t x_t^2 / n)      per input channel, (in,)
    H = 2/n sum_t x_t x_t^T        the layer-wise OBS Hessian (SparseGPT), (in, in), on request

``StatsCollector`` owns its hooks and always removes them (use it as a context manager).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from autoprune.models.layers import Unit, input_hooks


@dataclass
class LayerStats:
    sq_sum: Tensor  # (in,) float32, sum of x_j^2 over tokens
    tokens: int = 0
    H: Tensor | None = None  # (in, in) float32, 2/n X X^T
    _channels: Tensor | None = field(default=None, repr=False, compare=False)  # hessian_channels(), cached

    @property
    def X(self) -> Tensor:
        """Ones for a layer no calibration token reached (an expert the router never chose): its
        activation-weighted scores fall back to magnitudes."""
        if self.tokens == 0:
            return torch.ones_like(self.sq_sum)
        return (self.sq_sum / self.tokens).sqrt()

    def add(self, x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        n = x.shape[0]
        self._channels = None
        if self.H is not None:
            # running mean of 2 x x^T, as SparseGPT accumulates it
            self.H.mul_(self.tokens / (self.tokens + n))
            xs = x * (2.0 / (self.tokens + n)) ** 0.5
            self.H.addmm_(xs.t(), xs)
        self.sq_sum += (x * x).sum(dim=0)
        self.tokens += n

    def set_hessian(self, H: Tensor) -> None:
        self.H, self._channels = H, None

    def hessian_channels(self) -> Tensor | None:
        """(2, in): the diagonal of H and the diagonal of the upper Cholesky factor of H^-1, both
        damped as SparseGPT damps (the metric terminals Hd and Hi); None without H. Cached."""
        if self.H is None:
            return None
        if self._channels is None:
            from autoprune.pruning.sparsegpt import prepare_hinv

            H = self.H.float()
            U = prepare_hinv(H, torch.zeros(1, H.shape[0], device=H.device))
            d = H.diagonal().clone()
            d[d == 0] = 1
            d += 0.01 * d.mean()
            self._channels = torch.stack([d, U.diagonal()])
        return self._channels

    def to(self, device: torch.device | str) -> "LayerStats":
        return LayerStats(self.sq_sum.to(device), self.tokens, None if self.H is None else self.H.to(device))


class StatsCollector:
    """Accumulate ``LayerStats`` for each named prunable unit while the model runs forward
    (experts: over the tokens routed to them, router-weighted on request)."""

    def __init__(self, linears: dict[str, Unit], hessian: bool = False, router_weighted: bool = False):
        self.stats = {}
        for name, lin in linears.items():
            dev, n = lin.weight.device, lin.in_features
            self.stats[name] = LayerStats(sq_sum=torch.zeros(n, device=dev),
                                          H=torch.zeros(n, n, device=dev) if hessian else None)
        self._linears, self._weighted = linears, router_weighted
        self._handles: list = []

    def __enter__(self) -> "StatsCollector":
        self._handles = input_hooks(self._linears, lambda name, x: self.stats[name].add(x), self._weighted)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
