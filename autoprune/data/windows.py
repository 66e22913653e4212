"""Tokenise documents into fixed-length windows."""

from __future__ import annotations

import torch

from autoprune.errors import UserError


def tokenize_windows(tokenizer, documents: list[str], seqlen: int) -> torch.Tensor:
    """Each document as BOS + tokens, all concatenated and cut into non-overlapping windows.

    Returns a LongTensor (n_windows, seqlen); the tail shorter than ``seqlen`` is dropped.
    """
    if seqlen < 2:
        raise UserError(f"seqlen must be at least 2, got {seqlen}")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream.extend(bos)
        stream.extend(ids)
    n = len(stream) // seqlen
    if n == 0:
        raise UserError(f"data too short: {len(stream)} tokens, fewer than one window of {seqlen}")
    return torch.tensor(stream[: n * seqlen], dtype=torch.long).view(n, seqlen)


def sample_indices(total: int, n: int, seed: int) -> torch.Tensor:
    """The sorted indices ``sample_windows`` draws from ``total`` windows."""
    if n >= total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[:n].sort().values


def sample_windows(windows: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` windows drawn without replacement with a seeded generator (all, in order, if n == len)."""
    if n <= 0:
        raise UserError(f"the number of windows must be positive, got {n}")
    if n > len(windows):
        raise UserError(f"asked for {n} windows, but the data gives only {len(windows)}")
    if n == len(windows):
        return windows
    return windows[sample_indices(len(windows), n, seed)]
