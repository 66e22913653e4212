"""Per-block sparsity ratios from a policy's allocation: uniform, OWL, AlphaPruning, or explicit.

OWL (Yin et al. 2024): the outlier ratio D_l of block l is the share of its Wanda scores
|W|·||X|| above M times their mean. Ratios are min-max scaled into [0, 2λ], centred, and
subtracted from the target, so blocks with many outliers are pruned less:
    s_l = S - (D̃_l - mean(D̃)),   D̃ = 2λ (D - min D) / (max D - min D)

AlphaPruning (Lu et al. 2024, haiquanlu/AlphaPruning): weights only, no calibration data.
λ_1 <= ... <= λ_N are the eigenvalues of WᵀW (the squared singular values of W), the ESD.
Its tail λ >= xmin is fitted with a power law p(λ) ∝ λ^-α by the Hill estimator
    α = 1 + n / Σ_{j>=i} log(λ_j / λ_i),   xmin = λ_i,  n = N - i,
xmin chosen as in the released code ("xmin_peak", WeightWatcher's fix-finger rule): among
the eigenvalues in [0.95 p, 1.5 p], p the left edge of the fullest of 100 bins of log10 λ, the
one whose fit has the smallest Kolmogorov-Smirnov distance D. A block's α_l is the mean over
its linears. A lower α (heavier tail) marks a better-trained block, which is pruned less:
    r_l = (1 - ε) + 2ε (α_l - min α) / (max α - min α),   s_l = η r_l
with η such that the parameter-weighted mean of s_l is S (ε: ``Policy.alpha_eps``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

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


def esd(W: Tensor) -> Tensor:
    """Eigenvalues of WᵀW, ascending, in float64 on W's device.

    Numerical zeros of a rank-deficient W (below 1e-10 of the largest) are not part of the
    spectrum: they are dropped, since the fit works on log λ.
    """
    eigs = torch.linalg.svdvals(W.detach().to(torch.float64)).square().flip(0)
    return eigs[eigs > eigs[-1] * 1e-10]


def hill_fit(eigs: Tensor, i: int) -> tuple[float, float]:
    """(α, KS distance D) of the power law fitted to the tail ``eigs[i:]`` with xmin = ``eigs[i]``."""
    tail = eigs[i:]
    n = len(tail)
    log_ratio = (tail / tail[0]).log()
    total = log_ratio.sum().item()
    if total <= 0:  # a tail of equal eigenvalues: no power law
        return math.inf, math.inf
    alpha = 1 + n / total
    # the fitted CDF 1 - (λ/xmin)^(1-α) against the empirical one at each tail point
    fitted = 1 - torch.exp((1 - alpha) * log_ratio)
    empirical = torch.arange(n, dtype=eigs.dtype, device=eigs.device) / n
    return alpha, (fitted - empirical).abs().max().item()


def pl_alpha_hill(W: Tensor, bins: int = 100) -> float:
    """AlphaPruning's PL_Alpha_Hill of W: the Hill α at the KS-best xmin near the ESD's peak.

    The released code compares eigenvalues with log10(0.95 p) instead of 0.95 p, so its lower
    bound rarely binds; we use the window as WeightWatcher defines it. If no eigenvalue but the
    largest falls in the window, every xmin is a candidate.
    """
    eigs = esd(W)
    if len(eigs) < 2:
        raise UserError(f"AlphaPruning needs matrices of rank 2 or more; "
                        f"a {tuple(W.shape)} weight has rank {len(eigs)}")
    log10 = eigs.log10()
    counts = torch.histc(log10, bins, min=log10[0].item(), max=log10[-1].item())
    peak = 10 ** (log10[0] + (log10[-1] - log10[0]) * counts.argmax() / bins).item()
    window = (eigs[:-1] >= 0.95 * peak) & (eigs[:-1] <= 1.5 * peak)
    candidates = window.nonzero().flatten().tolist() or range(len(eigs) - 1)
    fits = [hill_fit(eigs, i) for i in candidates]
    alpha, _ = min(fits, key=lambda f: f[1])
    if not math.isfinite(alpha):
        raise UserError(f"AlphaPruning cannot fit a power law to a {tuple(W.shape)} weight: its spectrum is flat")
    return alpha


def alpha_ratios(block_alphas: list[float], block_sizes: list[int], sparsity: float, eps: float) -> list[float]:
    """Block ratios in proportion to (1 - ε) + 2ε·(min-max scaled α), scaled so that their
    mean weighted by ``block_sizes`` is ``sparsity``."""
    a = torch.tensor(block_alphas, dtype=torch.float64)
    n = torch.tensor(block_sizes, dtype=torch.float64)
    spread = a.max() - a.min()
    if spread == 0:
        return [sparsity] * len(block_alphas)
    r = (1 - eps) + (a - a.min()) / spread * (2 * eps)
    s = sparsity * r * n.sum() / (n * r).sum()
    if s.max() >= 1:
        raise UserError(f"alpha_eps {eps} pushes a block ratio to {s.max().item():.3f} at sparsity {sparsity}; "
                        "use a smaller alpha_eps")
    return s.tolist()


def block_alphas(blocks_linears: list[dict[str, torch.nn.Linear]]) -> list[float]:
    """Each block's mean PL_Alpha_Hill over its linears."""
    return [sum(pl_alpha_hill(lin.weight) for lin in linears.values()) / len(linears) for linears in blocks_linears]


def block_ratios(policy: Policy, blocks_linears: list[dict[str, torch.nn.Linear]],
                 X: dict[str, torch.Tensor] | None = None) -> list[float]:
    """One ratio per block. ``X`` (linear name -> activation norm) is needed for OWL;
    AlphaPruning needs the weights only.

    ``blocks_linears[i]`` maps the full names of block i's linears to the layers.
    """
    n = len(blocks_linears)
    if policy.allocation == "uniform":
        return [policy.sparsity] * n
    if policy.allocation == "explicit":
        if len(policy.block_ratios) != n:
            raise UserError(f"policy has {len(policy.block_ratios)} block ratios, the model has {n} blocks")
        return list(policy.block_ratios)
    if policy.allocation == "alpha":
        sizes = [sum(lin.weight.numel() for lin in linears.values()) for linears in blocks_linears]
        return alpha_ratios(block_alphas(blocks_linears), sizes, policy.sparsity, policy.alpha_eps)
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


def by_routed_tokens(policy: Policy, model: torch.nn.Module, ratios: list[float], tokens: dict[str, int],
                     spread: float = 0.5) -> Policy:
    """The explicit policy of ``policy`` (block ``ratios`` as computed for ``model``) whose experts
    lose more the fewer calibration tokens the router sends them (``tokens``: full unit name ->
    routed tokens). In each block the experts' matrices of one kind (``gate_up_proj`` of every
    expert, ...) get ratios r_e w_e sum(r) / sum(r w), r_e their ratio under ``policy`` and
    w_e = 1 + spread (1 - t_e / mean t) clipped to [1 - spread, 1 + spread]: the matrices are equal
    in size, so together they lose what they would have. The spread halves until no ratio passes
    0.95. Every other unit keeps its ratio."""
    from autoprune.models.layers import blocks_linears, decoder_blocks

    path, _ = decoder_blocks(model)
    bls = blocks_linears(model)
    layer = layer_ratios(policy, bls, ratios)
    out = []
    for i, linears in enumerate(bls):
        own = {n: layer[n] for n in linears if layer[n] != ratios[i]}
        groups: dict[str, list[str]] = {}
        for name, unit in linears.items():
            if unit.kind == "expert":
                groups.setdefault(name.rsplit(".", 1)[0], []).append(name)
        for names in groups.values():
            t = torch.tensor([float(tokens[n]) for n in names], dtype=torch.float64)
            r = torch.tensor([layer[n] for n in names], dtype=torch.float64)
            s = spread
            while True:
                w = (1 + s * (1 - t / t.mean().clamp(min=1))).clamp(1 - s, 1 + s)
                new = r * w * r.sum() / (r * w).sum()
                if new.max() < 0.95 or s < 1e-3:
                    break
                s /= 2
            own.update(zip(names, new.tolist()))
        out.append({n[len(f"{path}.{i}."):]: r for n, r in own.items()})
    return replace(policy, allocation="explicit", block_ratios=tuple(ratios), layer_ratios=out)
