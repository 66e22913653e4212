"""The selection split: the windows a search's winner is chosen on are never calibration or proxy windows."""

from __future__ import annotations

import pytest
import torch

from autoprune.errors import UserError
from autoprune.jobs.common import calibration_windows, selection_windows


def _rows(t: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r.tolist()) for r in t}


def test_selection_windows_avoid_the_calibration_and_proxy_draws(stories):
    tok, spec = stories.tokenizer, "tinystories:0-499"
    calib = calibration_windows(tok, spec, 64, 256, 0)
    proxy = calibration_windows(tok, spec, 16, 256, 1)
    select = selection_windows(tok, spec, 32, 256, 2, spec, ((64, 0), (16, 1)))
    assert len(select) == 32 and len(_rows(select)) == 32
    assert not _rows(select) & (_rows(calib) | _rows(proxy))
    again = selection_windows(tok, spec, 32, 256, 2, spec, ((64, 0), (16, 1)))
    assert torch.equal(select, again)  # the same split every time (a resumed search, every worker)


def test_selection_from_other_data_and_too_little_left(stories):
    tok = stories.tokenizer
    other = selection_windows(tok, "tinystories:500-599", 8, 128, 2, "tinystories:0-499", ((64, 0),))
    assert other.shape == (8, 128)
    with pytest.raises(UserError, match="left for selection"):
        selection_windows(tok, "tinystories:0-49", 40, 256, 2, "tinystories:0-49", ((30, 0), (10, 1)))
