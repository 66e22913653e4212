"""AlphaPruning: the Hill estimate of the ESD tail, the block ratios, and the allocation end to end."""

import json
import math

import numpy as np
import pytest
import torch

from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.pruning.allocation import alpha_ratios, block_alphas, block_ratios, pl_alpha_hill
from autoprune.pruning.engine import apply_policy, blocks_linears, collect_stats, prune_sequential
from autoprune.pruning.masks import pruned_per_row
from autoprune.pruning.policy import Policy


def matrix_with_spectrum(eigs: np.ndarray, cols: int, seed: int) -> torch.Tensor:
    """A (len(eigs), cols) matrix whose WᵀW has the nonzero eigenvalues ``eigs``: U diag(sqrt(eigs)) Vᵀ."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    V, _ = np.linalg.qr(rng.standard_normal((cols, len(eigs))))
    return torch.from_numpy(U @ np.diag(np.sqrt(eigs)) @ V.T)


def pareto_eigs(alpha: float, n: int) -> np.ndarray:
    """The n quantiles (k + 1/2)/n of the power law p(λ) ∝ λ^-alpha on [1, inf)."""
    u = (np.arange(n) + 0.5) / n
    return (1 - u) ** (-1 / (alpha - 1))


def slow_alpha(W: torch.Tensor, bins: int = 100) -> float:
    """PL_Alpha_Hill by loops over a numpy spectrum, written from the formulas."""
    eigs = sorted(float(s) ** 2 for s in np.linalg.svd(W.double().numpy(), compute_uv=False))
    eigs = [e for e in eigs if e > eigs[-1] * 1e-10]
    logs = [math.log10(e) for e in eigs]
    lo, hi = logs[0], logs[-1]
    counts = [0] * bins
    for x in logs:
        counts[min(int((x - lo) / (hi - lo) * bins), bins - 1)] += 1
    peak = 10 ** (lo + (hi - lo) * counts.index(max(counts)) / bins)
    best = (math.inf, None)
    for i, xmin in enumerate(eigs[:-1]):
        if not 0.95 * peak <= xmin <= 1.5 * peak:
            continue
        tail = eigs[i:]
        n = len(tail)
        alpha = 1 + n / sum(math.log(x / xmin) for x in tail)
        D = max(abs(1 - (x / xmin) ** (1 - alpha) - k / n) for k, x in enumerate(tail))
        best = min(best, (D, alpha))
    return best[1]


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_hill_recovers_a_known_tail_exponent(alpha):
    W = matrix_with_spectrum(pareto_eigs(alpha, 400), 600, seed=0)
    assert pl_alpha_hill(W) == pytest.approx(alpha, rel=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hill_agrees_with_slow_reference(seed):
    rng = np.random.default_rng(seed)
    eigs = np.concatenate([rng.uniform(0.5, 2.0, 150), pareto_eigs(2.5, 50) * 2.0])  # a bulk and a heavy tail
    W = matrix_with_spectrum(eigs, 300, seed)
    assert pl_alpha_hill(W) == pytest.approx(slow_alpha(W), rel=1e-9)
    assert pl_alpha_hill(W.float()) == pytest.approx(slow_alpha(W), rel=1e-3)  # a float32 weight too


def test_heavier_tail_lower_alpha_and_rank_deficient_weights():
    heavy = matrix_with_spectrum(pareto_eigs(2.0, 200), 300, seed=3)
    light = matrix_with_spectrum(pareto_eigs(5.0, 200), 300, seed=3)
    assert pl_alpha_hill(heavy) < pl_alpha_hill(light)
    rank_deficient = torch.cat([heavy, torch.zeros(50, 300, dtype=heavy.dtype)])  # 50 zero eigenvalues
    assert pl_alpha_hill(rank_deficient) == pytest.approx(pl_alpha_hill(heavy), rel=1e-6)
    with pytest.raises(UserError, match="rank 2 or more"):
        pl_alpha_hill(torch.ones(8, 8))
    with pytest.raises(UserError, match="spectrum is flat"):
        pl_alpha_hill(torch.eye(8))


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_ratios_linear_in_alpha_within_eps_with_weighted_mean_s(sparsity, eps):
    alphas = [2.1, 3.4, 2.7, 4.0, 2.9]
    sizes = [100, 300, 200, 100, 150]
    s = alpha_ratios(alphas, sizes, sparsity, eps)
    assert sum(r * n for r, n in zip(s, sizes)) / sum(sizes) == pytest.approx(sparsity, abs=1e-12)
    # s_l = eta * ((1 - eps) + 2 eps (alpha_l - min) / (max - min)): the ends span [1 - eps, 1 + eps] times eta
    eta = s[alphas.index(min(alphas))] / (1 - eps)
    assert s[alphas.index(max(alphas))] == pytest.approx(eta * (1 + eps))
    for a, r in zip(alphas, s):
        assert r == pytest.approx(eta * ((1 - eps) + 2 * eps * (a - 2.1) / (4.0 - 2.1)))
        assert eta * (1 - eps) - 1e-12 <= r <= eta * (1 + eps) + 1e-12 and 0 <= r < 1
    if eps == 0:
        assert s == pytest.approx([sparsity] * 5)


def test_ratios_equal_alphas_uniform_and_too_wide_refused():
    assert alpha_ratios([2.5, 2.5], [10, 20], 0.6, 0.3) == [0.6, 0.6]
    with pytest.raises(UserError, match="alpha_eps 0.9 pushes a block ratio"):
        alpha_ratios([2.0, 3.0, 3.0, 3.0], [1, 1, 1, 1], 0.8, 0.9)


def test_sequential_and_oneshot_alpha_prune_to_exact_sparsity(stories, fresh_model, calib):
    import copy

    policy = Policy(metric="wanda", sparsity=0.6, allocation="alpha")
    dense_bls = blocks_linears(stories.model)
    ratios = block_ratios(policy, dense_bls)  # weights only: no activation statistics
    assert len(set(ratios)) == len(ratios)  # stories260K's blocks differ
    alphas = block_alphas(dense_bls)
    # a higher alpha (lighter tail), a higher ratio
    assert sorted(range(5), key=alphas.__getitem__) == sorted(range(5), key=ratios.__getitem__)

    oneshot = copy.deepcopy(stories.model)
    reports = [prune_sequential(fresh_model, policy, calib, progress=False),
               apply_policy(oneshot, policy, collect_stats(oneshot, calib, progress=False))]
    for model, report in zip([fresh_model, oneshot], reports):
        assert report.block_ratios == ratios
        zeros = total = 0
        for ratio, linears in zip(ratios, blocks_linears(model)):
            for lin in linears.values():
                rows, cols = lin.weight.shape
                assert torch.equal((lin.weight == 0).sum(dim=1), pruned_per_row(rows, cols, ratio))
                zeros += int((lin.weight == 0).sum())
                total += rows * cols
        # each layer loses round(ratio * size) weights: the global count is off by rounding only
        assert abs(zeros - 0.6 * total) <= 0.5 * sum(len(bl) for bl in dense_bls)
        assert report.sparsity == pytest.approx(0.6, abs=1e-4)


def test_policy_json_round_trip_and_bad_eps(tmp_path):
    policy = Policy(sparsity=0.7, allocation="alpha", alpha_eps=0.15)
    path = tmp_path / "p.json"
    policy.save(path)
    assert json.loads(path.read_text())["alpha_eps"] == 0.15
    assert Policy.load(path) == policy and Policy.load(path).alpha_eps == 0.15
    assert Policy.from_dict({"allocation": "alpha"}).alpha_eps == 0.3  # older files: the default
    for bad in [-0.1, 1.0, 2, float("nan"), "0.2", True, None]:
        with pytest.raises(UserError, match="alpha_eps must be in"):
            Policy(allocation="alpha", alpha_eps=bad)
    with pytest.raises(UserError, match="needs allocation 'uniform'"):
        Policy(sparsity=0.5, pattern="2:4", allocation="alpha")


ARGS = ["--model", "stories260K", "--seqlen", "128", "--calib", "tinystories:0-99", "--calib-windows", "4"]


def test_cli_prune_alpha(tmp_path, stories, capsys):
    out = tmp_path / "flag"
    assert main(["prune", *ARGS, "--sparsity", "0.7", "--allocation", "alpha", "--out", str(out)]) == 0
    report = json.loads((out / "autoprune_report.json").read_text())
    want = block_ratios(Policy(sparsity=0.7, allocation="alpha"), blocks_linears(stories.model))
    assert report["block_ratios"] == pytest.approx(want, rel=1e-12)
    assert report["sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert Policy.load(out / "autoprune_policy.json").allocation == "alpha"

    policy = tmp_path / "p.json"
    Policy(metric="magnitude", sparsity=0.5, allocation="alpha", alpha_eps=0.1).save(policy)
    assert main(["prune", *ARGS, "--policy", str(policy), "--out", str(tmp_path / "file")]) == 0
    report = json.loads((tmp_path / "file" / "autoprune_report.json").read_text())
    want = block_ratios(Policy(sparsity=0.5, allocation="alpha", alpha_eps=0.1), blocks_linears(stories.model))
    assert report["block_ratios"] == pytest.approx(want, rel=1e-12)

    policy.write_text(json.dumps({"allocation": "alpha", "alpha_eps": 1.5}))
    capsys.readouterr()
    assert main(["prune", *ARGS, "--policy", str(policy), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "alpha_eps must be in [0, 1), got 1.5" in err
