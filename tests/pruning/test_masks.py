import pytest
import torch

from autoprune.errors import UserError
from autoprune.pruning.masks import make_mask, nm_mask, pruned_per_row, row_mask


@pytest.mark.parametrize("rows,cols", [(7, 64), (33, 172), (1, 10), (64, 7)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.6, 0.7, 0.95])
def test_row_mask_exact_per_row_and_layer(rows, cols, sparsity):
    scores = torch.randn(rows, cols)
    mask = row_mask(scores, sparsity)
    pruned = (~mask).sum(dim=1)
    expected = pruned_per_row(rows, cols, sparsity)
    assert torch.equal(pruned, expected)
    assert int(pruned.sum()) == int(round(sparsity * rows * cols))  # the layer exactly
    assert int(expected.max() - expected.min()) <= 1  # rows differ by at most one weight
    # within each row the pruned weights are exactly the lowest scores
    for r in range(rows):
        if 0 < pruned[r] < cols:
            assert scores[r][~mask[r]].max() <= scores[r][mask[r]].min()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_mask_valid_groups(n, m):
    scores = torch.randn(12, 64)
    mask = nm_mask(scores, n, m)
    groups = mask.view(12, 64 // m, m)
    assert torch.all(groups.sum(dim=-1) == n)
    s = scores.view(12, 64 // m, m)
    kept_min = torch.where(groups, s, torch.inf).amin(-1)
    pruned_max = torch.where(~groups, s, -torch.inf).amax(-1)
    assert torch.all(pruned_max <= kept_min)


def test_nm_mask_needs_divisible_columns():
    with pytest.raises(UserError, match="multiple of 4"):
        nm_mask(torch.randn(3, 10), 2, 4)


def test_nan_scores_are_pruned_first_and_never_crash():
    scores = torch.randn(4, 16)
    scores[:, 3] = float("nan")
    mask = make_mask(scores, 0.25, None)
    assert not mask[:, 3].any()
    assert (~make_mask(torch.full((4, 16), float("nan")), 0.5, None)).sum() == 32
