"""SparseGPT (Frantar & Alistarh, 2023): choose a mask and reconstruct the kept weights by OBS.

Notation: W (out, in) weights; H = 2/n X X^T (in, in) Hessian of the layer-wise squared error;
Hinv the upper Cholesky factor of H^-1, whose row i holds the OBS update of the columns after i
once columns < i are fixed. Columns are processed left to right in blocks of ``blocksize``;
within a block the pruning error is propagated column by column, and to the later blocks in
one lazy matrix product.

The mask is chosen per block (unstructured: the ``sparsity`` fraction of the block with the
smallest w^2 / [Hinv]_jj^2, rounded so that the whole layer loses exactly round(sparsity * numel); N:M: per group of M columns), unless ``mask`` is given,
in which case only the reconstruction runs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def prepare_hinv(H: Tensor, W: Tensor, percdamp: float = 0.01) -> Tensor:
    """Damped, dead-column-safe upper Cholesky factor of H^-1; zeroes W's dead columns in place."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


@torch.no_grad()
def sparsegpt(W: Tensor, H: Tensor, sparsity: float, nm: tuple[int, int] | None = None,
              mask: Tensor | None = None, blocksize: int = 128, percdamp: float = 0.01) -> Tensor:
    """Return the pruned and reconstructed weight (float32, same shape as W)."""
    return sparsegpt_with_mask(W, H, sparsity, nm, mask, blocksize, percdamp)[0]


@torch.no_grad()
def sparsegpt_with_mask(W: Tensor, H: Tensor, sparsity: float, nm: tuple[int, int] | None = None,
                        mask: Tensor | None = None, blocksize: int = 128,
                        percdamp: float = 0.01) -> tuple[Tensor, Tensor]:
    """(the pruned and reconstructed weight, its keep-mask): the mask OBS chose, or ``mask``."""
    W = W.clone(memory_format=torch.contiguous_format).float()  # W may be a transposed view
    keep = torch.ones_like(W, dtype=torch.bool)
    rows, cols = W.shape
    Hinv = prepare_hinv(H.float(), W, percdamp)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if mask is not None:
            keep1 = mask[:, i1:i2].to(W.device)
        elif nm is None:
            saliency = W1 ** 2 / d.unsqueeze(0) ** 2
            # cumulative rounding: the blocks together prune exactly round(sparsity * rows * cols)
            k = int(round(sparsity * rows * i2)) - int(round(sparsity * rows * i1))
            keep1 = torch.ones_like(W1, dtype=torch.bool)
            if k:
                keep1.view(-1)[torch.topk(saliency.view(-1), k, largest=False).indices] = False
        else:
            keep1 = torch.ones_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            if mask is None and nm is not None and i % nm[1] == 0:
                n, m = nm
                saliency = W1[:, i:i + m] ** 2 / d[i:i + m].unsqueeze(0) ** 2
                idx = torch.topk(saliency, m - n, dim=1, largest=False).indices
                keep1[:, i:i + m].scatter_(1, idx, False)
            q = w * keep1[:, i]
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = keep1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W, keep
