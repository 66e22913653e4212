"""The CUDA path agrees with the CPU path: exact sparsity, valid N:M groups, the same proxy loss
and the same mask hash for the same masks. Skipped where no CUDA GPU is present."""

import copy

import pytest
import torch

from autoprune.evaluation import perplexity
from autoprune.evaluation.proxy import ProxyEvaluator
from autoprune.pruning.engine import apply_policy, blocks_linears, collect_stats, prune_sequential
from autoprune.pruning.masks import pruned_per_row
from autoprune.pruning.policy import Policy

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

METRICS = ["wanda", "ria", "mul(abs(W), add(X, mul(100, G)))", "add(mul(X, abs(W)), mms(mul(G, W)))"]


def _masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (lin.weight != 0).cpu() for bl in blocks_linears(model) for n, lin in bl.items()}


@pytest.fixture(scope="module")
def evaluators(stories, calib):
    """A proxy evaluator per device over the same model, statistics windows and proxy windows."""
    out = {}
    for dev in ("cpu", "cuda"):
        model = copy.deepcopy(stories.model).to(dev)
        stats = collect_stats(model, calib.to(dev), gradients=True, progress=False)
        out[dev] = ProxyEvaluator(model, stats, calib[:8].to(dev), "kl", batch_size=4, proxy_batch=2)
    return out


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_one_shot_matches_cpu(evaluators, metric, pattern):
    policy = Policy(metric=metric, sparsity=0.5, pattern=pattern)
    res = {dev: ev.evaluate(policy) for dev, ev in evaluators.items()}
    assert res["cuda"].ok and res["cpu"].ok
    assert res["cuda"].sparsity == pytest.approx(0.5, abs=1e-4)
    assert res["cuda"].loss == pytest.approx(res["cpu"].loss, rel=2e-2)
    # the hash is computed on each evaluator's device: equal masks must give equal digests
    ev_gpu, ev_cpu = evaluators["cuda"], evaluators["cpu"]
    apply_policy(ev_gpu.model, policy, ev_gpu.stats)
    masks = _masks(ev_gpu.model)
    for n, lin in ev_cpu.linears.items():
        lin.weight.data.mul_(masks[n])
    try:
        assert ev_gpu.mask_hash() == ev_cpu.mask_hash()
        for n, mask in masks.items():
            rows, cols = mask.shape
            if pattern == "2:4":
                assert torch.all(mask.view(rows, -1, 4).sum(-1) == 2), n
            else:
                assert torch.equal((~mask).sum(dim=1), pruned_per_row(rows, cols, 0.5)), n
    finally:
        ev_gpu.restore()
        ev_cpu.restore()


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_cuda_sequential_matches_cpu(stories, calib, heldout, method):
    ppl = {}
    for dev in ("cpu", "cuda"):
        model = copy.deepcopy(stories.model).to(dev)
        prune_sequential(model, Policy.from_method(method, 0.6), calib.to(dev), progress=False)
        for bl in blocks_linears(model):
            for name, lin in bl.items():
                rows, cols = lin.weight.shape
                zeros = int((lin.weight == 0).sum())
                if method == "sparsegpt":
                    assert zeros == round(0.6 * rows * cols), name
                else:
                    assert torch.equal((lin.weight == 0).sum(dim=1).cpu(), pruned_per_row(rows, cols, 0.6)), name
        ppl[dev] = perplexity(model, heldout.to(dev)).perplexity
    assert ppl["cuda"] == pytest.approx(ppl["cpu"], rel=2e-2)


def test_cuda_stacked_forward_matches_one_by_one(stories, calib):
    model = copy.deepcopy(stories.model).to("cuda")
    stats = collect_stats(model, calib.to("cuda"), gradients=True, progress=False)
    ev = ProxyEvaluator(model, stats, calib[:8].to("cuda"), "kl", batch_size=4, cache=False)
    assert ev.suggested_per_forward() == 16  # a small model on a GPU: the most the default allows
    policies = [Policy(metric=m, sparsity=0.5) for m in METRICS]
    alone = [ev.evaluate(p) for p in policies]
    for a, b in zip(alone, ev.evaluate_many(policies)):
        assert a.ok and b.ok and a.masks == b.masks
        assert b.loss == pytest.approx(a.loss, rel=1e-4)
