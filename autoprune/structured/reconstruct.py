"""Least-squares compensation of removed structures in the layer that reads them.

Notation: the reading layer y = W x (o_proj reads the heads, down_proj the MLP channels),
W (out, n); calibration inputs x_t, Gram S = sum_t x_t x_t^T (n, n); K the kept input columns,
R the removed ones. Removing R leaves y' = W_K x_K; the kept weights take over what the removed
ones carried, as far as the kept inputs can express it (SlimGPT, LIAR; FLAP's bias compensation is
the special case of a constant input):

    Delta = argmin_D sum_t ||W_R x_R,t - D x_K,t||^2 + lam ||D||^2 = W_R S_RK (S_KK + lam I)^-1
    W_K' = W_K + Delta

the ridge form of argmin_W' sum_t ||W x_t - W' x_K,t||^2, pulled towards W_K rather than zero, so
that nothing removed changes nothing; lam = damp * mean(diag S_KK), as SparseGPT damps its Hessian.
The kept heads' (channels') inputs are exactly what they were before the removal, so S is
collected once, before it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _split(n: int, keep: Tensor) -> Tensor:
    mask = torch.ones(n, dtype=torch.bool, device=keep.device)
    mask[keep] = False
    return mask.nonzero().squeeze(1)


def compensate(W: Tensor, S: Tensor, keep: Tensor, damp: float = 0.01) -> Tensor:
    """W_K' (out, |K|), in W's dtype: one Cholesky solve for all rows (float64)."""
    removed = _split(W.shape[1], keep)
    W_K = W[:, keep]
    if len(removed) == 0:
        return W_K.clone()
    S = S.double()
    S_KK = S[keep][:, keep]
    S_KK += damp * S_KK.diagonal().mean().clamp_min(1e-12) * torch.eye(len(keep), dtype=S.dtype, device=S.device)
    B = W[:, removed].double() @ S[removed][:, keep]  # (out, |K|) = W_R S_RK
    L = torch.linalg.cholesky(S_KK)
    delta = torch.cholesky_solve(B.t(), L).t()  # S_KK symmetric: (S_KK^-1 B^T)^T = B S_KK^-1
    return (W_K.double() + delta).to(W.dtype)


def compensate_reference(W: Tensor, X: Tensor, keep: Tensor, damp: float = 0.01) -> Tensor:
    """The same, slowly, from the raw inputs X (tokens, n): one damped least-squares problem per
    output row, min_d ||X_K d - X_R w_R||^2 + lam ||d||^2 as a stacked lstsq (for tests)."""
    removed = _split(W.shape[1], keep)
    X, W = X.double(), W.double()
    XK, XR = X[:, keep], X[:, removed]
    lam = damp * (XK * XK).sum(0).mean()
    A = torch.cat([XK, lam.sqrt() * torch.eye(len(keep), dtype=X.dtype)])  # (tokens + |K|, |K|)
    rows = []
    for r in range(W.shape[0]):
        b = torch.cat([XR @ W[r, removed], torch.zeros(len(keep), dtype=X.dtype)])
        rows.append(W[r, keep] + torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1))
    return torch.stack(rows)
