"""Masks from scores: unstructured per output row, or N:M along each row. True = keep.

Scores are (out, in) for one layer or (L, out, in) for a stack of same-shaped layers; each
layer of a stack gets exactly the mask it would get alone.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from autoprune.errors import UserError


def clean_scores(scores: Tensor) -> Tensor:
    # NaN scores rank lowest: a broken metric prunes those weights first, never crashes.
    return torch.nan_to_num(scores.float(), nan=float("-inf"))


@lru_cache(maxsize=256)
def pruned_per_row(rows: int, cols: int, sparsity: float) -> torch.Tensor:
    """How many weights each row loses so that the layer loses exactly ``round(sparsity * rows * cols)``.

    Every row loses floor or ceil of ``sparsity * cols``; the extra weights are spread evenly.
    (Cached: a search asks for the same few shapes and ratios again and again; do not modify.)
    """
    total = int(round(sparsity * rows * cols))
    r = torch.arange(rows + 1)
    return (total * r).div(rows, rounding_mode="floor").diff()  # (rows,)


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Keep all but the lowest scores of every row (``pruned_per_row`` of them, per layer).

    Rows lose k or k - 1 weights: the k lowest of every row are found unsorted (cheaper than a
    sorted top-k), and rows that lose only k - 1 keep the highest of their k.
    """
    *_, rows, cols = scores.shape
    flat = clean_scores(scores).reshape(-1, cols)  # every row of every layer
    counts = pruned_per_row(rows, cols, sparsity).to(scores.device).repeat(flat.shape[0] // rows)
    mask = torch.ones(flat.shape, dtype=torch.bool, device=scores.device)
    k = int(counts.max()) if counts.numel() else 0
    if k > 0:
        vals, idx = torch.topk(flat, k, dim=1, largest=False, sorted=False)  # (rows, k)
        keep_slot = torch.zeros_like(idx, dtype=torch.bool)
        keep_slot.scatter_(1, vals.argmax(dim=1, keepdim=True), (counts < k).unsqueeze(1))
        mask.scatter_(1, idx, keep_slot)
    return mask.view(scores.shape)


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep the ``n`` highest scores of every group of ``m`` consecutive weights in a row."""
    cols = scores.shape[-1]
    if cols % m:
        raise UserError(f"N:M pattern {n}:{m} needs the input size ({cols}) to be a multiple of {m}")
    groups = clean_scores(scores).reshape(-1, m)  # every group of every row
    idx = torch.topk(groups, m - n, dim=1, largest=False).indices
    mask = torch.ones_like(groups, dtype=torch.bool).scatter_(1, idx, False)
    return mask.view(scores.shape)


def make_mask(scores: Tensor, sparsity: float, nm: tuple[int, int] | None) -> Tensor:
    return row_mask(scores, sparsity) if nm is None else nm_mask(scores, *nm)
