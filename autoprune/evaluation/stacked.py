"""Several pruned variants of one model through a single forward pass.

Candidates differ only in the weights of the prunable linears. Their weights are stacked,
(K, out, in) per linear, the input windows repeated K times along the batch (candidate-major),
and each such linear computes its K slices with one batched matmul. Everything else (embedding,
norms, attention) is shared and batch-agnostic, so slice k of the output is candidate k's
forward pass. On a GPU a small model's forward is bound by kernel launches, not arithmetic, so K
candidates cost little more than one; on a CPU the forward is compute-bound and this gains little.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from autoprune.models.layers import Unit


@contextmanager
def stacked_linears(linears: dict[str, Unit], weights: dict[str, Tensor]):
    """Within the block, ``linears[n]`` maps an input of batch K*B to K slices of B, slice k with
    ``weights[n][k]`` (out, in); units without stacked weights are untouched. Always restored.
    Experts cannot be stacked (RuntimeError: the caller scores candidates one at a time)."""
    if any(linears[n].kind == "expert" for n in weights):
        raise RuntimeError("experts are not stacked")
    swapped = []
    try:
        for name, W in weights.items():
            lin = linears[name].module  # nn.Linear or Conv1D: y = x W^T + b with W (out, in)
            lin.forward = _stacked_forward(W, lin.bias)  # an instance attribute shadows the class's forward
            swapped.append(lin)
        yield
    finally:
        for lin in swapped:
            del lin.forward


def _stacked_forward(W: Tensor, bias: Tensor | None):
    K = W.shape[0]
    Wt = W.transpose(1, 2)  # (K, in, out)

    def forward(x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = torch.bmm(x.reshape(K, -1, x.shape[-1]), Wt)  # (K, B*T, out)
        y = y.reshape(*lead, W.shape[1])
        return y if bias is None else y + bias

    return forward
