"""Cached score orders and the level database give the engine's own pruned model."""

from __future__ import annotations

import random

import pytest
import torch

from autoprune.evaluation.proxy import ProxyEvaluator
from autoprune.evaluation.ratio_proxy import RatioProxy, ranks_mask, row_ranks
from autoprune.pruning.engine import apply_policy, collect_stats
from autoprune.pruning.masks import row_mask
from autoprune.pruning.policy import Policy
from autoprune.search.allocation_space import load_space


@pytest.fixture(scope="module")
def evaluator(stories, calib):
    import copy

    model = copy.deepcopy(stories.model)
    return ProxyEvaluator(model, collect_stats(model, calib, hessian=True, progress=False), calib[:8])


def _sizes(proxy):
    return tuple({n.split(".", 3)[3]: lin.weight.numel() for n, lin in blk.items()} for blk in proxy.blocks)


def test_rank_mask_is_the_row_mask():
    scores = torch.randn(17, 50)
    scores[3, 7] = float("nan")
    ranks = row_ranks(scores)
    for s in (0.0, 0.13, 0.5, 0.77, 0.98):
        assert torch.equal(ranks_mask(ranks, s), row_mask(scores, s))


def test_cached_orders_give_the_same_model_and_loss(evaluator):
    proxy = RatioProxy(evaluator, Policy(sparsity=0.6))
    space = load_space("attn_mlp")
    rng = random.Random(1)
    for _ in range(3):
        policy = space.decode({p.name: rng.uniform(p.low, p.high) for p in space.params(5)},
                              Policy(sparsity=0.6), _sizes(proxy))
        fast = proxy.evaluate(policy)
        slow = evaluator.evaluate(policy)
        assert fast.ok and fast.loss == pytest.approx(slow.loss, rel=1e-6)
        assert fast.sparsity == pytest.approx(0.6, abs=1e-6)
        for name, ratio in proxy.ratios(policy).items():
            proxy.prune_layer(name, ratio)
        lookup = {n: lin.weight.clone() for n, lin in evaluator.linears.items()}
        evaluator.restore()
        apply_policy(evaluator.model, policy, evaluator.stats)
        assert all(torch.equal(lookup[n], lin.weight) for n, lin in evaluator.linears.items())
        evaluator.restore()
    owl = Policy(sparsity=0.6, allocation="owl")
    assert proxy.evaluate(owl).loss == pytest.approx(evaluator.evaluate(owl).loss, rel=1e-6)


@pytest.mark.parametrize("on_disk", [False, True])
def test_level_database_matches_sparsegpt(evaluator, tmp_path, on_disk):
    policy = Policy.from_method("sparsegpt", 0.5)
    proxy = RatioProxy(evaluator, policy, levels=[0.25, 0.5], level_dir=tmp_path if on_disk else None, progress=False)
    assert proxy.levels.levels == [0.0, 0.25, 0.5]
    assert bool(list(tmp_path.glob("*.safetensors"))) == on_disk
    assert proxy.evaluate(policy).loss == pytest.approx(evaluator.evaluate(policy).loss, rel=1e-5)
    # a ratio between levels takes the nearest level
    near = Policy(metric="sparsegpt", update="sparsegpt", sparsity=0.5, allocation="explicit",
                  block_ratios=[0.27] * 5)
    exact = Policy(metric="sparsegpt", update="sparsegpt", sparsity=0.5, allocation="explicit",
                   block_ratios=[0.25] * 5)
    assert proxy.evaluate(near).loss == pytest.approx(evaluator.evaluate(exact).loss, rel=1e-5)
