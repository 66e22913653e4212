"""SparseGPT against a slow, textbook, column-by-column OBS reference in float64."""

import pytest
import torch

from autoprune.pruning.sparsegpt import sparsegpt


def _damped(H, percdamp):
    H = H.clone()
    H.diagonal().add_(percdamp * H.diagonal().mean())
    return H


def obs_reference(W, H, sparsity=0.0, nm=None, mask=None, percdamp=0.01):
    """Prune columns left to right; after each, update the later columns with the inverse of H
    restricted to the columns not yet fixed: W[:, F] -= (w - q) / [H_F^-1]_00 * [H_F^-1]_0,: ."""
    W = W.double().clone()
    H = _damped(H.double(), percdamp)
    cols = W.shape[1]
    hinv_rows = lambda i: torch.linalg.inv(H[i:, i:])[0]  # noqa: E731
    if mask is None and nm is None:  # one block: saliency w^2 / [H_F^-1]_00 from the start
        d2 = torch.stack([hinv_rows(i)[0] for i in range(cols)])
        sal = W ** 2 / d2
        k = int(round(sal.numel() * sparsity))
        mask = torch.ones_like(W, dtype=torch.bool)
        mask.view(-1)[sal.view(-1).argsort()[:k]] = False
    elif mask is None:
        mask = torch.ones_like(W, dtype=torch.bool)
    for i in range(cols):
        row = hinv_rows(i)
        if nm is not None and i % nm[1] == 0:
            n, m = nm
            d2 = torch.stack([hinv_rows(j)[0] for j in range(i, i + m)])
            sal = W[:, i:i + m] ** 2 / d2
            idx = sal.argsort(dim=1)[:, : m - n]
            mask[:, i:i + m].scatter_(1, idx, False)
        err = W[:, i] * (~mask[:, i]) / row[0]
        W[:, i:] -= err.unsqueeze(1) * row.unsqueeze(0)
    return W, mask


def _layer(rows=16, cols=32, tokens=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    X = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.3  # correlated inputs
    H = 2 / tokens * X.t() @ X
    return W, H


@pytest.mark.parametrize("blocksize", [4, 8, 128])
def test_fixed_mask_update_matches_reference(blocksize):
    W, H = _layer()
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    ours = sparsegpt(W, H, 0.5, mask=mask, blocksize=blocksize)
    ref, _ = obs_reference(W, H, mask=mask)
    assert torch.allclose(ours.double(), ref, atol=1e-4)
    assert torch.all(ours[~mask] == 0)


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_unstructured_mask_and_update_match_reference(sparsity):
    W, H = _layer(seed=2)
    ours = sparsegpt(W, H, sparsity, blocksize=128)  # one block: the reference's setting
    ref, ref_mask = obs_reference(W, H, sparsity=sparsity)
    assert torch.equal(ours != 0, ref_mask)
    assert torch.allclose(ours.double(), ref, atol=1e-4)
    assert int((ours == 0).sum()) == int(round(sparsity * W.numel()))


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_matches_reference(nm):
    W, H = _layer(seed=3)
    ours = sparsegpt(W, H, 1 - nm[0] / nm[1], nm=nm, blocksize=16)
    ref, ref_mask = obs_reference(W, H, nm=nm)
    assert torch.equal(ours != 0, ref_mask)
    assert torch.allclose(ours.double(), ref, atol=1e-4)
    assert torch.all((ours != 0).view(16, -1, nm[1]).sum(-1) == nm[0])


def test_reconstruction_beats_plain_masking():
    """The OBS update lowers the layer-wise error ||(W - W') X^T||^2 against zeroing alone."""
    W, H = _layer(seed=4)
    pruned = sparsegpt(W, H, 0.5)
    masked = W * (pruned != 0)
    err = lambda A: torch.trace((W - A) @ H @ (W - A).t())  # noqa: E731
    assert err(pruned) < 0.8 * err(masked)


def test_dead_inputs_are_zeroed():
    W, H = _layer(seed=5)
    H[3, :] = 0
    H[:, 3] = 0
    out = sparsegpt(W, H, 0.5)
    assert torch.all(out[:, 3] == 0)
    assert torch.isfinite(out).all()


def test_hessian_terminals_make_sparsegpts_saliency_a_metric():
    """Hi is [H_F^-1]_00 ** 0.5 for F the columns from j on (the textbook OBS quantity SparseGPT
    reads off its Cholesky factor), so the expression obs = W^2 / Hi^2 is SparseGPT's saliency."""
    from autoprune.pruning.metrics import needs_hessian, resolve_metric
    from autoprune.pruning.stats import LayerStats

    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 12, generator=g) * torch.linspace(0.5, 2.0, 12)
    W = torch.randn(6, 12, generator=g)
    st = LayerStats(sq_sum=(X ** 2).sum(0), tokens=200, H=2 / 200 * X.T @ X)
    Hd, Hi = st.hessian_channels()
    H = _damped(st.H.double(), 0.01)
    d2 = torch.stack([torch.linalg.inv(H[i:, i:])[0, 0] for i in range(12)])
    assert torch.allclose(Hi.double() ** 2, d2, rtol=1e-4) and torch.allclose(Hd.double(), H.diagonal(), rtol=1e-5)
    scores = resolve_metric("obs")(W, st.X, None, st.hessian_channels())
    assert needs_hessian("obs") and not needs_hessian("wanda")
    assert torch.allclose(scores.double(), W.double() ** 2 / d2, rtol=1e-3)
    with pytest.raises(Exception, match="Hessian"):
        resolve_metric("obs")(W, st.X, None)
