"""ADMM weight update for a fixed mask (Boža, "Fast and Effective Weight Update for Pruned Large
Language Models", 2024): the kept weights that best reproduce the dense layer's outputs.

Notation: W0 (out, in) dense weights; H = 2/n X X^T (in, in) as in SparseGPT; M the keep-mask.
The layer-wise problem  min_W tr((W - W0) H (W - W0)^T)  s.t.  W = M * W  is split as
    W <- (W0 H + rho (Z - U)) (H + rho I)^-1      (least squares, one cached inverse per rho)
    Z <- M * (W + U)                              (projection onto the mask)
    U <- U + W - Z                                (scaled dual)
on H normalised to unit diagonal (so one rho schedule fits every layer); rho grows
geometrically, which drives W and Z together. The result is Z: exactly the mask's zeros.
SparseGPT's OBS update fixes each column once, left to right; ADMM solves for all kept weights
jointly, so its error is lower for the same mask.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def admm_update(W: Tensor, H: Tensor, mask: Tensor, iterations: int = 20, rho: float = 0.1,
                growth: float = 1.3, percdamp: float = 0.01) -> Tensor:
    """The reconstructed weight for ``mask`` (True: kept), float32, same shape as W."""
    W0 = W.float()
    H = H.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    norm = torch.diag(H).sqrt()
    Hn = H / norm.unsqueeze(0) / norm.unsqueeze(1)  # unit diagonal
    Wn = W0 * norm.unsqueeze(0)  # the same problem in the normalised coordinates
    Wn[:, dead] = 0
    keep = mask.to(W0.device, torch.bool) & ~dead.unsqueeze(0)
    WH = Wn @ Hn
    eye = torch.eye(Hn.shape[0], device=Hn.device)
    Z = Wn * keep
    U = torch.zeros_like(Wn)
    for _ in range(iterations):
        inv = torch.cholesky_inverse(torch.linalg.cholesky(Hn + rho * eye))
        Wk = (WH + rho * (Z - U)) @ inv
        Z = (Wk + U) * keep
        U += Wk - Z
        rho *= growth
    # the last least-squares step on the kept weights alone, row by row, would be exact; a final
    # projected step is within rounding of it once rho is large, and costs one product
    return Z / norm.unsqueeze(0)
