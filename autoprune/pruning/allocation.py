"""Per-block sparsity ratios from a policy's allocation: uniform, OWL, or explicit.

OWL (Yin et al. 2024): the outlier ratio D_l of block l is the share of its Wanda scores
|W|·||X|| above M times their mean. Ratios are min-max scaled into [0, 2λ], centred, and
subtracted from the target, so blocks with many outliers are pruned less:
    s_l = S - (D̃_l - mean(D̃)),   D̃ = 2λ (D - min D) / (max D - min D)
"""

from __future__ import annotations

import torch

from autoprune.errors import UserError
from autoprune.pruning.metrics import wanda
from autoprune.pruning.policy import Policy


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Share of a block's scores above ``m`` times their mean."""
    flat = torch.cat([s.flatten().float() for s in scores])
    return (flat > m * flat.mean()).float().mean().item()


def owl_ratios(outlier_ratios: list[float], sparsity: float, lam: float) -> list[float]:
    d = torch.tensor(outlier_ratios, dtype=torch.float64)
    spread = d.max() - d.min()
    if spread == 0:
        return [sparsity] * len(outlier_ratios)
    d = (d - d.min()) / spread * (2 * lam)
    s = sparsity - (d - d.mean())
    if s.min() < 0 or s.max() >= 1:
        raise UserError(f"OWL lambda {lam} pushes block ratios outside [0, 1) at sparsity {sparsity}")
    return s.tolist()


def block_ratios(policy: Policy, blocks_linears: list[dict[str, torch.nn.Linear]],
                 X: dict[str, torch.Tensor] | None = None) -> list[float]:
    """One ratio per block. ``X`` (linear name -> activation norm) is needed for OWL.

    ``blocks_linears[i]`` maps the full names of block i's linears to the layers.
    """
    n = len(blocks_linears)
    if policy.allocation == "uniform":
        return [policy.sparsity] * n
    if policy.allocation == "explicit":
        if len(policy.block_ratios) != n:
            raise UserError(f"policy has {len(policy.block_ratios)} block ratios, the model has {n} blocks")
        return list(policy.block_ratios)
    if X is None:
        raise ValueError("OWL allocation needs activation statistics")
    ratios = [outlier_ratio([wanda(lin.weight.data, X[name], None) for name, lin in linears.items()], policy.owl_m)
              for linears in blocks_linears]
    return owl_ratios(ratios, policy.sparsity, policy.owl_lambda)


def layer_ratios(policy: Policy, blocks_linears: list[dict[str, torch.nn.Linear]], ratios: list[float]) -> dict[str, float]:
    """Full linear name -> ratio: the block's ratio unless ``policy.layer_ratios`` names the linear."""
    out = {}
    for i, (ratio, linears) in enumerate(zip(ratios, blocks_linears)):
        own = dict(policy.layer_ratios[i]) if policy.layer_ratios is not None else {}
        for name in linears:
            rel = [r for r in own if name.endswith("." + r)]
            out[name] = own[rel[0]] if rel else ratio
        unknown = [r for r in own if not any(name.endswith("." + r) for name in linears)]
        if unknown:
            raise UserError(f"layer_ratios name linears that block {i} does not have: {', '.join(unknown)}")
    return out
