"""The ADMM weight update: exactly the mask's zeros, the lowest layer-wise error of the updates,
and agreement with the exact least-squares solution (a slow per-row reference)."""

from __future__ import annotations

import pytest
import torch

from autoprune.pruning.admm import admm_update
from autoprune.pruning.masks import make_mask
from autoprune.pruning.metrics import wanda
from autoprune.pruning.sparsegpt import sparsegpt, sparsegpt_with_mask


def _problem(rows=24, cols=32, tokens=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g) * torch.linspace(0.2, 3.0, cols)  # uneven channel scales
    W = torch.randn(rows, cols, generator=g)
    H = 2 / tokens * X.T @ X
    return W, H, X


def _error(W, W0, H):
    D = W - W0
    return torch.einsum("ij,jk,ik->", D, H, D).item()


def _exact(W0, H, mask, percdamp=0.01):
    """Per row, the least-squares optimum over its kept weights: H_kk w_k = (H w0)_k."""
    H = H.clone()
    H.diagonal().add_(percdamp * H.diagonal().mean())
    out = torch.zeros_like(W0)
    for i in range(W0.shape[0]):
        k = mask[i].nonzero().flatten()
        out[i, k] = torch.linalg.solve(H[k][:, k], (H @ W0[i])[k])
    return out


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_keeps_exactly_the_mask_and_beats_the_other_updates(ratio):
    W, H, X = _problem()
    mask = make_mask(wanda(W, X.pow(2).mean(0).sqrt(), None), ratio, None)
    out = admm_update(W, H, mask)
    assert torch.equal(out != 0, mask)
    assert _error(out, W, H) < _error(sparsegpt(W, H, ratio, mask=mask), W, H) < _error(W * mask, W, H)


def test_agrees_with_the_exact_solution():
    W, H, X = _problem(seed=1)
    mask = make_mask(W.abs(), 0.5, None)
    exact = _error(_exact(W, H, mask), W, H)
    assert _error(admm_update(W, H, mask), W, H) == pytest.approx(exact, rel=1e-3)  # the default schedule
    assert _error(admm_update(W, H, mask, iterations=200, growth=1.05), W, H) == pytest.approx(exact, rel=1e-4)


def test_nm_masks_and_sparsegpt_masks_are_kept():
    W, H, _ = _problem(cols=32, seed=2)
    recon, keep = sparsegpt_with_mask(W, H, 0.5, nm=(2, 4))
    assert (keep.view(W.shape[0], -1, 4).sum(-1) == 2).all() and torch.equal(recon != 0, keep)
    out = admm_update(W, H, keep)
    assert (out.view(W.shape[0], -1, 4).ne(0).sum(-1) <= 2).all()
    assert _error(out, W, H) <= _error(recon, W, H)


def test_dead_input_channels_are_pruned():
    W, H, _ = _problem(seed=3)
    H[:, 5] = 0
    H[5, :] = 0
    out = admm_update(W, H, torch.ones_like(W, dtype=torch.bool))
    assert (out[:, 5] == 0).all() and torch.isfinite(out).all()
