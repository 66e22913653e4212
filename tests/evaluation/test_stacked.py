"""Several candidates per forward pass agree with one candidate at a time."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from autoprune.evaluation.proxy import ProxyEvaluator
from autoprune.evaluation.stacked import stacked_linears
from autoprune.pruning.engine import blocks_linears, collect_stats
from autoprune.pruning.policy import Policy

POLICIES = [
    Policy(metric="wanda", sparsity=0.5),
    Policy(metric="mul(abs(W), sqrt(mul(X, G)))", sparsity=0.5),
    Policy(metric="rowsum(W)", sparsity=0.5),  # constant scores: fails before any forward
    Policy(metric="mul(abs(W), X)", sparsity=0.5),  # Wanda's masks again: answered without a forward
    Policy(metric="magnitude", sparsity=0.5, pattern="2:4"),
    Policy(metric="ria", sparsity=0.7),
]


@pytest.fixture(scope="module", params=["kl", "ppl"])
def pair(request, stories, calib):
    """Two evaluators over separate copies of the model: one scores one by one, one stacked."""
    out = []
    for _ in range(2):
        model = copy.deepcopy(stories.model)
        stats = collect_stats(model, calib[:4], gradients=True, progress=False)
        out.append(ProxyEvaluator(model, stats, calib[8:13], request.param, batch_size=2, proxy_batch=2))
    return out


@pytest.mark.parametrize("batches", [1, None])
def test_evaluate_many_matches_one_by_one(pair, batches):
    single, many = pair
    dense = {n: lin.weight.clone() for n, lin in many.linears.items()}
    ref = [single.evaluate(p, batches) for p in POLICIES]
    got = many.evaluate_many(POLICIES, batches)
    for p, a, b in zip(POLICIES, ref, got):
        assert a.ok == b.ok and a.error == b.error, p.metric
        if a.ok:
            assert b.loss == pytest.approx(a.loss, rel=1e-4), p.metric
            assert (b.sparsity, b.tokens, b.masks) == (a.sparsity, a.tokens, a.masks)
    assert got[3].cached and not got[0].cached  # the repeated masks shared the first one's forward
    assert got[3].masks == got[0].masks != got[1].masks
    assert math.isinf(got[2].loss) and got[2].error == "constant scores"
    for n, lin in many.linears.items():  # the model is dense again
        assert torch.equal(lin.weight, dense[n])
    # a second call finds every mask in the cache
    assert all(r.cached for r, a in zip(many.evaluate_many(POLICIES, batches), ref) if a.ok)


def test_stacked_linears_compute_each_slice_and_restore(stories):
    model = copy.deepcopy(stories.model)
    linears = {n: lin for bl in blocks_linears(model) for n, lin in bl.items()}
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    variants = [{n: lin.weight * (torch.rand(lin.weight.shape, generator=gen) > 0.5) for n, lin in linears.items()}
                for _ in range(3)]
    expected = []
    for v in variants:
        m = copy.deepcopy(model)
        for n, lin in {n: lin for bl in blocks_linears(m) for n, lin in bl.items()}.items():
            lin.weight.data.copy_(v[n])
        expected.append(m(ids, use_cache=False).logits)
    with torch.no_grad(), stacked_linears(linears, {n: torch.stack([v[n] for v in variants]) for n in linears}):
        got = model(ids.repeat(3, 1), use_cache=False).logits.view(3, *ids.shape, -1)
    for k in range(3):
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-4)
    assert all("forward" not in lin.module.__dict__ for lin in linears.values())  # the class's forward again


def test_stacking_is_not_suggested_on_a_cpu(pair):
    assert pair[0].suggested_per_forward() == 1
