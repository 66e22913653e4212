"""Pieces the jobs share: the model and token windows a config names."""

from __future__ import annotations

import torch

from autoprune.data import load_documents, sample_windows, tokenize_windows
from autoprune.data.windows import sample_indices
from autoprune.errors import UserError


def default_select(calib: str) -> str:
    """Where a winner is chosen when the user names nothing: the calibration set itself (its unused
    windows) for the TinyStories toys, else WikiText-2's validation split, the domain the quality is
    reported on (the calibration set, C4 by default, forgives other damage than that text does), but
    never the text it is reported on."""
    return calib if calib.startswith("tinystories") else "wikitext2-valid"


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


def selection_windows(tokenizer, spec: str, n: int, seqlen: int, seed: int, calib: str,
                      drawn: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """``n`` windows to choose a search's winner on, never seen by the statistics or the proxy.

    From another data set they are drawn with ``seed``; from the calibration set itself (``spec``
    equal to ``calib``) only among the windows that no draw in ``drawn`` ((count, seed) pairs:
    the calibration and proxy windows, as ``calibration_windows`` drew them) took."""
    windows = tokenize_windows(tokenizer, load_documents(spec), seqlen)
    return windows[selection_indices(len(windows), spec, n, seed, calib, drawn)]


def selection_indices(total: int, spec: str, n: int, seed: int, calib: str,
                      drawn: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Which of the ``total`` windows of ``spec`` ``selection_windows`` takes."""
    if spec != calib:
        return sample_windows(torch.arange(total), n, seed)
    used = set()
    for count, s in drawn:
        used.update(sample_indices(total, count, s).tolist())
    free = torch.tensor([i for i in range(total) if i not in used], dtype=torch.long)
    if len(free) < n:
        raise UserError(f"{spec} gives {total} windows; after {len(used)} calibration and proxy windows "
                        f"only {len(free)} are left for selection, not {n}: pass --select other data")
    return free[sample_indices(len(free), n, seed)]
