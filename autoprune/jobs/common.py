"""Pieces the jobs share: the model and token windows a config names."""

from __future__ import annotations

import torch

from autoprune.data import load_documents, sample_windows, tokenize_windows
from autoprune.errors import UserError


def calibration_windows(tokenizer, spec: str, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``seqlen`` tokens drawn with ``seed`` from the documents of ``spec``."""
    return sample_windows(tokenize_windows(tokenizer, load_documents(spec), seqlen), n, seed)


def evaluation_windows(tokenizer, spec: str, seqlen: int, limit: int | None = None) -> torch.Tensor:
    """All windows of ``spec`` in order (the first ``limit`` of them when given)."""
    windows = tokenize_windows(tokenizer, load_documents(spec), seqlen)
    if limit is not None:
        if limit <= 0:
            raise UserError(f"the number of windows must be positive, got {limit}")
        windows = windows[:limit]
    return windows
